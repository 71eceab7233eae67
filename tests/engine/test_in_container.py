"""pytest run inside a container, as CI jobs run it: the host's Python and this checkout
bind-mounted read-only into a Debian seed image, the engine's socket mounted in. What such
a run leaves, and what it spares, is judged by evidence, never by a pid it cannot see."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import pytest

from tests.testenv import BUSYBOX, MIRROR_OPTION, REDIS, REGISTRY, ROOT, run_containers

pytestmark = pytest.mark.docker

#: Labels the test's own "CI job" containers, so that the finalizer finds them.
JOB_LABEL = "pct-test.ci-job"

WAITS_WITH_CONTAINERS = f"""
import pathlib, time
import pytest

HERE = pathlib.Path(__file__).parent

@pytest.mark.container("{BUSYBOX}", command=["sleep", "300"], name="a")
@pytest.mark.container("{BUSYBOX}", command=["sleep", "300"], name="b")
@pytest.mark.container("{BUSYBOX}", command=["sleep", "300"], name="c")
def test_waits(containers):
    (HERE / "ready").write_text(" ".join(c.name for c in containers.values()))
    deadline = time.monotonic() + 120
    while not (HERE / "go").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
"""

USES_A_CONTAINER = f"""
import pytest

@pytest.mark.container("{BUSYBOX}", command=["sleep", "300"])
def test_uses(container):
    assert container.exec(["true"]).exit_code == 0
"""


class Jobs:
    """pytest in containers ("CI jobs") on the shared engine, removed afterwards with
    whatever their runs left."""

    def __init__(self, client: docker.DockerClient) -> None:
        self.client = client
        self.python = os.path.realpath(sys.executable)
        self.pyenv = Path(self.python).parents[3]  # /root/.pyenv/versions/X/bin/python
        self.run_ids: list[str] = []
        self.image = f"{REGISTRY}/library/{REDIS}"  # a Debian, like the host
        repository, _, tag = self.image.rpartition(":")
        client.images.pull(repository, tag=tag)

    def start(self, directory: Path, *, network_host: bool, name: str) -> str:
        """pytest on ``directory`` in a new container (its own pid namespace, a cache dir
        the host cannot see); returns the container's id."""
        self.run_ids.append(uuid.uuid4().hex)
        container = self.client.containers.run(
            self.image,
            [str(ROOT / ".venv/bin/python"), "-m", "pytest", "-p", "no:cacheprovider",
             MIRROR_OPTION, "--container-cache-dir=/tmp/cache",
             f"--testrunuid={self.run_ids[-1]}", "-q", str(directory)],
            name=name,
            detach=True,
            labels={JOB_LABEL: "1"},
            network_mode="host" if network_host else "bridge",
            working_dir=str(directory),
            environment={"HOME": "/tmp", "PYTHONDONTWRITEBYTECODE": "1"},
            volumes={
                str(self.pyenv): {"bind": str(self.pyenv), "mode": "ro"},
                str(ROOT): {"bind": str(ROOT), "mode": "ro"},
                str(directory): {"bind": str(directory), "mode": "rw"},
                "/var/run/docker.sock": {"bind": "/var/run/docker.sock", "mode": "rw"},
            },
        )  # fmt: skip
        return str(container.id)

    def finish(self) -> None:
        for raw in self.client.api.containers(all=True, filters={"label": JOB_LABEL}):
            with contextlib.suppress(docker.errors.APIError):  # 404, 409: someone was first
                self.client.api.remove_container(raw["Id"], force=True)
        for run_id in self.run_ids:
            for name in run_containers(self.client, run_id):
                with contextlib.suppress(docker.errors.APIError):
                    self.client.containers.get(name).remove(force=True)


@pytest.fixture
def jobs(docker_client: docker.DockerClient) -> Iterator[Jobs]:
    runner = Jobs(docker_client)
    yield runner
    runner.finish()


def wait_for(path: Path, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{what}: no {path.name} within {timeout} s"
        time.sleep(0.1)


def test_a_run_in_a_container_with_the_host_network_spares_a_live_host_run(
    jobs: Jobs, docker_client: docker.DockerClient, tmp_path: Path,
) -> None:  # fmt: skip
    """The container shares the host's name (``--network host``) but not its pids: the
    host run's pid is invisible from there, which once read as "dead"."""
    host_dir, job_dir = tmp_path / "host", tmp_path / "job"
    host_dir.mkdir()
    job_dir.mkdir()
    (host_dir / "test_host.py").write_text(WAITS_WITH_CONTAINERS)
    (job_dir / "test_job.py").write_text(USES_A_CONTAINER)
    host_run = uuid.uuid4().hex
    jobs.run_ids.append(host_run)
    host = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", MIRROR_OPTION,
         f"--container-cache-dir={tmp_path / 'host-cache'}", f"--testrunuid={host_run}",
         "-q", str(host_dir)],
        cwd=host_dir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        wait_for(host_dir / "ready", "the host run")
        held = (host_dir / "ready").read_text().split()
        job = jobs.start(job_dir, network_host=True, name=f"pct-ci-job-{uuid.uuid4().hex[:8]}")
        status = docker_client.api.wait(job, timeout=180)
        logs = docker_client.api.logs(job).decode()
        assert status["StatusCode"] == 0, logs
        assert "1 passed" in logs, logs
        assert host_run[:12] not in logs, logs  # other runs' leftovers may be swept
        assert sorted(run_containers(docker_client, host_run)) == sorted(held)
        (host_dir / "go").touch()
        output, _ = host.communicate(timeout=120)
        assert host.returncode == 0, output
    finally:
        (host_dir / "go").touch()
        if host.poll() is None:
            host.kill()
            host.wait()


def test_the_leftovers_of_a_killed_ci_job_container_are_swept_by_the_next_run(
    jobs: Jobs, docker_client: docker.DockerClient, tmp_path: Path,
    pytester: pytest.Pytester,
) -> None:  # fmt: skip
    """``docker kill`` of the container that runs pytest kills its watchdog too, and its
    service containers were once left forever: another host name, a pid no one can see.
    The engine knows the job's container is gone: that is the proof."""
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    (job_dir / "test_job.py").write_text(WAITS_WITH_CONTAINERS)
    job = jobs.start(job_dir, network_host=False, name=f"pct-ci-job-{uuid.uuid4().hex[:8]}")
    wait_for(job_dir / "ready", "the CI job")
    services = sorted((job_dir / "ready").read_text().split())
    assert sorted(run_containers(docker_client, jobs.run_ids[-1])) == services
    labels = docker_client.api.inspect_container(services[0])["Config"]["Labels"]
    assert labels.get("pytest-containers.in-container") == job
    docker_client.api.kill(job)

    pytester.makepyfile(USES_A_CONTAINER)
    result = pytester.runpytest_subprocess(
        MIRROR_OPTION, f"--container-cache-dir={tmp_path / 'host-cache'}", "-p", "no:cacheprovider"
    )
    result.assert_outcomes(passed=1)
    said = f"{jobs.run_ids[-1][:12]}: the container {job[:12]} it ran in has exited"
    # Any run on this engine may sweep them first (the suite's other xdist worker runs
    # suites too): then this run says nothing, but nothing may be left either way. It may
    # also sweep another run's dead run at the same time, in the same line.
    swept_here = any(
        line.startswith("containers: removed ") and said in line for line in result.outlines
    )
    if not swept_here:
        result.stdout.no_fnmatch_line(f"*{jobs.run_ids[-1][:12]}*")
    assert run_containers(docker_client, jobs.run_ids[-1]) == []
