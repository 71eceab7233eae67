"""Nothing left behind, even when pytest dies.

Three mechanisms, from the cheapest to the last resort:

* **Run liveness.** Every pytest process of a run (the xdist controller and each worker,
  or the only process) holds a shared OS lock on ``<cache>/runs/<run id>.lock`` for its
  whole life (:func:`hold_run`). The kernel drops the lock when the process ends, however
  it ends, so a run is alive exactly as long as someone still holds it
  (:func:`run_is_alive`). A run whose lock this process cannot see (another cache dir,
  another machine, a container) is judged by other evidence only (:func:`judge_run`): the
  container it ran in is gone, or its pid is gone in this very pid namespace on this
  very boot (:class:`Identity`). Anything unproven counts as alive.
* **The watchdog** (:func:`start_watchdog`): a small process per pytest process, in a
  session of its own, that removes that process's containers when it sees the process
  die (see :mod:`pytest_containers._cleanup.watchdog`).
* **Sweeping** (:func:`sweep_dead_runs`): removes what runs proven dead left behind when
  even the watchdog could not help (it was killed too, with the container it ran in, the
  machine rebooted, the engine was down), but containers kept on purpose
  (:func:`mark_kept`); and the per-run files of dead runs in the cache directory.

pytest-free, and docker-py is only ever handed in: importing this module imports neither.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import socket
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

from pytest_containers._cleanup import watchdog as _watchdog
from pytest_containers._cleanup.liveness import (
    RUN_SCOPED_DIR,
    RUNS_DIR,
    RunHold,
    hold_run,
    probe_lock,
    prune_run_locks,
    prune_run_scoped,
    run_is_alive,
    run_lock_path,
)
from pytest_containers._cleanup.watchdog import (
    BOOT_LABEL,
    CONTAINER_LABEL,
    HOST_LABEL,
    LABEL_PREFIX,
    PID_LABEL,
    PIDNS_LABEL,
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
    "BOOT_LABEL",
    "CONTAINER_LABEL",
    "HOST_LABEL",
    "KEPT_SUFFIX",
    "LABEL_PREFIX",
    "PIDNS_LABEL",
    "PID_LABEL",
    "RUNS_DIR",
    "RUN_LABEL",
    "RUN_SCOPED_DIR",
    "SCOPE_LABEL",
    "WORKER_LABEL",
    "Identity",
    "RemovedRun",
    "RunHold",
    "SweepResult",
    "Watchdog",
    "hold_run",
    "is_kept",
    "judge_run",
    "local_identity",
    "mark_kept",
    "own_identity",
    "prune_run_locks",
    "prune_run_scoped",
    "remove_run",
    "run_is_alive",
    "run_lock_path",
    "start_watchdog",
    "sweep_dead_runs",
]


# -- who made a resource -----------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    """Where a pytest process runs, as far as telling its death apart goes: the host name,
    the kernel's boot id, the pid namespace (``dev:inode`` of ``/proc/self/ns/pid``), and
    the engine-verified id of the container it runs in. ``""`` when unknown."""

    host: str
    boot: str = ""
    pidns: str = ""
    container: str = ""

    def labels(self) -> dict[str, str]:
        """The labels that record this identity on what the process makes."""
        labels = {HOST_LABEL: self.host, BOOT_LABEL: self.boot, PIDNS_LABEL: self.pidns}
        if self.container:
            labels[CONTAINER_LABEL] = self.container
        return labels

    def same_pid_space(self, labels: Mapping[str, str]) -> bool:
        """Whether a pid in ``labels`` names a process this one can see: same host, same
        boot, same pid namespace, each known on both sides."""
        return bool(
            self.host
            and self.boot
            and self.pidns
            and labels.get(HOST_LABEL) == self.host
            and labels.get(BOOT_LABEL) == self.boot
            and labels.get(PIDNS_LABEL) == self.pidns
        )


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _pid_namespace() -> str:
    try:
        info = os.stat("/proc/self/ns/pid")
    except OSError:
        return ""
    return f"{info.st_dev}:{info.st_ino}"


def local_identity(container: str | None = None) -> Identity:
    """This process's :class:`Identity`; ``container`` is the engine-verified id of the
    container it runs in (``_engine.own_container_id``), if any."""
    return Identity(socket.gethostname(), _boot_id(), _pid_namespace(), container or "")


def own_identity(client: docker.DockerClient) -> Identity:
    """:func:`local_identity`, with the container this process runs in as the engine
    behind ``client`` knows it."""
    container = None
    from pytest_containers._engine.connection import own_container_id

    with contextlib.suppress(Exception):  # not known: judged by pid and lock only
        container = own_container_id(client)
    return local_identity(container)


# -- sweeping ----------------------------------------------------------------------


@dataclass(frozen=True)
class RemovedRun:
    """What a sweep removed of one dead run: container, network and volume names, and
    why the run was judged dead."""

    run_id: str
    containers: tuple[str, ...] = ()
    networks: tuple[str, ...] = ()
    volumes: tuple[str, ...] = ()
    reason: str = ""

    @property
    def count(self) -> int:
        return len(self.containers) + len(self.networks) + len(self.volumes)


@dataclass
class SweepResult:
    """The outcome of :func:`sweep_dead_runs`, for the report."""

    #: The dead runs whose resources were removed, with what was removed and why.
    removed: list[RemovedRun] = field(default_factory=list)
    #: Runs proven alive (their lock is held, or their process seen): left alone.
    alive: list[str] = field(default_factory=list)
    #: Runs that could not be proven dead (another host, boot or pid namespace, and no
    #: lock or container to ask): left alone.
    unproven: list[str] = field(default_factory=list)
    #: Runs that kept containers on purpose (--container-keep): left alone.
    kept: list[str] = field(default_factory=list)
    #: What could not be removed, one message per resource.
    errors: list[str] = field(default_factory=list)
    #: Per-run files of dead runs deleted from the cache directory.
    files_pruned: int = 0

    @property
    def containers_removed(self) -> int:
        return sum(len(run.containers) for run in self.removed)

    def headline(self) -> str | None:
        """One line saying what the sweep removed and why, or None if nothing."""
        if not self.removed:
            return None
        counts = []
        for kind in ("container", "network", "volume"):
            number = sum(len(getattr(run, f"{kind}s")) for run in self.removed)
            if number:
                counts.append(f"{number} {kind}{'s' if number != 1 else ''}")
        runs = len(self.removed)
        why = "; ".join(f"{run.run_id[:12]}: {run.reason}" for run in self.removed)
        return f"removed {', '.join(counts)} of {runs} dead run{'s' if runs != 1 else ''} ({why})"

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
            lines.append(f"removed from dead run {run.run_id} ({run.reason}): {'; '.join(parts)}")
        if not self.removed:
            lines.append("no dead run left anything behind")
        if self.alive:
            lines.append(f"kept {len(self.alive)} run(s) still in progress")
        if self.kept:
            lines.append(f"kept {len(self.kept)} run(s) with containers kept for debugging")
        if self.unproven:
            lines.append(
                f"kept {len(self.unproven)} run(s) that cannot be proven dead from here "
                "(another host, boot or pid namespace): prune them from where they ran"
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
    except OSError:
        return True  # someone else's process (PermissionError), or cannot tell
    return True


def _container_gone(client: docker.DockerClient, container_id: str) -> str | None:
    """Why the container ``container_id`` can hold no live process (removed, exited), or
    None when it may (running, restarting, or the engine cannot tell)."""
    import docker.errors

    try:
        attrs = client.api.inspect_container(container_id)
    except docker.errors.NotFound:
        return f"the container {container_id[:12]} it ran in is gone from the engine"
    except Exception:
        return None
    state = attrs.get("State") or {}
    if state.get("Running") or state.get("Restarting") or state.get("Paused"):
        return None
    return f"the container {container_id[:12]} it ran in has {state.get('Status') or 'stopped'}"


def judge_run(
    client: docker.DockerClient,
    cache_dir: Path,
    run_id: str,
    resources: Iterable[Resource],
    me: Identity,
) -> str | None:
    """Why run ``run_id`` is proven dead, or None when it may be alive.

    Dead only on evidence: nobody holds its lock in ``cache_dir``; or, for every process
    that made one of its ``resources``, either the container it ran in is gone or has
    stopped (the engine says so), or its pid is gone in this very pid namespace on this
    very boot. Anything else (another host, boot or pid namespace, missing labels, a
    lock that cannot be read) counts as alive.
    """
    held = probe_lock(run_lock_path(cache_dir, run_id))
    if held is not None:
        return None if held else f"nobody holds its lock in {cache_dir}"
    makers = {
        tuple(sorted((key, value) for key, value in r.labels.items() if key in _MAKER_KEYS))
        for r in resources
    }
    reasons: list[str] = []
    gone: dict[str, str | None] = {}
    for maker in sorted(makers):
        labels = dict(maker)
        container = labels.get(CONTAINER_LABEL, "")
        if container:
            if container not in gone:
                gone[container] = _container_gone(client, container)
            if gone[container] is not None:
                reasons.append(str(gone[container]))
                continue
        pid = labels.get(PID_LABEL, "")
        if pid.isdigit() and me.same_pid_space(labels) and not _pid_exists(int(pid)):
            reasons.append(f"pid {pid} is gone (same boot and pid namespace)")
            continue
        return None
    return "; ".join(dict.fromkeys(reasons)) or None


_MAKER_KEYS = frozenset((HOST_LABEL, BOOT_LABEL, PIDNS_LABEL, PID_LABEL, CONTAINER_LABEL))


def sweep_dead_runs(
    client: docker.DockerClient,
    cache_dir: Path,
    *,
    own_run_id: str | None,
    me: Identity | None = None,
    spare_kept: bool = True,
) -> SweepResult:
    """Remove the containers (killed, with their anonymous volumes), networks and volumes
    of runs proven dead (see :func:`judge_run`), whatever host, cache directory or
    container they ran in. The run ``own_run_id`` is never touched.

    With ``spare_kept`` (the automatic sweep at start), a run that kept containers on
    purpose (``--container-keep``: their names end in :data:`KEPT_SUFFIX`, see
    :func:`mark_kept`) is spared whole, whatever cache directory it used;
    ``--container-prune`` passes False to remove them too.

    One list call per resource type, one inspection per container a run ran in; also
    prunes the per-run files of dead runs in ``cache_dir``.
    """
    me = own_identity(client) if me is None else me
    result = SweepResult()
    doomed: list[Resource] = []
    reasons: dict[str, str] = {}
    for run_id, resources in sorted(_by_run(client).items()):
        if not run_id or run_id == own_run_id:
            continue
        if spare_kept and any(is_kept(r) for r in resources):
            result.kept.append(run_id)
            continue
        reason = judge_run(client, cache_dir, run_id, resources, me)
        if reason is None:
            held = probe_lock(run_lock_path(cache_dir, run_id))
            if held or any(me.same_pid_space(r.labels) for r in resources):
                result.alive.append(run_id)
            else:
                result.unproven.append(run_id)
            continue
        reasons[run_id] = reason
        doomed.extend(resources)
    removed, result.errors = remove_resources(client, doomed)
    result.removed = _removed_runs(removed, reasons)
    result.files_pruned = prune_run_locks(cache_dir) + prune_run_scoped(cache_dir)
    return result


def _by_run(client: docker.DockerClient) -> dict[str, list[Resource]]:
    """Every resource with a run label, by run id, in one list call per type."""
    by_run: dict[str, list[Resource]] = {}
    for resource in list_labelled(client, [RUN_LABEL]):
        by_run.setdefault(resource.labels.get(RUN_LABEL, ""), []).append(resource)
    return by_run


def _removed_runs(removed: Iterable[Resource], reasons: Mapping[str, str]) -> list[RemovedRun]:
    """What was removed, grouped by run, each with why its run was judged dead."""
    names: dict[str, dict[str, list[str]]] = {}
    for resource in removed:
        kinds = names.setdefault(resource.labels[RUN_LABEL], {})
        kinds.setdefault(resource.kind, []).append(resource.name)
    return [
        RemovedRun(
            run_id,
            containers=tuple(sorted(kinds.get("container", []))),
            networks=tuple(sorted(kinds.get("network", []))),
            volumes=tuple(sorted(kinds.get("volume", []))),
            reason=reasons[run_id],
        )
        for run_id, kinds in sorted(names.items())
    ]


def remove_run(
    client: docker.DockerClient, run_id: str, *, keep: Iterable[str] = ()
) -> tuple[list[Resource], list[str]]:
    """At the end of run ``run_id``: remove everything its label still holds (after a
    failed teardown, a dead worker, run scope) but the containers whose ids are in
    ``keep`` and, while some are kept, the networks and volumes they may use. A resource
    already gone (404) or being removed (409) is fine. Returns what was removed and the
    errors, one message each."""
    kept = set(keep)
    found = [
        r
        for r in list_labelled(client, [f"{RUN_LABEL}={run_id}"])
        if r.id not in kept and not is_kept(r)
    ]
    if kept:
        found = [r for r in found if r.kind == "container"]
    return remove_resources(client, found)


#: The end of the name of a container kept on purpose (--container-keep).
KEPT_SUFFIX = "-kept"


def is_kept(resource: Resource) -> bool:
    """Whether ``resource`` is a container kept on purpose (see :func:`mark_kept`)."""
    return resource.kind == "container" and resource.name.endswith(KEPT_SUFFIX)


def mark_kept(client: docker.DockerClient, container_id: str, name: str) -> str:
    """Mark a container as kept on purpose, on the engine itself, so that every later
    run's sweep spares it whatever its cache directory: Docker cannot add a label to an
    existing container, so the mark is its name, which gets :data:`KEPT_SUFFIX`. Returns
    the new name (``name`` unchanged when it already has it, or the engine refused)."""
    import docker.errors

    if name.endswith(KEPT_SUFFIX):
        return name
    new_name = name + KEPT_SUFFIX
    try:
        client.api.rename(container_id, new_name)
    except docker.errors.APIError:
        return name
    return new_name


# -- the watchdog ------------------------------------------------------------------

# Runs _cleanup/watchdog.py by its path, so that the idle watchdog does not import the package
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
    return [sys.executable, "-W", "ignore", "-m", "pytest_containers._cleanup.watchdog"]


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
    engine_environ: Mapping[str, str] | None = None,
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
    command = _watchdog_arguments(
        run_id=run_id,
        worker=worker,
        pid=pid,
        whole_run=whole_run,
        deadline=deadline,
        run_lock=run_lock,
    )
    try:
        process = _spawn_watchdog(command, _watchdog_environ(engine_environ), log_file)
    except OSError as error:
        raise ContainerError(
            f"cannot start the cleanup watchdog ({command[0]}): {error}; containers of "
            "this run may be left behind if pytest is killed"
        ) from error
    return Watchdog(process)


def _watchdog_arguments(
    *,
    run_id: str,
    worker: str,
    pid: int,
    whole_run: bool,
    deadline: float,
    run_lock: Path | None,
) -> list[str]:
    """The watchdog's command line (see :func:`pytest_containers._cleanup.watchdog.main`)."""
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
    return command


def _watchdog_environ(engine_environ: Mapping[str, str] | None) -> dict[str, str]:
    """This process's environment, for the watchdog."""
    # A coverage plugin would start measuring the watchdog too; it needs no coverage.
    env = {key: value for key, value in os.environ.items() if not key.startswith("COV_CORE_")}
    # The engine this process found (a docker context, a fallback socket), spelled so that
    # any docker-py version reaches the same one.
    env.update(engine_environ or {})
    return env


def _spawn_watchdog(
    command: list[str], env: dict[str, str], log_file: Path | None
) -> subprocess.Popen[bytes]:
    """Start the watchdog in a session of its own, its stderr appended to ``log_file``."""
    log: IO[bytes] | int = subprocess.DEVNULL
    try:
        if log_file is not None:
            log = log_file.open("ab")
        return subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
            close_fds=True,  # above all, not our run lock
            cwd="/",  # hold no directory of the run busy
            env=env,
        )
    finally:
        if not isinstance(log, int):
            log.close()
