"""Telling the terminal which image is being pulled, when a pull takes more than a moment.

Pulls run in background threads, so this writes whole lines through pytest's terminal
reporter (which first ends any line of test progress), a few at most per image: after the
first second, then every few seconds, and once when a slow pull ends.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pytest_containers._images.build import BuildProgress
    from pytest_containers._images.pull import PullProgress

#: A pull quicker than this is not worth a line.
QUIET_SECONDS = 1.0
#: At most one line per image this often.
EVERY_SECONDS = 5.0


def _megabytes(count: int) -> str:
    return f"{count / 1_000_000:.1f} MB"


class PullReporter:
    """Receives :class:`PullProgress` from any thread and writes the occasional line.

    ``write_line`` may return ``False`` for a line it dropped (nobody was watching): the
    next event then tries again rather than waiting out the interval."""

    def __init__(
        self, write_line: Callable[[str], Any], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._write_line = write_line
        self._clock = clock
        self._lock = threading.Lock()
        self._started: dict[str, float] = {}
        self._last_line: dict[str, float] = {}

    def __call__(self, progress: PullProgress) -> None:
        now = self._clock()
        with self._lock:
            started = self._started.setdefault(progress.image, now)
            elapsed = now - started
            if progress.done:
                self._started.pop(progress.image, None)
                shown = self._last_line.pop(progress.image, None)
                if shown is not None or elapsed >= QUIET_SECONDS:
                    size = f", {_megabytes(progress.bytes_total)}" if progress.bytes_total else ""
                    self._write_line(
                        f"containers: pulled {progress.image}{size} in {elapsed:.1f} s"
                    )
                return
            last = self._last_line.get(progress.image)
            if elapsed < QUIET_SECONDS or (last is not None and now - last < EVERY_SECONDS):
                return
            layers = f"{progress.layers_done}/{progress.layers_total} layers"
            size = ""
            if progress.bytes_total:
                size = (
                    f", {_megabytes(progress.bytes_current)} of {_megabytes(progress.bytes_total)}"
                )
            line = f"containers: pulling {progress.image}: {layers}{size}"
            if self._write_line(line) is not False:
                self._last_line[progress.image] = now

    def build(self, progress: BuildProgress) -> None:
        """Receives a build's progress: its step now and then, and its end if slow."""
        now = self._clock()
        key = f"build {progress.image}"
        with self._lock:
            started = self._started.setdefault(key, now)
            elapsed = now - started
            if progress.done:
                self._started.pop(key, None)
                if self._last_line.pop(key, None) is not None or elapsed >= QUIET_SECONDS:
                    self._write_line(f"containers: built {progress.image} in {elapsed:.1f} s")
                return
            last = self._last_line.get(key)
            if elapsed < QUIET_SECONDS or (last is not None and now - last < EVERY_SECONDS):
                return
            if not progress.step:
                return
            line = f"containers: building {progress.image}: {progress.step}"
            if self._write_line(line) is not False:
                self._last_line[key] = now
