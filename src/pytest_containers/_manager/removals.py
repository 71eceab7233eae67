"""Removing released containers off the tests' path: a small pool of threads, so that
the next test does not wait for a teardown, and a way to wait for all of them at the end
of the process. A kill meanwhile leaves the removals to the watchdog and the sweep."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pytest_containers._containers.container import Container


class BackgroundRemovals:
    """Runs ``remove(container)`` in the background for each container handed over."""

    def __init__(self, remove: Callable[[Container], None]) -> None:
        self._remove = remove
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._pending: set[Future[None]] = set()

    def submit(self, container: Container) -> None:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(4, thread_name_prefix="pytest-containers-rm")
            future = self._pool.submit(self._remove, container)
            self._pending.add(future)
        future.add_done_callback(self._done)

    def _done(self, future: Future[None]) -> None:
        with self._lock:
            self._pending.discard(future)

    def wait(self) -> None:
        """Wait until every removal handed over so far is done."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
