"""The sweep of dead runs as users meet it: kept containers spared whatever the cache dir,
the end of every run removing what its label still holds, the one line the sweep prints,
and a run in another pid namespace that must not be judged dead by its pid."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import pytest

from pytest_containers._base.locks import ensure_private_dir
from pytest_containers._cleanup.sweep import (
    HOST_LABEL,
    KEPT_SUFFIX,
    PID_LABEL,
    RUN_LABEL,
    SCOPE_LABEL,
    WORKER_LABEL,
    hold_run,
    local_identity,
)
from tests.conftest import SERIAL_AND_XDIST, InnerRuns
from tests.testenv import BUSYBOX, MIRROR_OPTION, REGISTRY, ROOT, run_containers

pytestmark = pytest.mark.docker

FAILS_WITH_A_CONTAINER = f"""
import pytest

@pytest.mark.container("{BUSYBOX}", command=["sleep", "300"])
def test_fails(container):
    assert False, "on purpose"
"""

USES_A_CONTAINER = f"""
import pytest

@pytest.mark.container("{BUSYBOX}", command=["sleep", "300"])
def test_uses(container):
    pass
"""


def gone_pid() -> int:
    """The pid of a process that has just ended."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


class Isolated:
    """pytest runs under a host name of their own (a UTS namespace, ``unshare --uts``):
    sweeps of other runs on this shared engine cannot prove them dead by pid, so nothing
    but these runs and the test decide what happens to their containers."""

    def __init__(self, pytester: pytest.Pytester, tmp_path: Path) -> None:
        self.pytester = pytester
        self.tmp_path = tmp_path
        self.hostname = f"pct-{uuid.uuid4().hex[:10]}"
        self.run_ids: list[str] = []

    def __call__(self, cache: str, *args: str) -> pytest.RunResult:
        self.run_ids.append(uuid.uuid4().hex)
        return self.pytester.run(
            "unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', self.hostname,
            sys.executable, "-m", "pytest", "-p", "no:cacheprovider", MIRROR_OPTION,
            f"--container-cache-dir={self.tmp_path / cache}",
            f"--testrunuid={self.run_ids[-1]}", *args,
            timeout=300,
        )  # fmt: skip

    def leftovers(self, client: docker.DockerClient) -> list[str]:
        return [name for run_id in self.run_ids for name in run_containers(client, run_id)]


@pytest.fixture
def isolated(
    pytester: pytest.Pytester, tmp_path: Path, docker_client: docker.DockerClient
) -> Iterator[Isolated]:
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("needs unshare(1) and root for a UTS namespace")
    runs = Isolated(pytester, tmp_path)
    yield runs
    for name in runs.leftovers(docker_client):
        with contextlib.suppress(docker.errors.NotFound):
            docker_client.containers.get(name).remove(force=True)


class DeadRuns:
    """Containers that dead runs left, each provably dead only to runs that use a given
    cache dir (their lock is there, and free): from anywhere else they look like runs of
    another host, so no other run on this shared engine removes them first."""

    def __init__(self, client: docker.DockerClient) -> None:
        self.client = client
        self.run_ids: list[str] = []
        self.image = str(client.images.pull(f"{REGISTRY}/library/busybox", tag="1.35").id)

    def leave(self, cache_dir: Path) -> tuple[str, str]:
        """A container of a new dead run; returns the run id and the container's name."""
        run_id = uuid.uuid4().hex
        self.run_ids.append(run_id)
        ensure_private_dir(cache_dir)
        hold_run(cache_dir, run_id).release()  # it ran with this cache dir, and ended
        labels = {
            RUN_LABEL: run_id,
            WORKER_LABEL: "main",
            PID_LABEL: str(gone_pid()),
            **local_identity().labels(),
            HOST_LABEL: f"pct-elsewhere-{uuid.uuid4().hex[:8]}",
            SCOPE_LABEL: "function",
        }
        name = f"pytest-containers-{run_id[:8]}-left-{uuid.uuid4().hex[:6]}"
        self.client.containers.create(self.image, ["sleep", "300"], labels=labels, name=name)
        return run_id, name

    def remaining(self) -> list[str]:
        return [name for run_id in self.run_ids for name in run_containers(self.client, run_id)]

    def finish(self) -> None:
        for name in self.remaining():
            with contextlib.suppress(docker.errors.NotFound):
                self.client.containers.get(name).remove(force=True)


@pytest.fixture
def dead_runs(docker_client: docker.DockerClient) -> Iterator[DeadRuns]:
    runs = DeadRuns(docker_client)
    yield runs
    runs.finish()


# -- kept containers ----------------------------------------------------------------


def test_a_kept_container_survives_later_runs_with_other_cache_dirs_until_prune(
    isolated: Isolated, pytester: pytest.Pytester, docker_client: docker.DockerClient,
    dead_runs: DeadRuns, tmp_path: Path,
) -> None:  # fmt: skip
    """The later runs share the kept run's host, boot and pid namespace: they could prove
    it dead by its pid, and only the mark on the engine spares its container."""
    pytester.makepyfile(test_keep=FAILS_WITH_A_CONTAINER)
    result = isolated("cache", "--container-keep=failed")
    result.assert_outcomes(failed=1)
    (kept,) = isolated.leftovers(docker_client)
    assert kept.endswith(KEPT_SUFFIX)
    result.stdout.fnmatch_lines([f"remove them with: docker rm -f {kept}"])

    (pytester.path / "test_keep.py").unlink()
    pytester.makepyfile(test_other=USES_A_CONTAINER)
    for number in range(3):
        # A dead run's leftover each time: proof that each later run did sweep.
        _, left = dead_runs.leave(tmp_path / f"other-cache-{number}")
        result = isolated(f"other-cache-{number}")
        result.assert_outcomes(passed=1)
        # At least ours: another run on the engine may have left a dead run too.
        result.stdout.fnmatch_lines(["containers: removed * of * dead run*"])
        assert left not in dead_runs.remaining()
        assert isolated.leftovers(docker_client) == [kept]

    result = isolated("prune-cache", "--container-prune")
    assert result.ret == 0
    result.stdout.fnmatch_lines(
        [f"*removed from dead run {isolated.run_ids[0]} (pid * is gone *)*{kept}*"]
    )
    assert isolated.leftovers(docker_client) == []


# -- the end of the run -------------------------------------------------------------

FAILING_TEARDOWN_CONFTEST = """
import docker.errors
import pytest
from pytest_containers._manager import releases as _releases

real = _releases.remove_container

def fail_once(container):
    # A removal the engine refused (seen: a 409 at the end of a run), once per process.
    _releases.remove_container = real
    raise docker.errors.APIError("removal refused by a test")

_releases.remove_container = fail_once
"""


@SERIAL_AND_XDIST
def test_the_end_of_the_run_removes_what_a_failed_teardown_left(
    run_suite: InnerRuns, pytester: pytest.Pytester, docker_client: docker.DockerClient,
    workers: list[str],
) -> None:  # fmt: skip
    pytester.makeconftest(FAILING_TEARDOWN_CONFTEST)
    pytester.makepyfile(
        f"""
        import pytest

        @pytest.mark.container("{BUSYBOX}", command=["sleep", "300"])
        @pytest.mark.parametrize("n", range(4))
        def test_uses(container, n):
            pass
        """
    )
    result = run_suite(*workers)
    outcomes = result.parseoutcomes()
    assert outcomes["passed"] == 4
    # Removals run in the background, off the tests' path: a failed one errors no test,
    # and the end of the process (or of the run) removes what it left.
    assert run_suite.leftovers(docker_client) == []


# -- what the sweep says ------------------------------------------------------------


@SERIAL_AND_XDIST
def test_the_sweep_says_in_one_line_what_it_removed_and_why(
    run_suite: InnerRuns, pytester: pytest.Pytester, dead_runs: DeadRuns, workers: list[str],
) -> None:  # fmt: skip
    pytester.makepyfile(USES_A_CONTAINER)
    first, _ = dead_runs.leave(run_suite.cache_dir)
    second, _ = dead_runs.leave(run_suite.cache_dir)
    result = run_suite(*workers)
    result.assert_outcomes(passed=1)
    lines = [line for line in result.outlines if "dead run" in line]
    assert len(lines) == 1, lines
    # At least our two: another run on the same engine (a second pytest run, a killed
    # one) may have left dead runs that this sweep rightly removes as well.
    counts = re.match(r"containers: removed (\d+) containers of (\d+) dead runs \(", lines[0])
    assert counts is not None, lines[0]
    assert int(counts.group(1)) >= 2, lines[0]
    assert int(counts.group(2)) >= 2, lines[0]
    because = f"nobody holds its lock in {run_suite.cache_dir}"
    assert f"{first[:12]}: {because}" in lines[0]
    assert f"{second[:12]}: {because}" in lines[0]
    assert dead_runs.remaining() == []

    third, third_name = dead_runs.leave(run_suite.cache_dir)
    result = run_suite("-v", *workers)
    # Under its own separator, so that it never reads as part of a failure's report.
    result.stdout.fnmatch_lines(
        ["-* containers: cleanup -*", "containers: removed * of * dead run* (*"],
        consecutive=True,
    )
    result.stdout.fnmatch_lines(
        [f"  removed from dead run {third} ({because}): 1 container ({third_name})"]
    )


def test_a_run_that_removes_nothing_says_nothing_of_the_sweep(
    run_suite: InnerRuns, pytester: pytest.Pytester
) -> None:
    pytester.makepyfile(USES_A_CONTAINER)
    # Other tests on this engine kill runs on purpose, and a run sweeps what any dead run
    # left: the first run may rightly report those. Once it has, a run soon after has
    # nothing left to remove, unless another run died meanwhile: a few tries.
    outputs = []
    for _ in range(3):
        result = run_suite()
        result.assert_outcomes(passed=1)
        outputs.append(result.stdout.str())
        if "dead run" not in outputs[-1]:
            break
    assert "dead run" not in outputs[-1], outputs


# -- liveness from evidence ---------------------------------------------------------

HOLDS_A_CONTAINER = f"""
import pathlib, time
import pytest

@pytest.mark.container("{BUSYBOX}", command=["sleep", "300"])
def test_holds(container):
    go = pathlib.Path({{go!r}})
    pathlib.Path({{ready!r}}).write_text(container.name)
    deadline = time.monotonic() + 120
    while not go.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert container.exec(["true"]).exit_code == 0
"""


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare(1)")
def test_a_run_in_another_pid_namespace_spares_a_live_host_runs_containers(
    pytester: pytest.Pytester, docker_client: docker.DockerClient, tmp_path: Path,
) -> None:  # fmt: skip
    """The bug: a run with the same host name but its own pid namespace (a container with
    --network host) could not see the host run's pid, judged it dead and removed its
    containers. Here the other run is pytest under ``unshare --pid --fork --mount-proc``
    with a cache dir of its own, so that no lock can tell it the host run is alive."""
    go, ready = tmp_path / "go", tmp_path / "ready"
    host_dir = tmp_path / "host"
    host_dir.mkdir()
    (host_dir / "test_host.py").write_text(HOLDS_A_CONTAINER.format(go=str(go), ready=str(ready)))
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    (other_dir / "test_other.py").write_text(USES_A_CONTAINER)
    host_run = uuid.uuid4().hex
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    pytest_cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", MIRROR_OPTION]
    host = subprocess.Popen(
        [*pytest_cmd, f"--container-cache-dir={tmp_path / 'host-cache'}",
         f"--testrunuid={host_run}", str(host_dir)],
        cwd=host_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert host.poll() is None, host.communicate()[0]
            assert time.monotonic() < deadline, "the host run did not start its container"
            time.sleep(0.1)
        held = ready.read_text()
        other = subprocess.run(
            ["unshare", "--pid", "--fork", "--mount-proc", *pytest_cmd,
             f"--container-cache-dir={tmp_path / 'other-cache'}", str(other_dir)],
            cwd=other_dir, env=env, capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        assert other.returncode == 0, other.stdout + other.stderr
        # Not judged dead (other tests' killed runs may rightly be reported: shared engine).
        assert host_run[:12] not in other.stdout
        assert held in run_containers(docker_client, host_run)
        go.touch()
        output, _ = host.communicate(timeout=120)
        assert host.returncode == 0, output
    finally:
        go.touch()
        if host.poll() is None:
            host.kill()
            host.wait()
        for name in run_containers(docker_client, host_run):
            with contextlib.suppress(docker.errors.NotFound):
                docker_client.containers.get(name).remove(force=True)
