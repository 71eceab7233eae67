"""Containers started for a test before its turn (``--container-lookahead``): started in
a small pool of threads while another test runs, handed over when the test asks, removed
when no test takes them."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

from pytest_containers.wait import exit_reason

if TYPE_CHECKING:
    from pytest_containers._containers.container import Container, ContainerSpec
    from pytest_containers._images.build import BuildSpec

#: Starts a container for ``spec`` (built from the BuildSpec, if any) in the group named.
Start = Callable[["ContainerSpec", "BuildSpec | None", str], "Container"]


class AheadStarts:
    """The containers started ahead, by test (node id) and spec."""

    def __init__(
        self,
        *,
        start: Start,
        release: Callable[[Container], None],
        discard: Callable[[Container], None],
        tests_ahead: int,
    ) -> None:
        self._start = start
        #: Gives back a container no test took; discards one that exited meanwhile.
        self._release = release
        self._discard = discard
        # One more than the tests ahead: the next test's start begins while the current
        # test's own (started ahead too) may still be on its way.
        self._workers = max(1, min(tests_ahead, 4)) + 1
        self._lock = threading.Lock()
        self._started: dict[tuple[str, ContainerSpec], list[Future[Container]]] = {}
        self._pool: ThreadPoolExecutor | None = None

    def start(self, test: str, specs: Iterable[tuple[ContainerSpec, BuildSpec | None]]) -> None:
        """Start the containers of ``test`` in the background. Once per test: a second
        call does nothing."""
        with self._lock:
            if any(started == test for started, _ in self._started):
                return
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    self._workers, thread_name_prefix="pytest-containers-ahead"
                )
            for spec, build in specs:
                future = self._pool.submit(self._start, spec, build, f"function:{test}")
                self._started.setdefault((test, spec), []).append(future)

    def take(self, test: str, spec: ContainerSpec) -> Container | None:
        """The container started ahead for ``test`` and ``spec`` (waiting for its start to
        end), or None: none was, or its start failed (the test starts its own then, and
        meets the error itself)."""
        with self._lock:
            futures = self._started.get((test, spec))
            if not futures:
                return None
            future = futures.pop(0)
            if not futures:
                del self._started[(test, spec)]
        try:
            container = future.result()
        except Exception:
            return None
        # Started a while ago: one that has exited since is not handed over as if it ran
        # (the test starts its own, and meets the exit itself, as without lookahead).
        try:
            container.reload()
            gone = exit_reason(container.attrs.get("State") or {}) is not None
        except Exception:
            gone = True
        if gone:
            self._discard(container)
            return None
        return container

    def drop(self, test: str | None = None) -> None:
        """Give back what was started ahead for ``test`` (every test: None) and not taken:
        the test did not run, was skipped, or stopped before its containers."""
        with self._lock:
            dropped = [
                future
                for key in [key for key in self._started if test is None or key[0] == test]
                for future in self._started.pop(key)
            ]
        for future in dropped:
            if not future.cancel():
                future.add_done_callback(self._given_back)

    def _given_back(self, future: Future[Container]) -> None:
        if future.cancelled() or future.exception() is not None:
            return
        with contextlib.suppress(Exception):  # the manager's close() finds what stays
            self._release(future.result())

    def close(self) -> None:
        """Drop everything and wait for the starts under way (their release follows)."""
        self.drop()
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
