"""The service on a local port: start it in this process and wait until it is ready.

Used by the demo, the benchmarks and the tests; nothing here is needed to serve.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import uvicorn

from service.app import create_app
from service.settings import Settings


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, alive: Callable[[], bool], timeout: float = 120) -> None:
    """Return once the service at `url` answers /readyz with 200.

    RuntimeError when `alive()` turns false (the process or thread running it ended) or
    after `timeout` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if not alive():
            raise RuntimeError(f"{url}: the service stopped before it was ready")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url}: the service was not ready after {timeout} s")
        time.sleep(0.2)


GRACE_S = 10
"""Seconds a stopping service gives the requests in flight; then the open event streams
of dashboards are closed (they resume with Last-Event-ID) and it stops."""


@contextlib.contextmanager
def running_service(
    settings: Settings, timeout: float = 120, port: int = 0, freeze_heap: bool = False
) -> Iterator[str]:
    """The service on local `port` (0: a free one) in a background thread; yields its URL.

    freeze_heap: as scrapscan-serve does (create_app), for a process of its own (the demo,
    the benchmarks), not one that goes on after it (a test run).
    """
    port = port or free_port()
    config = uvicorn.Config(
        create_app(settings, freeze_heap=freeze_heap),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        timeout_graceful_shutdown=GRACE_S,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, thread.is_alive, timeout)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=30)
