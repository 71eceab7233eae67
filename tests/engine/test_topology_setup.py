"""The plugin as users run it on other engine topologies: a "remote" tcp engine, a docker
context, ssh (with a wrong host key too), podman, and the doctor on each. The topologies
come from scripts/topology.sh, which sets each one up on loopback (see the README)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import docker
import pytest

from tests.conftest import SERIAL_AND_XDIST, InnerRuns
from tests.testenv import ROOT, SETTINGS

pytestmark = pytest.mark.docker

Topology = Callable[[str], dict[str, str]]

SUITE = """
    import socket

    import pytest
    from pytest_containers import wait

    def test_plain():
        assert True

    @pytest.mark.container(
        "busybox",
        ports=[7000],
        command=["sh", "-c", "echo up; while true; do echo hello | nc -l -p 7000; done"],
        wait=wait.for_log("up"),
    )
    def test_reaches_a_published_port(container):
        host, port = container.address(7000)
        for _ in range(40):
            with socket.create_connection((host, port), timeout=5) as connection:
                if connection.recv(16) == b"hello\\n":
                    return
        raise AssertionError(f"no greeting from {host}:{port}")
"""


@pytest.fixture
def topology(monkeypatch: pytest.MonkeyPatch) -> Topology:
    """Sets up a topology with scripts/topology.sh and puts its environment in place."""

    def use(name: str) -> dict[str, str]:
        script = f'eval "$({ROOT}/scripts/topology.sh {name})" && env -0'
        found = subprocess.run(
            ["bash", "-c", script], capture_output=True, timeout=900, check=False
        )
        if found.returncode != 0:
            pytest.fail(f"scripts/topology.sh {name} failed:\n{found.stderr.decode()[-2000:]}")
        environ = dict(
            entry.split("=", 1) for entry in found.stdout.decode().split("\0") if "=" in entry
        )
        for key in ("DOCKER_HOST", "DOCKER_CONTEXT", "DOCKER_CONFIG", "DOCKER_TLS_VERIFY"):
            monkeypatch.delenv(key, raising=False)
        for key, value in environ.items():
            monkeypatch.setenv(key, value)
        return environ

    return use


@pytest.mark.parametrize(
    ("name", "header", "dialled"),
    [
        ("tcp-remote", "(DOCKER_HOST)", SETTINGS.get("TESTENV_REMOTE_ADDRESS", "127.0.0.2")),
        # The contexts lead to the tcp endpoint on 127.0.0.1: a local engine.
        ("context-env", "DOCKER_CONTEXT)", "127.0.0.1"),
        ("context-use", "currentContext in", "127.0.0.1"),
        ("ssh", "ssh://", "127.0.0.1"),
    ],
)
@SERIAL_AND_XDIST
def test_tests_reach_containers_on_each_topology(
    topology: Topology,
    run_suite: InnerRuns,
    docker_client: docker.DockerClient,
    name: str,
    header: str,
    dialled: str,
    workers: list[str],
) -> None:
    environ = topology(name)
    run_suite.pytester.makepyfile(SUITE)
    result = run_suite(*workers)
    result.assert_outcomes(passed=2)
    engine_line = next(line for line in result.outlines if line.startswith("containers: "))
    assert header in engine_line
    if name == "tcp-remote":
        assert f"at {environ['DOCKER_HOST']} (DOCKER_HOST)" in engine_line
    result.stdout.fnmatch_lines([f"containers: tests dial {dialled} (*"])
    assert run_suite.leftovers(docker_client) == []


@pytest.fixture
def wrong_host_key(
    topology: Topology, run_suite: InnerRuns, monkeypatch: pytest.MonkeyPatch
) -> InnerRuns:
    """The ssh engine, with a known_hosts entry that does not match its host key."""
    environ = topology("ssh")
    monkeypatch.setenv("HOME", environ["TESTENV_SSH_BADKEY_HOME"])
    run_suite.pytester.makepyfile(SUITE)
    return run_suite


def test_a_wrong_ssh_host_key_skips_container_tests_only(wrong_host_key: InnerRuns) -> None:
    result = wrong_host_key("--container-unavailable=skip", "-rs")
    result.assert_outcomes(passed=1, skipped=1)
    assert result.ret == 0
    result.stdout.fnmatch_lines(["*ssh: Host key for server*does not match*"])
    result.stdout.no_fnmatch_line("*INTERNALERROR*")
    result.stdout.no_fnmatch_line("*Traceback*")


def test_a_wrong_ssh_host_key_is_one_error_line_by_default(wrong_host_key: InnerRuns) -> None:
    result = wrong_host_key()
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        ["*::test_reaches_a_published_port: no Docker engine answered*ssh: Host key*known_hosts*"]
    )
    result.stdout.no_fnmatch_line("*INTERNALERROR*")


@pytest.mark.parametrize("name", ["unix", "tcp-remote", "context-use", "ssh", "podman"])
def test_the_doctor_passes_on_each_topology(
    topology: Topology, pytester: pytest.Pytester, name: str
) -> None:
    topology(name)
    result = pytester.runpytest_subprocess(
        "--container-doctor", f"--container-mirror={SETTINGS['TESTENV_REGISTRY']}", timeout=300
    )
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines(
        [
            "container-doctor: engine source used: *",
            "container-doctor: engine: * (API *)",
            "container-doctor: engine identity: from *",
            "container-doctor: tests dial: *",
            "container-doctor: reached * at *",
            "container-doctor: removed *",
            "container-doctor: all checks passed",
        ]
    )
    if name == "podman":
        result.stdout.fnmatch_lines(["container-doctor: engine: Podman *"])
        # Its /info ID changes on every request: never the identity of a podman engine.
        result.stdout.fnmatch_lines(["container-doctor: engine identity: from its name and *"])
    else:
        result.stdout.fnmatch_lines(["container-doctor: engine identity: from the engine's ID"])


def test_the_doctor_names_the_failing_step_when_the_engine_is_down(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{pytester.path}/no-engine.sock")
    result = pytester.runpytest_subprocess("--container-doctor", timeout=60)
    assert result.ret == 1
    result.stdout.fnmatch_lines(
        ["container-doctor: FAILED at step 'connect to the engine': no Docker engine answered*"]
    )
    result.stdout.no_fnmatch_line("*Traceback*")


def test_tests_in_a_container_dial_the_containers_on_its_network(tmp_path: Path) -> None:
    # The runner container sees the checkout read-only at its own path, and the engine's
    # socket: as a CI job or a devcontainer with the socket mounted.
    found = subprocess.run(
        [
            f"{ROOT}/scripts/in-container",
            f"{ROOT}/.venv/bin/python",
            "-m",
            "pytest",
            "--container-doctor",
            f"--container-mirror={SETTINGS['TESTENV_REGISTRY']}",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
        check=False,
    )
    assert found.returncode == 0, found.stdout + found.stderr
    assert "container-doctor: this process runs in container " in found.stdout
    assert "container-doctor: tests dial: containers' addresses on network 'bridge'" in (
        found.stdout
    )
    assert "container-doctor: all checks passed" in found.stdout


EXECS = """
    import pytest

    @pytest.mark.container("busybox", command=["sleep", "300"])
    def test_every_exec_gets_its_output(container):
        # Short commands: their output comes in the packet that carries the response's
        # head, which a reader of the raw socket loses over tcp.
        for n in range(100):
            result = container.exec(["sh", "-c", f"echo out{n}; echo err{n} >&2"])
            assert (result.exit_code, result.stdout, result.stderr) == (
                0, f"out{n}\\n", f"err{n}\\n"
            ), n
"""


@pytest.mark.parametrize("name", ["tcp-local", "ssh", "unix"])
def test_exec_output_is_whole_on_each_transport(
    topology: Topology, run_suite: InnerRuns, docker_client: docker.DockerClient, name: str
) -> None:
    topology(name)
    run_suite.pytester.makepyfile(EXECS)
    result = run_suite()
    result.assert_outcomes(passed=1)
    assert run_suite.leftovers(docker_client) == []


RESETS = """
import pytest
from pytest_containers import container_fixture

box = container_fixture(
    "busybox", command=["sleep", "300"], scope="module",
    reset=["sh", "-c", "rm -f /tmp/dirty; echo reset >> /tmp/resets"],
)

@pytest.mark.parametrize("n", range(6))
def test_each_test_gets_a_clean_box(box, n):
    assert box.exec(["ls", "/tmp"]).stdout.split() == (["resets"] if n else [])
    box.exec(["touch", "/tmp/dirty"])

def test_resets_ran_once_each_and_how(box):
    assert box.exec(["cat", "/tmp/resets"]).stdout == "reset\\n" * 6
    # Through the shell kept open in the container, but over ssh, where it is an exec.
    processes = [row[-1] for row in box.raw.top(ps_args="-o pid,args")["Processes"]]
    assert processes.count("sh") == (0 if {over_ssh} else 1), processes
"""


@pytest.mark.parametrize("name", ["tcp-local", "ssh", "unix"])
def test_resets_run_through_one_shell_on_each_transport(
    topology: Topology, run_suite: InnerRuns, docker_client: docker.DockerClient, name: str
) -> None:
    topology(name)
    run_suite.pytester.makepyfile(RESETS.replace("{over_ssh}", str(name == "ssh")))
    result = run_suite()
    result.assert_outcomes(passed=7)
    assert run_suite.leftovers(docker_client) == []
