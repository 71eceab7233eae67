"""Progress lines on pytest's terminal, from any thread and any xdist worker.

Pulls and builds run in background threads while pytest captures the test's output and
draws its own line of progress (``test_x.py ..`` or ``test_x.py::test_a``). A line of ours
must neither land in the capture nor break pytest's line: :class:`TerminalLines` writes
while pytest's capture is suspended, and only while the main thread waits inside the
plugin for an image (so nothing else touches the capture or the terminal meanwhile),
then restores pytest's line as it was.

xdist workers have no terminal: each sends its lines to the controller over a Unix
datagram socket (:class:`ProgressListener`, :func:`progress_sender`), and the controller
writes them.

Duck-typed against pytest's terminal reporter and capture manager; imports no pytest.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

#: Clears the terminal's current line (a carriage return, then ANSI "erase line").
_CLEAR_LINE = "\r\x1b[K"


class TerminalLines:
    """Writes whole lines to pytest's terminal without breaking its line of progress.

    ``reporter`` is pytest's terminal reporter, ``writer`` its terminal writer and
    ``capture`` a function returning a context in which pytest's capture is suspended
    (the capture manager's ``global_and_fixture_disabled``), or ``None`` when nothing is
    captured (the xdist controller). With ``only_while_waiting``, lines are written only
    within :meth:`waiting`, and dropped otherwise.
    """

    def __init__(
        self,
        reporter: Any,
        writer: Any,
        capture: Callable[[], contextlib.AbstractContextManager[Any]] | None,
        *,
        only_while_waiting: bool,
    ) -> None:
        self._reporter = reporter
        self._writer = writer
        self._capture = capture
        self._only_while_waiting = only_while_waiting
        self._lock = threading.Lock()
        self._waiting = 0

    @contextlib.contextmanager
    def waiting(self) -> Iterator[None]:
        """The main thread waits in the plugin (for an image, a build, a container): the
        terminal is ours meanwhile. Leaving waits for a line being written."""
        with self._lock:
            self._waiting += 1
        try:
            yield
        finally:
            with self._lock:
                self._waiting -= 1

    def write_line(self, text: str) -> bool:
        """Write ``text`` as a line; ``False`` when it was dropped (nobody waits)."""
        with self._lock:
            if self._only_while_waiting and not self._waiting:
                return False
            with contextlib.suppress(Exception):  # progress must never fail a test
                if self._capture is not None:
                    with self._capture():
                        self._emit(text)
                else:
                    self._emit(text)
            return True

    def _emit(self, text: str) -> None:
        reporter = self._reporter
        current = getattr(reporter, "currentfspath", None)
        width = int(getattr(self._writer, "width_of_current_line", 0) or 0)
        if isinstance(current, str) and current:
            # Verbose: "test_x.py::test_a " is waiting for its result.
            if getattr(self._writer, "hasmarkup", False):
                # A terminal: put our line in its place and write it again below.
                reporter.write(f"{_CLEAR_LINE}{text}\n{current}", flush=True)
            else:
                # A log: our line goes below it, left open; pytest ends it and writes
                # the test's line again with its result (as after its live logs).
                reporter.write(f"\n{text}", flush=True)
                reporter.currentfspath = -2
        elif isinstance(current, os.PathLike):
            # Default verbosity: "test_x.py .." goes on after our line, under its name.
            start = getattr(reporter, "startpath", None) or Path.cwd()
            name = os.path.relpath(os.fspath(current), os.fspath(start))
            reporter.write(f"\n{text}\n{name} ", flush=True)
        elif current:
            # A finished verbose line pytest has not ended yet: its next line ends ours.
            reporter.write(f"\n{text}", flush=True)
        elif width:
            # xdist's dots: they go on on the next line.
            reporter.write(f"\n{text}\n", flush=True)
        else:
            reporter.write_line(text)
            reporter.flush()


class ProgressListener:
    """The controller's end of the workers' progress: a Unix datagram socket in a private
    directory, and a thread that writes what arrives with ``write_line``."""

    def __init__(self, write_line: Callable[[str], object]) -> None:
        self._write_line = write_line
        self._directory = Path(tempfile.mkdtemp(prefix="pytest-containers-"))
        self.path = str(self._directory / "progress.sock")
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind(self.path)
        self._thread = threading.Thread(
            target=self._listen, name="pytest-containers-progress", daemon=True
        )
        self._thread.start()

    def _listen(self) -> None:
        while True:
            try:
                data = self._socket.recv(4096)
            except OSError:
                return  # closed
            if data == b"":
                return
            self._write_line(data.decode(errors="replace"))

    def close(self) -> None:
        # An empty datagram ends the thread; then the socket can go.
        with (
            contextlib.suppress(OSError),
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as wake,
        ):
            wake.sendto(b"", self.path)
        self._thread.join(timeout=2)
        self._socket.close()
        shutil.rmtree(self._directory, ignore_errors=True)


def progress_sender(path: str, worker: str) -> Callable[[str], None]:
    """A worker's ``write_line``: sends each line, marked with the worker's id, to the
    controller's :class:`ProgressListener` at ``path``. Lines that cannot be sent are
    dropped."""
    out = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    lock = threading.Lock()

    def send(text: str) -> None:
        line = text.replace("containers: ", f"containers: [{worker}] ", 1)
        with lock, contextlib.suppress(OSError):
            out.sendto(line.encode()[:4000], path)

    return send
