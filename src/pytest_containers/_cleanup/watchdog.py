"""The watchdog: a small process that removes a pytest process's containers if it dies.

Started by :func:`pytest_containers._cleanup.sweep.start_watchdog`, in a session of its own so
that Ctrl-C in the terminal and a kill of pytest's process group do not reach it. It
blocks reading its stdin, a pipe whose only writer is the pytest process:

* a line ``done`` means the pytest process is ending normally and cleans up by itself
  (or keeps containers on purpose, ``--container-keep``): the watchdog exits at once;
* end of file without ``done`` means the pytest process is gone (SIGKILL, the OOM
  killer, a second Ctrl-C, a crash): the watchdog removes the containers, networks and
  volumes labelled with that process's run, worker and pid, and exits.

Runnable as ``python -m pytest_containers._cleanup.watchdog --run-id ID --worker gw0 --pid N
[--whole-run]``. ``start_watchdog`` runs this file by its path instead, so that the idle
process does not import the package (whose ``__init__`` imports pytest): at module level
this file imports only ``os``, ``signal`` and ``sys``, and docker-py is imported only after
end of file. The removal helpers live here for the same reason, and ``_cleanup`` reuses
them for its sweep.
"""

from __future__ import annotations

import os
import signal
import sys

# Not typing.TYPE_CHECKING: importing typing would grow the idle process (mypy knows
# the name).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence
    from typing import BinaryIO

    import docker

LABEL_PREFIX = "pytest-containers"
RUN_LABEL = f"{LABEL_PREFIX}.run"
WORKER_LABEL = f"{LABEL_PREFIX}.worker"
PID_LABEL = f"{LABEL_PREFIX}.pid"
HOST_LABEL = f"{LABEL_PREFIX}.host"
SCOPE_LABEL = f"{LABEL_PREFIX}.scope"
# Who made a resource, so that a sweep can prove its run dead (see _cleanup.judge_run):
# the boot, the pid namespace, and the container the pytest process ran in.
BOOT_LABEL = f"{LABEL_PREFIX}.boot"
PIDNS_LABEL = f"{LABEL_PREFIX}.pidns"
CONTAINER_LABEL = f"{LABEL_PREFIX}.in-container"

#: The line the parent writes before closing the pipe when it ends normally.
DONE = b"done"

#: Resource kinds, in the order they are removed (networks and volumes may be in use by
#: the containers until those are gone).
KINDS = ("container", "network", "volume")

_DEFAULT_DEADLINE = 120.0
_DEFAULT_REQUEST_TIMEOUT = 30.0
_REMOVAL_THREADS = 8


class Resource:
    """A labelled container, network or volume, as the engine listed it."""

    __slots__ = ("id", "kind", "labels", "name")

    def __init__(self, kind: str, id: str, name: str, labels: Mapping[str, str]) -> None:
        self.kind = kind
        self.id = id
        self.name = name
        self.labels = dict(labels)

    def __repr__(self) -> str:
        return f"Resource({self.kind!r}, {self.id[:12]!r}, {self.name!r})"


def list_labelled(client: docker.DockerClient, labels: Sequence[str]) -> list[Resource]:
    """Every container (running or not), network and volume that has all ``labels``
    (each ``key`` or ``key=value``): one list call per kind, no per-item inspection."""
    filters = {"label": list(labels)}
    found: list[Resource] = []
    for raw in client.api.containers(all=True, filters=filters):
        names = raw.get("Names") or []
        name = str(names[0]).lstrip("/") if names else str(raw["Id"])[:12]
        found.append(Resource("container", str(raw["Id"]), name, raw.get("Labels") or {}))
    for raw in client.api.networks(filters=filters) or []:
        found.append(
            Resource("network", str(raw["Id"]), str(raw.get("Name", "")), raw.get("Labels") or {})
        )
    import docker.errors

    try:
        volumes = client.api.volumes(filters=filters).get("Volumes") or []
    except docker.errors.APIError as error:
        # kubedock has no volumes API (501): nothing of ours can be there to remove.
        if error.status_code != 501:
            raise
        volumes = []
    for raw in volumes:
        name = str(raw["Name"])
        found.append(Resource("volume", name, name, raw.get("Labels") or {}))
    return found


def remove_resources(
    client: docker.DockerClient, resources: Iterable[Resource]
) -> tuple[list[Resource], list[str]]:
    """Remove ``resources``: containers first (killed if running, with their anonymous
    volumes), then networks, then volumes. Returns what was removed and one message per
    failure; a resource that is already gone, or being removed by someone else, counts
    as neither."""
    from concurrent.futures import ThreadPoolExecutor

    import docker.errors

    def remove(resource: Resource) -> str | None:
        """None when removed; "" when someone else got there first; else the error."""
        try:
            if resource.kind == "container":
                client.api.remove_container(resource.id, v=True, force=True)
            elif resource.kind == "network":
                client.api.remove_network(resource.id)
            else:
                client.api.remove_volume(resource.id)
        except docker.errors.NotFound:
            return ""
        except docker.errors.APIError as error:
            if error.status_code == 409 and "already in progress" in str(error.explanation):
                return ""
            return f"{resource.kind} {resource.name}: {error.explanation or error}"
        except Exception as error:  # a timeout or a broken connection: report, go on
            return f"{resource.kind} {resource.name}: {error}"
        return None

    pending = list(resources)
    removed: list[Resource] = []
    errors: list[str] = []
    for kind in KINDS:
        batch = [resource for resource in pending if resource.kind == kind]
        if not batch:
            continue
        if len(batch) == 1:
            outcomes = [remove(batch[0])]
        else:
            # Killing a container takes the engine a moment; do several at once.
            with ThreadPoolExecutor(min(_REMOVAL_THREADS, len(batch))) as pool:
                outcomes = list(pool.map(remove, batch))
        for resource, outcome in zip(batch, outcomes, strict=True):
            if outcome is None:
                removed.append(resource)
            elif outcome:
                errors.append(outcome)
    return removed, errors


def process_labels(*, run_id: str, worker: str, pid: int, whole_run: bool) -> list[str]:
    """The label filter for what one pytest process owns (the whole run's when
    ``whole_run``)."""
    if whole_run:
        return [f"{RUN_LABEL}={run_id}"]
    return [f"{RUN_LABEL}={run_id}", f"{WORKER_LABEL}={worker}", f"{PID_LABEL}={pid}"]


def clean_up_process(
    client: docker.DockerClient, *, run_id: str, worker: str, pid: int, whole_run: bool
) -> tuple[list[Resource], list[str]]:
    """Remove what a dead pytest process left: its own containers, networks and volumes,
    but not the run-scoped ones (the rest of the run may still use them) unless
    ``whole_run``. Returns what was removed and the errors."""
    found = list_labelled(
        client, process_labels(run_id=run_id, worker=worker, pid=pid, whole_run=whole_run)
    )
    if not whole_run:
        found = [resource for resource in found if resource.labels.get(SCOPE_LABEL) != "run"]
    return remove_resources(client, found)


def _log(message: str) -> None:
    import time

    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    try:
        sys.stderr.write(f"{stamp} pytest-containers watchdog[{os.getpid()}]: {message}\n")
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):
        pass  # no stderr (None, closed): the log is a nicety


def _usage(message: str) -> int:
    _log(
        f"{message}; usage: python -m pytest_containers._cleanup.watchdog --run-id ID "
        "--worker NAME --pid N [--whole-run] [--run-lock FILE] [--deadline SECONDS] "
        "[--request-timeout SECONDS] [--path DIR]"
    )
    return 2


_VALUE_FLAGS = (
    "--run-id",
    "--worker",
    "--pid",
    "--deadline",
    "--request-timeout",
    "--path",
    "--run-lock",
)


def _parse_arguments(args: list[str]) -> tuple[dict[str, str], bool]:
    """The flags' values by name without ``--``, and whether ``--whole-run`` was given.
    Raises :class:`ValueError` saying what is wrong."""
    # No argparse: it would double the idle process's imports.
    values: dict[str, str] = {}
    whole_run = False
    while args:
        flag = args.pop(0)
        if flag == "--whole-run":
            whole_run = True
        elif flag in _VALUE_FLAGS:
            if not args:
                raise ValueError(f"{flag} needs a value")
            values[flag[2:]] = args.pop(0)
        else:
            raise ValueError(f"unknown argument {flag!r}")
    if "run-id" not in values or "worker" not in values or "pid" not in values:
        raise ValueError("--run-id, --worker and --pid are required")
    return values, whole_run


def _parent_done(stdin: BinaryIO) -> bool:
    """Block until the parent says ``done`` (True) or is gone (False): end of file
    without ``done`` means the last writer of the pipe has died."""
    while True:
        line = stdin.readline()
        if not line:
            return False
        if line.strip() == DONE:
            return True


def main(argv: Sequence[str] | None = None) -> int:
    """Wait for the parent's ``done`` or its death; after a death, remove what it owned.

    Exit status: 0 after ``done`` or a complete cleanup, 1 when something could not be
    removed or the engine did not answer, 2 for bad arguments.
    """
    try:
        values, whole_run = _parse_arguments(list(sys.argv[1:] if argv is None else argv))
        pid = int(values["pid"])
        deadline = float(values.get("deadline", _DEFAULT_DEADLINE))
        request_timeout = float(values.get("request-timeout", _DEFAULT_REQUEST_TIMEOUT))
    except ValueError as error:
        return _usage(str(error))

    # The terminal's Ctrl-C and hang-up are meant for pytest, not for its watchdog.
    for number in (signal.SIGINT, signal.SIGHUP):
        signal.signal(number, signal.SIG_IGN)
    if _parent_done(sys.stdin.buffer):
        return 0

    # Never hang: whatever the engine does, the default SIGALRM action ends the process.
    signal.alarm(max(1, int(deadline)))
    if "path" in values and values["path"] not in sys.path:
        sys.path.append(values["path"])  # where the parent found docker-py
    return _clean_up(
        run_id=values["run-id"],
        worker=values["worker"],
        pid=pid,
        whole_run=whole_run,
        request_timeout=request_timeout,
        run_lock=values.get("run-lock"),
    )


def _run_held(path: str) -> bool:
    """Whether any process of the run still holds its shared lock (see hold_run)."""
    import fcntl

    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def _clean_up(
    *,
    run_id: str,
    worker: str,
    pid: int,
    whole_run: bool,
    request_timeout: float,
    run_lock: str | None = None,
) -> int:
    import time

    try:
        import docker

        client = docker.DockerClient.from_env(timeout=max(1, int(request_timeout)))
    except Exception as error:
        _log(f"run {run_id} worker {worker} pid {pid} died; no engine to clean up: {error}")
        return 1
    what = "the whole run" if whole_run else f"worker {worker} pid {pid}"
    failed = False
    try:
        # A create the parent sent just before dying may land after the first listing:
        # look again a little later, until a pass finds nothing.
        for attempt in range(4):
            if attempt:
                time.sleep(1.5)
            # When the whole run died (nobody holds its lock), the run-scoped containers
            # have no one left to remove them: this watchdog does.
            if not whole_run and run_lock and not _run_held(run_lock):
                whole_run = True
                what = "the whole run"
            try:
                removed, errors = clean_up_process(
                    client, run_id=run_id, worker=worker, pid=pid, whole_run=whole_run
                )
            except Exception as error:
                _log(f"cannot list the resources of run {run_id}: {error}")
                return 1
            for resource in removed:
                _log(f"run {run_id} ({what}) died: removed {resource.kind} {resource.name}")
            for message in errors:
                _log(f"run {run_id} ({what}): could not remove {message}")
            failed = failed or bool(errors)
            if attempt and not removed and not errors:
                break
    finally:
        client.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
