"""Nothing left behind, even when pytest dies.

Three mechanisms, from the cheapest to the last resort:

* **Run liveness.** Every pytest process of a run (the xdist controller and each worker,
  or the only process) holds a shared OS lock on ``<cache>/runs/<run id>.lock`` for its
  whole life (:func:`hold_run`). The kernel drops the lock when the process ends, however
  it ends, so a run is alive exactly as long as someone still holds it
  (:func:`run_is_alive`); no pid, which the system may reuse, is trusted for this.
* **The watchdog** (:func:`start_watchdog`): a small process per pytest process, in a
  session of its own, that removes that process's containers when it sees the process
  die (see :mod:`pytest_containers._watchdog`).
* **Sweeping** (:func:`sweep_dead_runs`): removes what runs of this host left behind when
  even the watchdog could not help (it was killed too, the machine rebooted, the engine
  was down).

pytest-free, and docker-py is only ever handed in: importing this module imports neither.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

from pytest_containers import _watchdog
from pytest_containers._locks import ensure_private_dir, key_path
from pytest_containers._watchdog import (
    HOST_LABEL,
    LABEL_PREFIX,
    PID_LABEL,
    RUN_LABEL,
    SCOPE_LABEL,
    WORKER_LABEL,
    Resource,
    list_labelled,
    remove_resources,
)
from pytest_containers.errors import ContainerError

if TYPE_CHECKING:
    from collections.abc import Iterable

    import docker

__all__ = [
    "HOST_LABEL",
    "LABEL_PREFIX",
    "PID_LABEL",
    "RUN_LABEL",
    "SCOPE_LABEL",
    "WORKER_LABEL",
    "RemovedRun",
    "RunHold",
    "SweepResult",
    "Watchdog",
    "hold_run",
    "mark_kept",
    "prune_run_locks",
    "run_is_alive",
    "run_lock_path",
    "start_watchdog",
    "sweep_dead_runs",
]

_RUNS_DIR = "runs"
_KEPT_DIR = "kept"
_PLAIN_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")

# -- run liveness ------------------------------------------------------------------


def run_lock_path(cache_dir: Path, run_id: str) -> Path:
    """The lock file that says whether run ``run_id`` is alive: ``<cache>/runs/<run id>.lock``
    (a run id that is not a plain file name gets a slug-and-hash name instead)."""
    directory = cache_dir / _RUNS_DIR
    if _PLAIN_RUN_ID.fullmatch(run_id):
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
    the lock file cannot be made.
    """
    ensure_private_dir(cache_dir / _RUNS_DIR)
    path = run_lock_path(cache_dir, run_id)
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as error:
            raise ContainerError(
                f"cannot create the run lock {path}: {error.strerror or error}; pass "
                "--container-cache-dir to use another directory, or fix its permissions"
            ) from error
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
        return os.stat(path)
    except FileNotFoundError:
        return None


def _probe(path: Path) -> bool | None:
    """True: someone holds the lock; False: nobody does; None: there is no lock file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError:
        return True  # cannot tell (permissions): treat as alive, remove nothing
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
    return bool(_probe(run_lock_path(cache_dir, run_id)))


def prune_run_locks(cache_dir: Path, *, older_than: float = 86400.0) -> int:
    """Delete the lock files of runs that nobody holds and nobody has held for
    ``older_than`` seconds; returns how many. Safe against a run starting at the same
    moment: the file is unlinked under an exclusive lock, and :func:`hold_run` checks
    that the file it locked is still the one in the directory."""
    directory = cache_dir / _RUNS_DIR
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
            fd = os.open(entry.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            mine, current = os.fstat(fd), os.stat(entry.path)
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


# -- sweeping ----------------------------------------------------------------------


@dataclass(frozen=True)
class RemovedRun:
    """What a sweep removed of one dead run: container, network and volume names."""

    run_id: str
    containers: tuple[str, ...] = ()
    networks: tuple[str, ...] = ()
    volumes: tuple[str, ...] = ()

    @property
    def count(self) -> int:
        return len(self.containers) + len(self.networks) + len(self.volumes)


@dataclass
class SweepResult:
    """The outcome of :func:`sweep_dead_runs`, for the ``--container-prune`` report."""

    #: The dead runs whose resources were removed, with what was removed.
    removed: list[RemovedRun] = field(default_factory=list)
    #: Runs of this host that are still alive: left alone.
    alive: list[str] = field(default_factory=list)
    #: Runs made on another host (or with no host label): left alone, as their
    #: liveness cannot be checked from here.
    other_hosts: list[str] = field(default_factory=list)
    #: What could not be removed, one message per resource.
    errors: list[str] = field(default_factory=list)
    #: Lock files of long-dead runs deleted from the cache directory.
    locks_pruned: int = 0

    @property
    def containers_removed(self) -> int:
        return sum(len(run.containers) for run in self.removed)

    def describe(self) -> list[str]:
        """Human-readable lines: one per removed run, then what was kept and why."""
        lines = []
        for run in self.removed:
            parts = [
                f"{len(names)} {kind}{'s' if len(names) != 1 else ''} ({', '.join(names)})"
                for kind, names in (
                    ("container", run.containers),
                    ("network", run.networks),
                    ("volume", run.volumes),
                )
                if names
            ]
            lines.append(f"removed from dead run {run.run_id}: {'; '.join(parts)}")
        if not self.removed:
            lines.append("no dead run of this host left anything behind")
        if self.alive:
            lines.append(f"kept {len(self.alive)} run(s) still in progress on this host")
        if self.other_hosts:
            lines.append(
                f"kept {len(self.other_hosts)} run(s) of other hosts: their liveness cannot "
                "be checked from here (prune them from their own host)"
            )
        lines.extend(f"could not remove {message}" for message in self.errors)
        return lines


def _pid_exists(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    except OSError:
        return True
    return True


def _looks_alive(cache_dir: Path, run_id: str, resources: list[Resource]) -> bool:
    state = _probe(run_lock_path(cache_dir, run_id))
    if state is not None:
        return state
    # No lock file here: the run died and its file was pruned, or it runs with another
    # cache directory (another user, a pytester run). Only in this case, and only to
    # keep things, fall back to the pids that made its resources.
    pids = {resource.labels.get(PID_LABEL, "") for resource in resources}
    return any(pid.isdigit() and _pid_exists(int(pid)) for pid in pids)


def sweep_dead_runs(
    client: docker.DockerClient,
    cache_dir: Path,
    *,
    own_run_id: str | None,
    host: str | None = None,
    spare_kept: bool = True,
) -> SweepResult:
    """Remove the containers (killed, with their anonymous volumes), networks and volumes
    that dead runs of this host left behind.

    Only runs whose ``pytest-containers.host`` label is ``host`` (``socket.gethostname()``
    by default) are considered: a run from another host that shares the engine cannot be
    checked from here (its lock lives on that host), so it is never touched, nor is a
    resource without a host label. The run ``own_run_id`` is never touched. A run is dead
    when nobody holds its lock in ``cache_dir`` (:func:`run_is_alive`); when there is no
    lock file at all, it is also kept while a process with one of its pid labels exists,
    as it may be a live run that uses another cache directory.

    With ``spare_kept`` (the automatic sweep at start), runs that kept containers on
    purpose (``--container-keep``, see :func:`mark_kept`) are spared; ``--container-prune``
    passes False to remove them too.

    One list call per resource type; also prunes lock files of long-dead runs.
    """
    kept_dir = cache_dir / _KEPT_DIR
    spared = (
        {path.name for path in kept_dir.iterdir()} if spare_kept and kept_dir.is_dir() else set()
    )
    host = socket.gethostname() if host is None else host
    by_run: dict[str, list[Resource]] = {}
    for resource in list_labelled(client, [RUN_LABEL]):
        by_run.setdefault(resource.labels.get(RUN_LABEL, ""), []).append(resource)

    result = SweepResult()
    doomed: list[Resource] = []
    for run_id, resources in sorted(by_run.items()):
        if not run_id or run_id == own_run_id or run_id in spared:
            continue
        if {resource.labels.get(HOST_LABEL) for resource in resources} != {host}:
            result.other_hosts.append(run_id)
        elif _looks_alive(cache_dir, run_id, resources):
            result.alive.append(run_id)
        else:
            doomed.extend(resources)

    removed, result.errors = remove_resources(client, doomed)
    names: dict[str, dict[str, list[str]]] = {}
    for resource in removed:
        kinds = names.setdefault(resource.labels[RUN_LABEL], {})
        kinds.setdefault(resource.kind, []).append(resource.name)
    for run_id, kinds in sorted(names.items()):
        result.removed.append(
            RemovedRun(
                run_id,
                containers=tuple(sorted(kinds.get("container", []))),
                networks=tuple(sorted(kinds.get("network", []))),
                volumes=tuple(sorted(kinds.get("volume", []))),
            )
        )
    result.locks_pruned = prune_run_locks(cache_dir)
    if not spare_kept:
        for run in result.removed:
            (kept_dir / run.run_id).unlink(missing_ok=True)
    return result


def mark_kept(cache_dir: Path, run_id: str, names: Iterable[str]) -> None:
    """Record that run ``run_id`` kept these containers on purpose, so that the sweep at
    the start of later runs leaves them for the user (``--container-prune`` removes them)."""
    directory = ensure_private_dir(cache_dir / _KEPT_DIR)
    (directory / run_id).write_text("".join(f"{name}\n" for name in names))


# -- the watchdog ------------------------------------------------------------------

# Runs _watchdog.py by its path, so that the idle watchdog does not import the package
# (whose __init__ imports pytest); a plain exec, as runpy would import typing and more.
# '' (the working directory) leaves sys.path first.
_BOOTSTRAP = (
    "import sys; "
    "sys.path[:] = [p for p in sys.path if p not in ('', '.')]; "
    "sys.argv = sys.argv[1:]; "
    "f = open(sys.argv[0], 'rb'); code = compile(f.read(), sys.argv[0], 'exec'); f.close(); "
    "exec(code, {'__name__': '__main__', '__file__': sys.argv[0], "
    "'__builtins__': __builtins__})"
)


class Watchdog:
    """A running watchdog process (see :func:`start_watchdog`)."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process

    @property
    def pid(self) -> int:
        return self.process.pid

    def close(self, *, clean_up: bool = False, timeout: float = 5.0) -> None:
        """End the watchdog.

        By default this is the parent's normal exit: the watchdog is told ``done`` and
        exits without removing anything. ``clean_up=True`` closes the pipe without
        ``done``, exactly as if this process had died: the watchdog removes what it
        watches. Waits up to ``timeout`` seconds for it to exit. Idempotent.
        """
        stdin = self.process.stdin
        if stdin is not None and not stdin.closed:
            try:
                if not clean_up:
                    stdin.write(_watchdog.DONE + b"\n")
                    stdin.flush()
            except OSError:
                pass  # the watchdog is gone already (broken pipe)
            finally:
                with contextlib.suppress(OSError):
                    stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout)


def _watchdog_command() -> list[str]:
    script = Path(_watchdog.__file__)
    if script.suffix == ".py" and script.is_file():
        return [sys.executable, "-W", "ignore", "-c", _BOOTSTRAP, str(script)]
    return [sys.executable, "-W", "ignore", "-m", "pytest_containers._watchdog"]


def _docker_path() -> str | None:
    """The sys.path entry docker-py came from, for a parent that found it somewhere
    the watchdog's interpreter would not look (a PYTHONPATH set only in-process)."""
    try:
        spec = importlib.util.find_spec("docker")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    return str(Path(spec.origin).parent.parent)


def start_watchdog(
    *,
    run_id: str,
    worker: str,
    pid: int,
    whole_run: bool,
    log_file: Path | None = None,
    deadline: float = 120.0,
    run_lock: Path | None = None,
) -> Watchdog:
    """Start a watchdog that removes this process's containers if it dies.

    It removes what is labelled with ``run_id``, ``worker`` and ``pid``, except the
    run-scoped containers; with ``whole_run`` (the xdist controller, or a run without
    xdist) everything labelled with ``run_id``. Call :meth:`Watchdog.close` on a normal
    exit. The process starts in its own session (Ctrl-C in the terminal and a kill of
    pytest's process group do not reach it), inherits the environment (DOCKER_HOST...),
    writes its log to ``log_file`` (appended) if given, and gives up after ``deadline``
    seconds of cleanup. Returns without waiting for it to be ready.

    The watchdog sees this process die when the last writer of its pipe is gone: a child
    forked (not exec'd) from this process holds the pipe too, so it waits for that child.

    With ``run_lock`` (see :func:`hold_run`), a worker's watchdog that finds nobody holding
    the run any more (the whole run was killed) removes the whole run's containers too.

    Raises :class:`~pytest_containers.errors.ContainerError` if it cannot be started.
    """
    command = [
        *_watchdog_command(),
        "--run-id",
        run_id,
        "--worker",
        worker,
        "--pid",
        str(pid),
        "--deadline",
        str(deadline),
    ]
    if whole_run:
        command.append("--whole-run")
    if run_lock is not None:
        command += ["--run-lock", str(run_lock)]
    docker_path = _docker_path()
    if docker_path:
        command += ["--path", docker_path]
    # A coverage plugin would start measuring the watchdog too; it needs no coverage.
    env = {key: value for key, value in os.environ.items() if not key.startswith("COV_CORE_")}
    log: IO[bytes] | int = subprocess.DEVNULL
    try:
        if log_file is not None:
            log = log_file.open("ab")
        process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
            close_fds=True,  # above all, not our run lock
            cwd="/",  # hold no directory of the run busy
            env=env,
        )
    except OSError as error:
        raise ContainerError(
            f"cannot start the cleanup watchdog ({command[0]}): {error}; containers of "
            "this run may be left behind if pytest is killed"
        ) from error
    finally:
        if not isinstance(log, int):
            log.close()
    return Watchdog(process)
