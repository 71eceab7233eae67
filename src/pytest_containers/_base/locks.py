"""Machine-wide locks and state files shared by every pytest process on the host.

The image cache uses these to pull an image once even when several xdist workers and
several concurrent pytest runs want it at the same moment. Locks are OS ``flock`` locks
(via :mod:`filelock`), so the kernel drops them when their holder dies, however it dies;
state files are replaced atomically, so a reader sees the old record or the new one,
never half of one.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import re
import stat
import tempfile
import threading
import time
import weakref
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import filelock

from pytest_containers.errors import CacheDirError, ContainerError

__all__ = [
    "CacheDirError",
    "check_private_dir",
    "default_cache_dir",
    "ensure_private_dir",
    "exclusive",
    "io_error",
    "key_path",
    "open_private",
    "private_subdir",
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


_ADVICE = "pass --container-cache-dir to use another directory, or fix its permissions"


def _owner(uid: int) -> str:
    try:
        import pwd

        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except (ImportError, KeyError):
        return f"uid {uid}"


def _trusted_link(link: Path, info: os.stat_result) -> bool:
    """A symbolic link among the cache dir's ancestors is harmless when only root or this
    user could have made it or can change it: owned by one of them, in a directory that
    no one else may write to (``/home -> /usr/home``, a home directory on another disk)."""
    if info.st_uid not in (0, os.geteuid()):
        return False
    try:
        parent = os.lstat(link.parent)
    except OSError:
        return False
    return parent.st_uid in (0, os.geteuid()) and not parent.st_mode & 0o022


def check_private_dir(path: Path, *, inside: Path | None = None) -> Path:
    """Refuse a directory that someone else could write to, so that no other local user
    can plant or replace what the plugin reads and deletes there.

    ``path`` must be a real directory (no symbolic link at it or below ``inside``, the
    cache directory when ``path`` is a directory in it), owned by the current user and
    not writable by group or others. A symbolic link among the ancestors is accepted only
    when root or this user own it and its directory (see :func:`_trusted_link`). Raises
    :class:`CacheDirError` naming the path, its owner and mode, and what to do.
    """
    path = Path(os.path.abspath(path))
    current = Path(path.anchor)
    for part in path.parts[1:]:
        current = current / part
        try:
            info = os.lstat(current)
        except FileNotFoundError:
            break
        except OSError as error:
            raise CacheDirError(
                f"cannot check the cache directory {path}: {current}: "
                f"{error.strerror or error}; {_ADVICE}",
                path=path,
            ) from error
        if stat.S_ISLNK(info.st_mode):
            below = inside is not None and current.is_relative_to(inside)
            if current == path or below or not _trusted_link(current, info):
                raise CacheDirError(
                    f"the cache directory {path} has a symbolic link in its path ({current} "
                    f"-> {os.readlink(current)}, owned by {_owner(info.st_uid)}); "
                    "pytest-containers does not follow links there, as whoever controls the "
                    "link controls what the cache holds: pass --container-cache-dir with a "
                    "path without links (e.g. its realpath), or remove the link",
                    path=path,
                )
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise CacheDirError(f"the cache directory {path} is not a directory; {_ADVICE}", path=path)
    mode = stat.S_IMODE(info.st_mode)
    if info.st_uid != os.geteuid():
        raise CacheDirError(
            f"the cache directory {path} is owned by {_owner(info.st_uid)}, not by you "
            f"({_owner(os.geteuid())}), mode {mode:04o}: whoever owns it decides which "
            "image a test runs; pass --container-cache-dir with a directory of your own",
            path=path,
        )
    if mode & 0o022:
        raise CacheDirError(
            f"the cache directory {path} (owned by {_owner(info.st_uid)}) has mode "
            f"{mode:04o}: group or others may write to it, and so decide which image a "
            f"test runs; make it private (chmod 700 {path}) or pass --container-cache-dir "
            "with another directory",
            path=path,
        )
    return path


def ensure_private_dir(path: Path, *, inside: Path | None = None) -> Path:
    """Create ``path`` (and its parents) if needed, private to the user, and return it.

    A directory this call creates gets mode ``0700``; an existing one must pass
    :func:`check_private_dir` (``inside``: the cache directory ``path`` is in). Raises
    :class:`CacheDirError` when the directory cannot be created, is not writable or
    cannot be trusted.
    """
    existed = path.is_dir()
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not existed:
            # mkdir's mode is filtered by the umask; make it exactly 0700.
            path.chmod(0o700)
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise CacheDirError(
            f"cannot create the cache directory {path}: {reason}; {_ADVICE}", path=path
        ) from error
    check_private_dir(path, inside=inside)
    if not os.access(path, os.W_OK | os.X_OK):
        raise CacheDirError(f"the cache directory {path} is not writable; {_ADVICE}", path=path)
    return path


def private_subdir(cache_dir: Path, name: str) -> Path:
    """``<cache_dir>/<name>``, made private if needed; no link may stand in for it."""
    return ensure_private_dir(cache_dir / name, inside=cache_dir)


def io_error(action: str, path: Path, error: OSError) -> CacheDirError:
    """A clear error for a failed read or write in the cache directory (``ENOSPC``,
    ``EROFS``, ``EIO``, a planted link...), naming the file, its directory and what to do."""
    code = errno.errorcode.get(error.errno or 0, "")
    reason = f"{error.strerror or error}{f' ({code})' if code else ''}"
    if error.errno == errno.ELOOP:
        advice = (
            "it is a symbolic link, which pytest-containers never follows there; remove it "
            f"and check who else can write to {path.parent}"
        )
    elif error.errno in (errno.ENOSPC, errno.EDQUOT):
        advice = f"free some space on the filesystem of {path.parent}, or {_ADVICE}"
    else:
        advice = _ADVICE
    return CacheDirError(f"cannot {action} {path}: {reason}; {advice}", path=path)


def open_private(path: Path, flags: int) -> int:
    """``os.open`` for a file in the cache directory: never through a symbolic link,
    never inherited by children, created ``0600``. Raises :class:`CacheDirError`."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as error:
        raise io_error("open", path, error) from error


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
        _refuse_odd_file(lock_path)
        file_lock = filelock.FileLock(str(lock_path), timeout=remaining, mode=0o600)
        try:
            file_lock.acquire()
        except filelock.Timeout:
            raise _timed_out(lock_path, timeout, what) from None
        except OSError as error:
            raise io_error("lock", lock_path, error) from error
        gate.owner, gate.depth = me, 1
        try:
            yield
        finally:
            gate.owner, gate.depth = None, 0
            file_lock.release()
    finally:
        gate.lock.release()


def _refuse_odd_file(path: Path) -> None:
    """Raise :class:`CacheDirError` when ``path`` exists and is no regular file (a
    symbolic link, a directory, a fifo): the plugin made none of those."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as error:
        raise io_error("check", path, error) from error
    if not stat.S_ISREG(info.st_mode):
        kind = "a symbolic link" if stat.S_ISLNK(info.st_mode) else "not a regular file"
        raise CacheDirError(
            f"{path} is {kind}, which pytest-containers never made nor follows; remove it "
            f"and check who else can write to {path.parent}",
            path=path,
        )


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
    left untouched. An I/O error (``ENOSPC``...) raises :class:`CacheDirError`.
    """
    text = json.dumps(dict(data), indent=2, sort_keys=True) + "\n"
    try:
        # mkstemp: O_EXCL (so never through a link), mode 0600.
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        raise io_error("write", path, error) from error
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp_name, path)
    except BaseException as error:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        if isinstance(error, OSError):
            raise io_error("write", path, error) from error
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
    read as ``None``; the caller treats that as "no record" and overwrites it. Other
    errors (permission denied, a symbolic link) raise :class:`CacheDirError`.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as error:
        raise io_error("read", path, error) from error
    with os.fdopen(fd, "rb") as stream:
        raw = stream.read()
    try:
        data = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):
        # UnicodeDecodeError and JSONDecodeError are both ValueErrors.
        return None
    if not isinstance(data, dict):
        return None
    return data
