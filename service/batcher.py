"""The dynamic batcher: tiles of many frames share engine batches (Triton-style).

A frame's tiles are submitted together (`await batcher.infer(tiles)`). The batcher runs
a batch as soon as it holds `max_batch` tiles, or when the oldest waiting tile has
waited `max_wait`. A batch is filled round-robin over the waiting frames in arrival
order, so a frame with 40 tiles does not hold back one that arrived just after it with
4. The engine runs in one worker thread, so while a batch runs the next one fills.

A frame may bring the features of the classes defined by text that it is scored with
(its rules' `text`); a batch holds only frames that bring the same array (the same object:
the rules in force when each frame started), so a change of classes never mixes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

from service.engine import Array

Out = TypeVar("Out", bound=tuple[Any, ...])
"""What a batch engine answers: a named tuple of arrays whose first axis is the batch's."""
Out_co = TypeVar("Out_co", bound=tuple[Any, ...], covariant=True)


class BatchEngine(Protocol[Out_co]):
    """What the batcher needs of an engine (service.engine.Engine; the region encoder)."""

    name: str
    max_batch: int

    def infer(self, images: Array, text: Array | None = None) -> Out_co:
        """Run one batch."""
        ...


@dataclass(slots=True, eq=False)  # compared by identity
class _Request(Generic[Out]):
    inputs: Array
    future: asyncio.Future[Out]
    arrived: float
    text: Array | None = None
    taken: int = 0
    parts: list[tuple[int, Out]] = field(default_factory=list)

    @property
    def left(self) -> int:
        return len(self.inputs) - self.taken


@dataclass(frozen=True, slots=True)
class BatchRecord:
    """One engine call: when it started, how long it ran, whose tiles it held."""

    started: float
    seconds: float
    size: int
    owners: tuple[int, ...]
    """Per tile, the id() of the request it belongs to."""
    waited: tuple[float, ...]
    """Per tile, seconds from its request's arrival to the batch's start."""


class Batcher(Generic[Out]):
    """Feeds an engine with batches of tiles (or regions) from concurrent requests."""

    def __init__(
        self,
        engine: BatchEngine[Out],
        max_batch: int,
        max_wait: float,
        on_batch: Callable[[BatchRecord], None] | None = None,
    ) -> None:
        self.engine = engine
        self.max_batch = max(1, min(max_batch, engine.max_batch))
        self.max_wait = max_wait
        self.on_batch = on_batch
        self._pending: deque[_Request[Out]] = deque()
        self._wake = asyncio.Event()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine")
        self._task: asyncio.Task[None] | None = None
        self._now: Callable[[], float] = time.monotonic
        """The event loop's clock once started: its timeouts and these times agree."""

    def start(self) -> None:
        """Start the batching loop on the running event loop."""
        if self._task is None:
            loop = asyncio.get_running_loop()
            self._now = loop.time
            self._task = loop.create_task(self._loop(), name="batcher")

    async def stop(self) -> None:
        """Stop the loop; waiting requests get a RuntimeError."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for req in self._pending:
            if not req.future.done():
                req.future.set_exception(RuntimeError("the batcher stopped"))
        self._pending.clear()
        self._pool.shutdown(wait=False)

    @property
    def waiting_tiles(self) -> int:
        """Tiles submitted and not yet in a batch."""
        return sum(r.left for r in self._pending)

    async def infer(self, tiles: Array, text: Array | None = None) -> Out:
        """The engine's outputs for `tiles` (N, 3, S, S), in order (`text`: Engine.infer's)."""
        if self._task is None:
            raise RuntimeError("the batcher is not started")
        future: asyncio.Future[Out] = asyncio.get_running_loop().create_future()
        if len(tiles) == 0:
            raise ValueError("no tiles to infer")
        self._pending.append(_Request(tiles, future, self._now(), text))
        self._wake.set()
        return await future

    def _take(self) -> tuple[list[tuple[_Request[Out], int]], list[float], Array | None]:
        """Up to max_batch (request, tile index) pairs, round-robin over waiting requests.

        Only requests with the oldest waiting one's text; that text is returned too.
        """
        picks: list[tuple[_Request[Out], int]] = []
        active = [r for r in self._pending if r.left > 0]
        text = active[0].text if active else None
        active = [r for r in active if r.text is text]
        while len(picks) < self.max_batch and active:
            for r in list(active):
                if len(picks) == self.max_batch:
                    break
                picks.append((r, r.taken))
                r.taken += 1
                if r.left == 0:
                    active.remove(r)
        now = self._now()
        return picks, [now - r.arrived for r, _ in picks], text

    async def _loop(self) -> None:
        try:
            await self._serve()
        except Exception as err:  # a bug here must not leave requests waiting forever
            for req in self._pending:
                if not req.future.done():
                    req.future.set_exception(err)
            self._pending.clear()
            raise

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while self.waiting_tiles == 0:
                self._wake.clear()
                await self._wake.wait()
            oldest = min(r.arrived for r in self._pending if r.left > 0)
            deadline = oldest + self.max_wait
            while self.waiting_tiles < self.max_batch:
                remaining = deadline - self._now()
                if remaining <= 0:
                    break
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), remaining)
                except TimeoutError:
                    break
            picks, waited, text = self._take()
            batch = np.stack([r.inputs[i] for r, i in picks])
            started = self._now()
            try:
                out = await loop.run_in_executor(self._pool, self.engine.infer, batch, text)
            except Exception as err:  # the engine failed: fail the requests of this batch
                for r in {id(r): r for r, _ in picks}.values():
                    if not r.future.done():
                        r.future.set_exception(err)
                    if r in self._pending:
                        self._pending.remove(r)
                continue
            seconds = self._now() - started
            if self.on_batch is not None:
                owners = tuple(id(r) for r, _ in picks)
                self.on_batch(BatchRecord(started, seconds, len(picks), owners, tuple(waited)))
            self._scatter(picks, out)

    def _scatter(self, picks: list[tuple[_Request[Out], int]], out: Out) -> None:
        kind = type(out)  # each request's share as the same named tuple
        for k, (r, i) in enumerate(picks):
            r.parts.append((i, kind(*(o[k] for o in out))))
        for r in {id(r): r for r, _ in picks}.values():
            if r.left == 0 and len(r.parts) == len(r.inputs) and not r.future.done():
                r.parts.sort(key=lambda p: p[0])
                fields = zip(*(p[1] for p in r.parts), strict=True)
                r.future.set_result(kind(*(np.stack(f) for f in fields)))
                self._pending.remove(r)
