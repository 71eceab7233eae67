"""Nothing left behind, even when pytest dies: run liveness locks, the watchdog and the
sweep of dead runs, against the real engine and with real processes killed by SIGKILL.

Every test labels what it makes with a run id of its own and a made-up host name, so
that neither the sweeps here nor the finalizers touch anything another run made.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import docker
import docker.errors
import pytest

from pytest_containers._cleanup.sweep import (
    BOOT_LABEL,
    CONTAINER_LABEL,
    HOST_LABEL,
    PID_LABEL,
    PIDNS_LABEL,
    RUN_LABEL,
    SCOPE_LABEL,
    WORKER_LABEL,
    Watchdog,
    hold_run,
    judge_run,
    local_identity,
    prune_run_locks,
    run_is_alive,
    run_lock_path,
    start_watchdog,
    sweep_dead_runs,
)
from pytest_containers._cleanup.watchdog import Resource
from pytest_containers._manager import manager as _manager
from tests.testenv import DOCKER_PY_POOL, REGISTRY, ROOT, open_descriptors

pytestmark = pytest.mark.docker

BUSYBOX = f"{REGISTRY}/library/busybox:1.35"
WATCHDOG_MODULE = (sys.executable, "-m", "pytest_containers._cleanup.watchdog")
GONE_WITHIN = 10.0  # seconds from SIGKILL to no container left

# A pytest process stand-in: starts its watchdog, then its containers, says "ready" and
# waits to be killed.
CONTAINER_OWNER = """
import os, sys, time
import docker
from pytest_containers._cleanup.sweep import start_watchdog

run_id, worker, host, image, whole_run, *scopes = sys.argv[1:]
watchdog = start_watchdog(run_id=run_id, worker=worker, pid=os.getpid(), whole_run=whole_run == "1")
client = docker.from_env(timeout=60)
for scope in scopes:
    labels = {
        "pytest-containers.run": run_id,
        "pytest-containers.worker": worker,
        "pytest-containers.pid": str(os.getpid()),
        "pytest-containers.host": host,
        "pytest-containers.scope": scope,
    }
    client.containers.create(image, ["sleep", "300"], labels=labels).start()
print("ready", watchdog.pid, flush=True)
time.sleep(600)
"""

RUN_HOLDER = """
import sys, time
from pathlib import Path
from pytest_containers._cleanup.sweep import hold_run

hold = hold_run(Path(sys.argv[1]), sys.argv[2])
print("ready", flush=True)
time.sleep(600)
"""


# -- helpers and fixtures ----------------------------------------------------------


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.1) -> float:
    """Poll ``condition`` until it holds; returns the seconds it took, fails on timeout."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            pytest.fail(f"not so within {timeout} s")
        time.sleep(interval)
    return time.monotonic() - start


def labelled(client: docker.DockerClient, *labels: str) -> list[dict[str, Any]]:
    """Containers (running or not) that carry every one of ``labels``."""
    found: list[dict[str, Any]] = client.api.containers(all=True, filters={"label": list(labels)})
    return found


def scopes_of(client: docker.DockerClient, run_id: str) -> list[str]:
    return sorted(c["Labels"][SCOPE_LABEL] for c in labelled(client, f"{RUN_LABEL}={run_id}"))


def remove_labelled(client: docker.DockerClient, run_id: str) -> None:
    """Remove everything labelled with ``run_id``, whatever state it is in."""
    filters = {"label": f"{RUN_LABEL}={run_id}"}
    for raw in client.api.containers(all=True, filters=filters):
        with contextlib.suppress(docker.errors.NotFound):
            client.api.remove_container(raw["Id"], v=True, force=True)
    for raw in client.api.networks(filters=filters):
        with contextlib.suppress(docker.errors.NotFound):
            client.api.remove_network(raw["Id"])
    for raw in client.api.volumes(filters=filters).get("Volumes") or []:
        with contextlib.suppress(docker.errors.NotFound):
            client.api.remove_volume(raw["Name"], force=True)


class Made:
    """What a test makes: run ids (and all labelled with them), processes, watchdogs."""

    def __init__(self, client: docker.DockerClient, image: str) -> None:
        self.client = client
        self.image = image
        self.host = f"pct-test-host-{uuid.uuid4().hex[:8]}"
        # This process, as seen from a made-up host: what a sweep here calls "me".
        self.me = dataclasses.replace(local_identity(), host=self.host)
        self.run_ids: list[str] = []
        self.processes: list[subprocess.Popen[str]] = []
        self.watchdogs: list[Watchdog] = []

    def run_id(self) -> str:
        run_id = f"pct-cleanup-{uuid.uuid4().hex}"
        self.run_ids.append(run_id)
        return run_id

    def labels(
        self,
        run_id: str,
        *,
        worker: str = "gw0",
        pid: int | None = None,
        scope: str = "function",
        host: str | None = None,
        **identity: str,
    ) -> dict[str, str]:
        """Labels as a process of this identity (``self.me``) would put them; ``host``
        and ``identity`` (``boot``, ``pidns``, ``container``) override parts of it."""
        me = dataclasses.replace(self.me, host=self.host if host is None else host, **identity)
        return {
            RUN_LABEL: run_id,
            WORKER_LABEL: worker,
            PID_LABEL: str(os.getpid() if pid is None else pid),
            **me.labels(),
            SCOPE_LABEL: scope,
        }

    def container(self, labels: dict[str, str]) -> str:
        """A running busybox container with ``labels``; returns its id."""
        # create + start, never containers.run: that would pull behind our back.
        made = self.client.containers.create(self.image, ["sleep", "300"], labels=labels)
        made.start()
        return str(made.id)

    def python(self, code: str, *args: object, new_session: bool = False) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [sys.executable, "-c", code, *map(str, args)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            start_new_session=new_session,
        )
        self.processes.append(process)
        return process

    def watchdog(self, run_id: str, **options: Any) -> Watchdog:
        options.setdefault("worker", "gw0")
        options.setdefault("pid", os.getpid())
        options.setdefault("whole_run", False)
        watchdog = start_watchdog(run_id=run_id, **options)
        self.watchdogs.append(watchdog)
        return watchdog

    def finish(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=30)
            if process.stdout is not None:
                process.stdout.close()
        for watchdog in self.watchdogs:
            watchdog.close()
            if watchdog.process.poll() is None:
                watchdog.process.kill()
                watchdog.process.wait(timeout=30)
        for run_id in self.run_ids:
            remove_labelled(self.client, run_id)


def read_ready(process: subprocess.Popen[str], timeout: float = 60.0) -> list[str]:
    """Wait for the child's "ready" line; returns its words."""
    assert process.stdout is not None
    readable, _, _ = select.select([process.stdout], [], [], timeout)
    assert readable, f"no 'ready' from the child within {timeout} s"
    words = process.stdout.readline().split()
    assert words[:1] == ["ready"], f"the child said {words!r} (exit status {process.poll()})"
    return words


@pytest.fixture(scope="session")
def busybox(docker_client: docker.DockerClient) -> str:
    """The local registry's busybox, pulled once (the tests only create containers)."""
    repository, _, tag = BUSYBOX.rpartition(":")
    docker_client.images.pull(repository, tag=tag)
    return BUSYBOX


@pytest.fixture
def made(docker_client: docker.DockerClient, busybox: str) -> Iterator[Made]:
    tracker = Made(docker_client, busybox)
    try:
        yield tracker
    finally:
        tracker.finish()


# -- labels ------------------------------------------------------------------------


def test_the_labels_are_those_the_manager_puts_on_containers() -> None:
    me = local_identity("c0ffee")
    guard = SimpleNamespace(identity=me)
    fake = cast(_manager.ContainerManager, SimpleNamespace(run_id="r", worker="gw3", guard=guard))
    labels = _manager.ContainerManager.labels(fake, "module")
    assert labels == {
        RUN_LABEL: "r",
        WORKER_LABEL: "gw3",
        PID_LABEL: str(os.getpid()),
        HOST_LABEL: socket.gethostname(),
        BOOT_LABEL: Path("/proc/sys/kernel/random/boot_id").read_text().strip(),
        PIDNS_LABEL: f"{os.stat('/proc/self/ns/pid').st_dev}:{os.stat('/proc/self/ns/pid').st_ino}",
        CONTAINER_LABEL: "c0ffee",
        SCOPE_LABEL: "module",
    }


# -- run liveness ------------------------------------------------------------------


def test_a_run_is_alive_while_a_process_holds_it_and_dead_after_sigkill(
    made: Made, tmp_path: Path
) -> None:
    run_id = made.run_id()
    assert not run_is_alive(tmp_path, run_id)  # no lock file at all
    holder = made.python(RUN_HOLDER, tmp_path, run_id)
    read_ready(holder)
    assert run_is_alive(tmp_path, run_id)
    assert run_is_alive(tmp_path, run_id)  # asking does not change the answer
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    assert not run_is_alive(tmp_path, run_id)
    assert run_lock_path(tmp_path, run_id).exists()  # the lock file stays


def test_a_run_held_by_two_processes_is_alive_until_both_are_gone(
    made: Made, tmp_path: Path
) -> None:
    run_id = made.run_id()
    first = made.python(RUN_HOLDER, tmp_path, run_id)
    second = made.python(RUN_HOLDER, tmp_path, run_id)
    read_ready(first)
    read_ready(second)
    assert run_is_alive(tmp_path, run_id)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    assert run_is_alive(tmp_path, run_id)
    second.send_signal(signal.SIGKILL)
    second.wait(timeout=30)
    assert not run_is_alive(tmp_path, run_id)


def test_a_run_held_in_this_process_is_alive_until_released(tmp_path: Path) -> None:
    run_id = f"pct-cleanup-{uuid.uuid4().hex}"
    with hold_run(tmp_path, run_id) as hold:
        assert hold.held
        assert run_is_alive(tmp_path, run_id)
        second = hold_run(tmp_path, run_id)  # a second hold in the same process is fine
        second.release()
        assert run_is_alive(tmp_path, run_id)
    assert not hold.held
    assert not run_is_alive(tmp_path, run_id)
    hold.release()  # idempotent
    assert run_lock_path(tmp_path, run_id) == tmp_path / "runs" / f"{run_id}.lock"


def test_a_run_id_that_is_no_plain_file_name_stays_in_the_runs_directory(tmp_path: Path) -> None:
    path = run_lock_path(tmp_path, "../../etc/x y")
    assert path.parent == tmp_path / "runs"
    with hold_run(tmp_path, "../../etc/x y"):
        assert run_is_alive(tmp_path, "../../etc/x y")


def test_only_old_unheld_run_locks_are_pruned(tmp_path: Path) -> None:
    old, held, recent = (f"pct-cleanup-{uuid.uuid4().hex}" for _ in range(3))
    hold_run(tmp_path, old).release()
    hold_run(tmp_path, recent).release()
    holding = hold_run(tmp_path, held)
    long_ago = time.time() - 3 * 86400
    for run_id in (old, held):
        os.utime(run_lock_path(tmp_path, run_id), (long_ago, long_ago))
    try:
        assert prune_run_locks(tmp_path, older_than=86400) == 1
        assert not run_lock_path(tmp_path, old).exists()
        assert run_lock_path(tmp_path, held).exists()
        assert run_lock_path(tmp_path, recent).exists()
        assert run_is_alive(tmp_path, held)
        with hold_run(tmp_path, old):  # a pruned run's lock is simply made again
            assert run_is_alive(tmp_path, old)
    finally:
        holding.release()


# -- the watchdog ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("whole_run", "kill_group", "left"),
    [
        pytest.param(True, True, [], id="whole-run-group-killed"),
        pytest.param(False, False, ["run"], id="worker-killed"),
    ],
)
def test_sigkill_of_the_owner_leaves_no_container_behind(
    made: Made, whole_run: bool, kill_group: bool, left: list[str]
) -> None:
    run_id = made.run_id()
    owner = made.python(
        CONTAINER_OWNER,
        run_id,
        "gw0",
        made.host,
        made.image,
        "1" if whole_run else "0",
        "function",
        "session",
        "run",
        new_session=True,
    )
    watchdog_pid = int(read_ready(owner)[1])
    assert scopes_of(made.client, run_id) == ["function", "run", "session"]

    if kill_group:  # its process group, as a CI timeout or `kill -9 -PGID` would
        os.killpg(owner.pid, signal.SIGKILL)
    else:
        owner.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    owner.wait(timeout=30)
    took = wait_until(lambda: scopes_of(made.client, run_id) == left, GONE_WITHIN)
    print(f"\nSIGKILL -> containers gone: {time.monotonic() - killed:.2f} s (poll {took:.2f} s)")
    # The watchdog exits by itself once it is done.
    wait_until(lambda: not Path(f"/proc/{watchdog_pid}").exists(), 30)


def test_the_watchdog_of_a_worker_spares_the_run_and_the_other_processes(made: Made) -> None:
    run_id = made.run_id()
    mine = made.labels(run_id)
    made.container(mine)
    made.container(made.labels(run_id, scope="run"))
    made.container(made.labels(run_id, worker="gw1", pid=1))  # another worker
    made.container(made.labels(run_id, pid=1))  # an earlier gw0 that xdist replaced
    network = made.client.networks.create(f"pct-cleanup-{uuid.uuid4().hex[:12]}", labels=mine)
    volume = made.client.volumes.create(f"pct-cleanup-{uuid.uuid4().hex[:12]}", labels=mine)

    watchdog = made.watchdog(run_id, worker="gw0", pid=os.getpid(), whole_run=False)
    watchdog.close(clean_up=True, timeout=60)  # as if this process had died

    assert watchdog.process.returncode == 0
    left = {
        (c["Labels"][WORKER_LABEL], c["Labels"][PID_LABEL], c["Labels"][SCOPE_LABEL])
        for c in labelled(made.client, f"{RUN_LABEL}={run_id}")
    }
    assert left == {
        ("gw0", str(os.getpid()), "run"),
        ("gw1", "1", "function"),
        ("gw0", "1", "function"),
    }
    with pytest.raises(docker.errors.NotFound):
        made.client.networks.get(str(network.id))
    with pytest.raises(docker.errors.NotFound):
        made.client.volumes.get(str(volume.id))


def test_the_watchdog_of_a_whole_run_removes_everything_of_the_run(made: Made) -> None:
    run_id, other_run = made.run_id(), made.run_id()
    made.container(made.labels(run_id))
    made.container(made.labels(run_id, scope="run"))
    made.container(made.labels(run_id, worker="gw1", pid=1))
    made.container(made.labels(other_run))

    watchdog = made.watchdog(run_id, worker="main", whole_run=True)
    watchdog.close(clean_up=True, timeout=60)

    assert watchdog.process.returncode == 0
    assert scopes_of(made.client, run_id) == []
    assert scopes_of(made.client, other_run) == ["function"]


def test_done_makes_the_watchdog_exit_at_once_and_remove_nothing(made: Made) -> None:
    run_id = made.run_id()
    made.container(made.labels(run_id))
    made.container(made.labels(run_id, scope="run"))
    watchdog = made.watchdog(run_id, whole_run=True)
    # Its own session: Ctrl-C and signals to our process group do not reach it.
    assert os.getsid(watchdog.pid) == watchdog.pid != os.getsid(0)

    started = time.monotonic()
    watchdog.close()
    assert watchdog.process.returncode == 0
    assert time.monotonic() - started < 3
    time.sleep(0.5)
    assert scopes_of(made.client, run_id) == ["function", "run"]
    watchdog.close()  # idempotent


def test_the_watchdog_does_not_hang_without_an_engine(
    made: Made, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    log = tmp_path / "watchdog.log"
    watchdog = made.watchdog(made.run_id(), log_file=log)
    started = time.monotonic()
    watchdog.close(clean_up=True, timeout=60)
    assert watchdog.process.returncode == 1
    assert time.monotonic() - started < 30
    assert "no engine to clean up" in log.read_text()


def test_the_idle_watchdog_imports_neither_docker_nor_pytest() -> None:
    from pytest_containers._cleanup import watchdog as _watchdog

    code = (
        "import sys; f = open(sys.argv[1], 'rb'); "
        "exec(compile(f.read(), sys.argv[1], 'exec'), {'__name__': 'not_main'}); "
        "print(sorted(m for m in ('docker', 'pytest', 'pytest_containers', 'typing') "
        "if m in sys.modules))"
    )
    # Without coverage's start-up in the child (under --cov), which imports typing itself.
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE_")}
    out = subprocess.run(
        [sys.executable, "-c", code, _watchdog.__file__],
        capture_output=True,
        text=True,
        check=True,
        cwd="/",
        env=env,
    )
    assert out.stdout.strip() == "[]"


def test_the_watchdog_runs_as_a_module() -> None:
    done = subprocess.run(
        [*WATCHDOG_MODULE, "--run-id", "r", "--worker", "main", "--pid", "1"],
        input=b"done\n",
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    bad = subprocess.run(
        [*WATCHDOG_MODULE, "--bogus"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=60,
    )
    assert bad.returncode == 2
    assert b"usage" in bad.stderr


def test_fifty_containers_with_a_watchdog_leak_no_descriptor_or_thread(made: Made) -> None:
    run_id = made.run_id()
    labels = made.labels(run_id)
    made.client.api.remove_container(made.container(labels), v=True, force=True)
    sockets_before, fds_before = open_descriptors()
    threads_before = threading.active_count()

    def no_leak(extra_fds: int) -> None:
        sockets, fds = open_descriptors()
        assert fds <= fds_before + extra_fds
        # The client's pool may fill up; a socket per container would not fit.
        assert sockets <= sockets_before + DOCKER_PY_POOL
        assert threading.active_count() <= threads_before + 1

    watchdog = made.watchdog(run_id)
    for _ in range(50):
        made.client.api.remove_container(made.container(labels), v=True, force=True)
    assert labelled(made.client, f"{RUN_LABEL}={run_id}") == []
    no_leak(3)  # + the watchdog's pipe
    assert watchdog.process.poll() is None

    watchdog.close()
    assert watchdog.process.returncode == 0
    no_leak(2)


# -- sweeping ----------------------------------------------------------------------


def test_a_sweep_removes_only_the_dead_runs_of_this_host(made: Made, tmp_path: Path) -> None:
    dead, unlocked, live, pid_alive, foreign, own = (made.run_id() for _ in range(6))
    gone_pid = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    hold_run(tmp_path, dead).release()  # ran, and ended
    hold_run(tmp_path, own).release()
    holder = made.python(RUN_HOLDER, tmp_path, live)
    read_ready(holder)

    made.container(made.labels(dead))
    made.container(made.labels(dead, worker="gw1", scope="run"))
    network = made.client.networks.create(
        f"pct-cleanup-{uuid.uuid4().hex[:12]}", labels=made.labels(dead)
    )
    volume = made.client.volumes.create(
        f"pct-cleanup-{uuid.uuid4().hex[:12]}", labels=made.labels(dead)
    )
    made.container(made.labels(unlocked, pid=int(gone_pid)))  # no lock file, no process
    made.container(made.labels(live, pid=1))
    made.container(made.labels(pid_alive))  # no lock file here, but its process is running
    # Another host, no lock file here: its pid says nothing about it.
    made.container(made.labels(foreign, host="pct-test-some-other-host", pid=int(gone_pid)))
    made.container(made.labels(own))

    started = time.monotonic()
    result = sweep_dead_runs(made.client, tmp_path, own_run_id=own, me=made.me)
    took = time.monotonic() - started

    # The sweep judges every run on the engine: another pytest run on the same engine
    # (CI's, a developer's) may have dead runs of its own, removed too. Judge ours.
    ours = [run for run in result.removed if run.run_id in made.run_ids]
    assert {run.run_id for run in ours} == {dead, unlocked}
    (dead_removed,) = (run for run in ours if run.run_id == dead)
    assert len(dead_removed.containers) == 2
    assert dead_removed.networks == (network.name,)
    assert dead_removed.volumes == (volume.name,)
    assert sum(len(run.containers) for run in ours) == 3
    mine = {name for run in ours for name in (*run.containers, *run.networks, *run.volumes)}
    assert [error for error in result.errors if any(name in error for name in mine)] == []
    assert live in result.alive
    assert pid_alive in result.alive
    assert foreign in result.unproven
    assert own not in result.alive + result.unproven
    assert any(dead in line for line in result.describe())
    reasons = {run.run_id: run.reason for run in result.removed}
    assert reasons[dead] == f"nobody holds its lock in {tmp_path}"
    assert reasons[unlocked] == f"pid {gone_pid} is gone (same boot and pid namespace)"

    for run_id in (dead, unlocked):
        assert scopes_of(made.client, run_id) == []
    for run_id in (live, pid_alive, foreign, own):
        assert scopes_of(made.client, run_id) == ["function"]
    with pytest.raises(docker.errors.NotFound):
        made.client.networks.get(str(network.id))
    with pytest.raises(docker.errors.NotFound):
        made.client.volumes.get(str(volume.id))
    print(f"\nsweep: {took:.2f} s")
    assert took < 30


def test_a_run_is_dead_only_on_evidence(made: Made, tmp_path: Path) -> None:
    """No lock file here for any of these runs: only the engine and the pid can tell.
    Judged, not swept: any run on this shared engine may sweep what is provably dead."""
    gone_pid = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    removed = made.client.containers.create(made.image, ["true"])
    removed.remove()
    exited = made.client.containers.create(made.image, ["true"])
    exited.start()
    exited.wait()
    running = made.client.containers.create(made.image, ["sleep", "300"])
    running.start()
    try:
        pid = int(gone_pid)
        cases = {
            "pid gone here": (made.labels("r", pid=pid), "pid"),
            "its container removed": (
                made.labels("r", pid=pid, host="ci-job", container=str(removed.id)),
                "gone from the engine",
            ),
            "its container exited": (
                made.labels("r", pid=pid, host="ci-job", container=str(exited.id)),
                "has exited",
            ),
            "its container runs": (
                made.labels("r", pid=pid, host="ci-job", container=str(running.id)),
                None,
            ),
            "another pid namespace": (made.labels("r", pid=pid, pidns="4:1"), None),
            "another boot": (made.labels("r", pid=pid, boot="other-boot"), None),
            "another host": (made.labels("r", pid=pid, host="elsewhere"), None),
            "no identity labels": ({RUN_LABEL: "r", PID_LABEL: gone_pid}, None),
            "pid alive": (made.labels("r"), None),
        }
        for name, (labels, expected) in cases.items():
            resources = [Resource("container", "id", "name", labels)]
            reason = judge_run(made.client, tmp_path, "r", resources, made.me)
            if expected is None:
                assert reason is None, name
            else:
                assert reason is not None, name
                assert expected in reason, (name, reason)
        # A run is dead only when every process that made something of it is.
        both = [
            Resource("container", "1", "a", cases["pid gone here"][0]),
            Resource("container", "2", "b", cases["pid alive"][0]),
        ]
        assert judge_run(made.client, tmp_path, "r", both, made.me) is None
    finally:
        exited.remove(force=True)
        running.remove(force=True)
