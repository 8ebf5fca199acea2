"""The models a runner serves: the bundle in force and a candidate in shadow.

`Models` loads the bundle (the repository's active version, else settings.bundle), swaps
in another without losing a frame (the new engine warmed beside the old; frames under way
finish on the old one), loads and drops the candidate in shadow, follows the repository
(its announcements and a poll) and the live settings, and says in /metrics what serves.
The frame runner (service/runner.py) asks it which pipeline a frame runs on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import redis

from common.bundle import BundleError, load_bundle
from common.repository import Repository, RepositoryError, Shadow
from service.batcher import Batcher, BatchRecord
from service.engine import open_engine
from service.live import SETTINGS_POLL_S, SettingsChange
from service.metrics import Metrics
from service.pipeline import Pipeline
from service.queue import FrameQueue
from service.region import Embeddings, RegionCheck
from service.settings import Settings
from service.store import Store
from service.zeroshot import TextTower

log = logging.getLogger("scrapscan.runner")


def _same(pipeline: Pipeline, path: Path) -> bool:
    return pipeline.bundle.root.resolve() == path.resolve()


def bundle_path(s: Settings) -> Path:
    """The bundle to serve: the repository's active version, else settings.bundle.

    RepositoryError when the repository cannot say (no folder, no active version).
    """
    if s.repository is None:
        return s.bundle
    repo = Repository(s.repository)
    repo.check()
    active = repo.active()
    if active is None:
        raise RepositoryError(
            f"{s.repository}: no active version; activate one (POST /v1/admin/bundles/active) or "
            "export with scrapscan-export --repository, which activates the first"
        )
    return repo.path(active.name, active.version)


async def open_pipeline(
    s: Settings, on_batch: Callable[[BatchRecord], None] | None = None, path: Path | None = None
) -> Pipeline:
    """The pipeline of a bundle: bundle, engine (warmed), batcher (started), bed model.

    The bundle at `path`, by default `bundle_path(s)`. Its bed model is loaded when a
    camera's bed is "learned", or "auto" and the bundle has one. The caller stops
    `pipeline.stop()` when done (its batchers).
    """
    path = bundle_path(s) if path is None else path
    bundle = await asyncio.to_thread(load_bundle, path, True, True)
    engine = await asyncio.to_thread(
        open_engine, bundle, s.engine, s.device, s.threads, s.precision
    )
    m = bundle.manifest
    size = m.input_size
    out = await asyncio.to_thread(engine.infer, np.zeros((1, 3, size, size), np.float32))
    wanted = (1, len(m.classes), m.grid, m.grid)
    if out.class_probs.shape != wanted or out.anomaly.shape != (1, m.grid, m.grid):
        raise BundleError(
            f"{bundle.root}: its {engine.name} engine answers class_probs "
            f"{out.class_probs.shape} and anomaly {out.anomaly.shape} for one tile; the "
            f"manifest says {len(m.classes)} classes on a {m.grid} x {m.grid} grid"
        )
    batcher = Batcher(engine, s.batch.max_batch, s.batch.max_wait_ms / 1000, on_batch=on_batch)
    batcher.start()
    finder = None
    beds = {b.bed for b in (s.default_bed, *s.cameras.values())}
    if "learned" in beds or ("auto" in beds and bundle.manifest.bed_model is not None):
        from service.bedmodel import LearnedBed

        finder = LearnedBed(bundle)
    region: RegionCheck | None = None
    region_batcher: Batcher[Embeddings] | None = None
    if bundle.manifest.region is not None:
        region = await asyncio.to_thread(
            RegionCheck, bundle, s.device, s.threads, s.batch.max_batch
        )
        # no wait for a batch to fill: the regions that come while it runs form the next one
        region_batcher = Batcher(region, s.batch.max_batch, 0.0)
        region_batcher.start()
    tower = None
    if bundle.manifest.zero_shot is not None:
        tower = await asyncio.to_thread(TextTower, bundle, s.threads)
    return Pipeline(bundle, batcher, s, finder, region, region_batcher, tower)


class Models:
    """The pipeline served, the candidate in shadow, and what keeps them current."""

    def __init__(
        self, settings: Settings, store: Store, queue: FrameQueue, metrics: Metrics
    ) -> None:
        self.settings = settings
        self.store = store
        self.queue = queue
        self.metrics = metrics
        self.pipeline: Pipeline | None = None
        self.shadow: Pipeline | None = None
        """The candidate in shadow, when one is."""
        self.shadow_share = 0.0
        self.live: SettingsChange | None = None
        """The live settings' version in force."""
        self._using: dict[asyncio.Task[object], Pipeline] = {}
        """The pipeline each frame under way runs on (a swap waits for the old one's)."""
        self._swap = asyncio.Lock()

    async def load(self) -> Pipeline:
        """Load the bundle to serve (engine warmed) and the live settings in force."""
        self.pipeline = await open_pipeline(self.settings, on_batch=self._batch_done)
        self._serving(self.pipeline)
        self.live = await asyncio.to_thread(self.store.live_settings)
        self.pipeline.use(self.live)
        return self.pipeline

    def follow(self) -> list[asyncio.Task[None]]:
        """Background tasks that keep the live settings and the repository's models in force."""
        tasks = [asyncio.create_task(self._follow_settings(), name="follow-settings")]
        if self.settings.repository is not None:
            tasks.append(asyncio.create_task(self._follow(), name="follow-model"))
        return tasks

    async def stop(self) -> None:
        """Stop the engines (the frames on them have ended)."""
        if self.pipeline is not None:
            await self.pipeline.stop()
        await self._drop_shadow()

    @contextlib.contextmanager
    def using(self) -> Iterator[Pipeline]:
        """The pipeline the calling task's frame runs on; a swap waits until it is done."""
        assert self.pipeline is not None, "load() first"
        task = asyncio.current_task()
        assert task is not None
        self._using[task] = pipeline = self.pipeline
        try:
            yield pipeline
        finally:
            self._using.pop(task, None)

    async def swap(self, path: Path, then: Callable[[], object] | None = None) -> Pipeline:
        """Serve the bundle at `path` from the next frame on, without losing one.

        The new engine is loaded and warmed beside the old one; frames that start from
        then on run on it, frames under way finish on the old one, which is then stopped.
        A bundle that fails to load or warm raises, and the old one goes on serving.
        `then` (the repository's pointer moved, in a thread) runs once the new one
        serves, before the repository is looked at again.
        """
        async with self._swap:
            new = await self._swap_to(path)
            if then is not None:
                await asyncio.to_thread(then)
            if self.shadow is not None and _same(self.shadow, path):  # it serves now
                await self._drop_shadow()
            return new

    async def start_shadow(
        self, path: Path, share: float, then: Callable[[], object] | None = None
    ) -> Pipeline:
        """Score `share` of the frames with the bundle at `path` too (in place of any other).

        Its engine is loaded and warmed first; a bundle that fails raises, and any
        candidate before it stays. `then` (the repository's shadow set, in a thread) runs
        once it scores.
        """
        async with self._swap:
            new = await self._shadow_to(path, share)
            if then is not None:
                await asyncio.to_thread(then)
            return new

    async def stop_shadow(self, then: Callable[[], object] | None = None) -> None:
        """No candidate scores any more."""
        async with self._swap:
            await self._drop_shadow()
            if then is not None:
                await asyncio.to_thread(then)

    async def _shadow_to(self, path: Path, share: float) -> Pipeline:
        if self.shadow is not None and _same(self.shadow, path):
            self.shadow_share = share
            return self.shadow
        new = await open_pipeline(self.settings, path=path)
        new.use(self.live)
        await self._drop_shadow()
        self.shadow, self.shadow_share = new, share
        log.info("candidate %s scores %g of the frames in shadow", new.bundle, share)
        return new

    async def _drop_shadow(self) -> None:
        old, self.shadow = self.shadow, None
        if old is not None:  # a frame it scores now fails its shadow scoring only
            await old.stop()
            log.info("candidate %s no longer in shadow", old.bundle)

    async def _swap_to(self, path: Path) -> Pipeline:
        new = await open_pipeline(self.settings, self._batch_done, path)
        new.use(self.live)
        old, self.pipeline = self.pipeline, new
        self._serving(new, old)
        busy = [task for task, p in self._using.items() if p is old]
        if busy:
            await asyncio.wait(busy)
        if old is not None:
            await old.stop()
        return new

    async def _follow(self) -> None:
        """Serve the repository's active version and candidate, as it says.

        Looked at on each announcement (queue.news) and every settings.repository_poll_s
        besides; a change is swapped in. How a scrapscan-worker learns of an activation
        through the API (the repository folder is shared; embedded, the API swaps at once
        and this finds nothing to do).
        A version that fails to load is not tried again until the pointer moves.
        """
        assert self.settings.repository is not None
        repo = Repository(self.settings.repository)
        failed: Path | None = None
        failed_shadow: Path | None = None
        while True:
            try:
                await self.queue.news(self.settings.repository_poll_s)
            except redis.RedisError as err:  # the folder is still looked at
                log.warning("redis: no model announcements: %s", err)
                await asyncio.sleep(self.settings.repository_poll_s)
            async with self._swap:  # not while the API swaps and moves the pointer
                try:
                    path = await asyncio.to_thread(bundle_path, self.settings)
                except (RepositoryError, OSError) as err:
                    log.warning("model repository %s: %s", repo.root, err)
                    continue
                assert self.pipeline is not None
                if path.resolve() not in (self.pipeline.bundle.root.resolve(), failed):
                    try:
                        await self._swap_to(path)
                        failed = None
                    except Exception as err:  # the old one serves on
                        failed = path.resolve()
                        self.metrics.model_swap_failures.inc()
                        log.error("model %s not served: %s: %s", path, type(err).__name__, err)
                try:
                    plan = await asyncio.to_thread(repo.shadow)
                except (RepositoryError, OSError):
                    continue  # said above
                failed_shadow = await self._follow_shadow(repo, plan, failed_shadow)

    async def _follow_shadow(
        self, repo: Repository, plan: Shadow | None, failed: Path | None
    ) -> Path | None:
        """Score in shadow as the repository says; the candidate that failed to load, if any."""
        if plan is None:
            await self._drop_shadow()
            return None
        path = repo.folder(plan.name, plan.version)
        if path.resolve() == failed:
            return failed
        try:
            await self._shadow_to(path, plan.share)
        except Exception as err:
            self.metrics.model_swap_failures.inc()
            log.error("candidate %s not scoring: %s: %s", path, type(err).__name__, err)
            return path.resolve()
        return None

    def use(self, live: SettingsChange | None) -> None:
        """Apply a version of the live settings to the frames that start from now on."""
        if live is None or self.pipeline is None:
            return
        if self.live is None or live.version > self.live.version:
            self.live = live
            self.pipeline.use(live)
            if self.shadow is not None:
                self.shadow.use(live)
            log.info("live settings version %d (by %s) in force", live.version, live.by)

    async def _follow_settings(self) -> None:
        """Apply each new version of the live settings within SETTINGS_POLL_S."""
        while True:
            await asyncio.sleep(SETTINGS_POLL_S)
            try:
                self.use(await asyncio.to_thread(self.store.live_settings))
            except Exception as err:  # the store away: the settings in force stay
                log.warning("live settings not read: %s", err)

    def _serving(self, new: Pipeline, old: Pipeline | None = None) -> None:
        """Metrics and log: `new` serves (in place of `old`)."""
        if old is not None:
            was = old.bundle.manifest.model
            self.metrics.model.remove(was.name, was.version, old.batcher.engine.name)
        m, engine = new.bundle.manifest, new.batcher.engine.name
        self.metrics.model.labels(m.model.name, m.model.version, engine).set(1)
        for name, quantiles in m.postprocess.calibration.get("frame_score_quantiles", {}).items():
            for q, value in quantiles.items():  # "0.5" -> percentile "50"
                self.metrics.reference.labels(name, f"{float(q) * 100:g}").set(value)
        log.info("serving bundle %s on engine %s", new.bundle, engine)

    def serving(self) -> dict[str, str] | None:
        """The model served now: name and version (None before it is loaded)."""
        if self.pipeline is None:
            return None
        m = self.pipeline.bundle.manifest.model
        return {"name": m.name, "version": m.version}

    def _batch_done(self, batch: BatchRecord) -> None:
        self.metrics.batch_size.observe(batch.size)
        self.metrics.batch_seconds.observe(batch.seconds)
