"""Run liveness: every pytest process of a run holds a shared OS lock on
``<cache>/runs/<run id>.lock`` for its whole life (:func:`hold_run`); the kernel drops it
when the process ends, however it ends, so a run is alive exactly as long as someone
still holds it (:func:`run_is_alive`). Also the pruning of dead runs' files.

pytest-free and docker-free.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING

from pytest_containers._base.locks import check_private_dir, key_path, open_private, private_subdir
from pytest_containers.errors import ContainerError

if TYPE_CHECKING:
    pass

RUNS_DIR = "runs"
RUN_SCOPED_DIR = "run-scoped"
PLAIN_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")

# -- run liveness ------------------------------------------------------------------


def run_lock_path(cache_dir: Path, run_id: str) -> Path:
    """The lock file that says whether run ``run_id`` is alive: ``<cache>/runs/<run id>.lock``
    (a run id that is not a plain file name gets a slug-and-hash name instead)."""
    directory = cache_dir / RUNS_DIR
    if PLAIN_RUN_ID.fullmatch(run_id):
        return directory / f"{run_id}.lock"
    # Labels on the engine can hold anything; never let one name a path elsewhere.
    return key_path(directory, run_id, suffix=".lock")


class RunHold:
    """This process's share of a run's liveness lock; :meth:`release` gives it up.

    The lock lives in an open file description: a process forked (not exec'd) from the
    holder shares it, and it ends when the last such process exits.
    """

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Stop holding the run alive (the lock file stays: others may hold it too)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the last descriptor drops the flock

    def __enter__(self) -> RunHold:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def hold_run(cache_dir: Path, run_id: str) -> RunHold:
    """Hold run ``run_id`` alive for as long as this process lives, or until
    :meth:`RunHold.release`: a shared ``flock`` on :func:`run_lock_path`.

    Raises :class:`~pytest_containers.errors.ContainerError` when the cache directory or
    the lock file cannot be made, or cannot be trusted (see
    :func:`~pytest_containers._base.locks.check_private_dir`).
    """
    private_subdir(cache_dir, RUNS_DIR)
    path = run_lock_path(cache_dir, run_id)
    while True:
        fd = open_private(path, os.O_RDWR | os.O_CREAT)
        try:
            # Blocks only while a liveness check holds the lock for an instant.
            fcntl.flock(fd, fcntl.LOCK_SH)
            # prune_run_locks may have unlinked the file between our open and our lock;
            # a lock on an unlinked file would keep nobody's run alive: start over.
            mine, current = os.fstat(fd), _stat_or_none(path)
            if current is not None and (mine.st_dev, mine.st_ino) == (
                current.st_dev,
                current.st_ino,
            ):
                with contextlib.suppress(OSError):
                    os.utime(fd)  # prune_run_locks judges a file's age by its last hold
                return RunHold(path, fd)
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


def _stat_or_none(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def probe_lock(path: Path) -> bool | None:
    """True: someone holds the lock; False: nobody does; None: there is no lock file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError:
        return True  # cannot tell (permissions, a link): treat as alive, remove nothing
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fd, fcntl.LOCK_UN)  # nobody held it: let go at once
        return False
    finally:
        os.close(fd)


def run_is_alive(cache_dir: Path, run_id: str) -> bool:
    """Whether some process still holds run ``run_id`` (see :func:`hold_run`).

    A missing lock file means dead. A lock file that cannot be opened (permissions)
    counts as alive, so that callers remove nothing they cannot judge.
    """
    return bool(probe_lock(run_lock_path(cache_dir, run_id)))


def runs_dir_is_safe(cache_dir: Path, name: str) -> bool:
    """Whether ``<cache>/<name>`` exists and may be scanned for files to delete: a link
    there would point the deletions at any directory."""
    try:
        check_private_dir(cache_dir)
        check_private_dir(cache_dir / name, inside=cache_dir)
    except (ContainerError, OSError):
        return False
    return True


def prune_run_locks(cache_dir: Path, *, older_than: float = 86400.0) -> int:
    """Delete the lock files of runs that nobody holds and nobody has held for
    ``older_than`` seconds; returns how many. Safe against a run starting at the same
    moment: the file is unlinked under an exclusive lock, and :func:`hold_run` checks
    that the file it locked is still the one in the directory. Does nothing when the
    directory cannot be trusted (a symbolic link, someone else's)."""
    directory = cache_dir / RUNS_DIR
    if not runs_dir_is_safe(cache_dir, RUNS_DIR):
        return 0
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return 0
    cutoff = time.time() - older_than
    pruned = 0
    for entry in entries:
        if not entry.name.endswith(".lock"):
            continue
        try:
            if not entry.is_file(follow_symlinks=False) or entry.stat().st_mtime > cutoff:
                continue
            fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            mine, current = os.fstat(fd), os.lstat(entry.path)
            if (mine.st_dev, mine.st_ino) == (current.st_dev, current.st_ino) and (
                mine.st_mtime <= cutoff
            ):
                os.unlink(entry.path)
                pruned += 1
        except OSError:
            pass  # held (BlockingIOError), or replaced or removed meanwhile
        finally:
            os.close(fd)
    return pruned


def prune_run_scoped(cache_dir: Path) -> int:
    """Delete the run-scoped lock and record files (``<cache>/run-scoped/``) of runs that
    nobody holds any more; returns how many files. A run holds its lock (see
    :func:`hold_run`) before it makes any of them, so a live run's files are never
    touched."""
    directory = cache_dir / RUN_SCOPED_DIR
    if not runs_dir_is_safe(cache_dir, RUN_SCOPED_DIR):
        return 0
    try:
        entries = [e for e in os.scandir(directory) if e.is_file(follow_symlinks=False)]
    except OSError:
        return 0
    # key_path(directory, run_id, fingerprint): the name starts with the run id's slug.
    verdicts: dict[str, bool] = {}
    pruned = 0
    for entry in entries:
        run_id = entry.name.split("_", 1)[0]
        if not PLAIN_RUN_ID.fullmatch(run_id) or not entry.name.endswith((".lock", ".json")):
            continue
        if run_id not in verdicts:
            verdicts[run_id] = bool(probe_lock(run_lock_path(cache_dir, run_id)))
        if verdicts[run_id]:
            continue
        with contextlib.suppress(OSError):
            os.unlink(entry.path)
            pruned += 1
    return pruned
