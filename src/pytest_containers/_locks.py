"""Machine-wide locks and state files shared by every pytest process on the host.

The image cache uses these to pull an image once even when several xdist workers and
several concurrent pytest runs want it at the same moment. Locks are OS ``flock`` locks
(via :mod:`filelock`), so the kernel drops them when their holder dies, however it dies;
state files are replaced atomically, so a reader sees the old record or the new one,
never half of one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import tempfile
import threading
import time
import weakref
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import filelock

from pytest_containers.errors import ContainerError

__all__ = [
    "default_cache_dir",
    "ensure_private_dir",
    "exclusive",
    "key_path",
    "read_json",
    "write_json_atomic",
]

_SLUG_UNSAFE = re.compile(r"[^A-Za-z0-9.-]+")
_SLUG_MAX = 80
_HASH_CHARS = 12


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/pytest-containers``, or ``~/.cache/pytest-containers``."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    # The XDG spec says to ignore a relative value.
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "pytest-containers"


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` (and its parents) if needed, private to the user, and return it.

    A directory this call creates gets mode ``0700``; an existing one is left as it is.
    Raises :class:`~pytest_containers.errors.ContainerError` when the directory cannot be
    created or is not writable.
    """
    advice = "pass --container-cache-dir to use another directory, or fix its permissions"
    existed = path.is_dir()
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not existed:
            # mkdir's mode is filtered by the umask; make it exactly 0700.
            path.chmod(0o700)
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise ContainerError(
            f"cannot create the cache directory {path}: {reason}; {advice}"
        ) from error
    if not os.access(path, os.W_OK | os.X_OK):
        raise ContainerError(f"the cache directory {path} is not writable; {advice}")
    return path


def key_path(directory: Path, *parts: str, suffix: str) -> Path:
    """A stable file name in ``directory`` for the key ``parts``.

    The name is a readable slug of the parts plus a short hash of all of them, e.g.
    ``docker.io_library_redis_7-3f2a9c1d0b7e.lock``: the slug is for people, the hash makes
    distinct keys distinct even when their slugs collide or are truncated.
    """
    slug = _SLUG_UNSAFE.sub("_", "_".join(parts))[:_SLUG_MAX].strip("._-") or "key"
    # JSON keeps ("a/b", "c") and ("a", "b/c") apart, unlike a plain join.
    digest = hashlib.sha256(json.dumps(list(parts)).encode()).hexdigest()[:_HASH_CHARS]
    if suffix and not suffix.startswith("."):
        suffix = "." + suffix
    return directory / f"{slug}-{digest}{suffix}"


class _Gate:
    """Process-local exclusion for one lock path, re-entrant for its owning thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.owner: int | None = None
        self.depth = 0


_gates: weakref.WeakValueDictionary[str, _Gate] = weakref.WeakValueDictionary()
_gates_guard = threading.Lock()


def _reset_gates_after_fork() -> None:
    # A gate held by a parent thread that does not exist in the child would never open.
    global _gates, _gates_guard
    _gates = weakref.WeakValueDictionary()
    _gates_guard = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_gates_after_fork)


def _gate_for(lock_path: Path) -> _Gate:
    key = os.path.realpath(lock_path)
    with _gates_guard:
        gate = _gates.get(key)
        if gate is None:
            gate = _gates[key] = _Gate()
        return gate


@contextmanager
def exclusive(lock_path: Path, *, timeout: float, what: str) -> Iterator[None]:
    """Hold the machine-wide lock ``lock_path`` for the ``with`` block.

    Excludes other processes (an OS ``flock``, dropped by the kernel if the holder dies;
    the lock file itself is never deleted) and other threads of this process. Re-entering
    it on the thread that holds it does not block. ``timeout`` is in seconds (``math.inf``
    waits forever); when it runs out a
    :class:`~pytest_containers.errors.ContainerError` names ``what`` and the lock file.
    """
    gate = _gate_for(lock_path)
    me = threading.get_ident()
    if gate.owner == me:
        gate.depth += 1
        try:
            yield
        finally:
            gate.depth -= 1
        return

    forever = timeout < 0 or math.isinf(timeout)
    deadline = time.monotonic() + timeout
    # filelock's own thread handling differs between versions (thread-local holds,
    # re-entrancy, deadlock checks); a plain lock in front makes threads exclude each
    # other the same way everywhere, and filelock only ever sees one thread per path.
    acquired = gate.lock.acquire() if forever else gate.lock.acquire(timeout=max(timeout, 0.0))
    if not acquired:
        raise _timed_out(lock_path, timeout, what)
    try:
        remaining = -1.0 if forever else max(deadline - time.monotonic(), 0.0)
        file_lock = filelock.FileLock(str(lock_path), timeout=remaining)
        try:
            file_lock.acquire()
        except filelock.Timeout:
            raise _timed_out(lock_path, timeout, what) from None
        gate.owner, gate.depth = me, 1
        try:
            yield
        finally:
            gate.owner, gate.depth = None, 0
            file_lock.release()
    finally:
        gate.lock.release()


def _timed_out(lock_path: Path, timeout: float, what: str) -> ContainerError:
    return ContainerError(
        f"timed out after {timeout:.0f} s waiting for the lock on {what} ({lock_path}); "
        "another pytest run may be stuck pulling it. Wait for it to finish or stop it; "
        "a lock whose holder has exited is released automatically, so deleting the lock "
        "file is never needed"
    )


def write_json_atomic(path: Path, data: Mapping[str, object]) -> None:
    """Write ``data`` as JSON to ``path`` so that readers see the old or the new content.

    The JSON goes to a temporary file in the same directory, is flushed to disk and then
    renamed over ``path``; on any failure the temporary file is removed and ``path`` is
    left untouched.
    """
    text = json.dumps(dict(data), indent=2, sort_keys=True) + "\n"
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    fsync_directory(path.parent)


def fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable; not every platform or filesystem allows it."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def read_json(path: Path) -> dict[str, object] | None:
    """The JSON object stored at ``path``, or ``None`` when there is no usable record.

    A missing file, and one that is empty, truncated, not JSON or not a JSON object, all
    read as ``None``; the caller treats that as "no record" and overwrites it. Errors
    other than absence (e.g. permission denied) propagate.
    """
    try:
        raw = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        data = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):
        # UnicodeDecodeError and JSONDecodeError are both ValueErrors.
        return None
    if not isinstance(data, dict):
        return None
    return data
