"""kubedock mode: the plugin on kubedock, the Docker API served on top of Kubernetes.

The engine tests run the inner suite against scripts/kubedock-standin.py, started here on
a private socket: it forwards to the local engine and answers /info, /version, builds,
image loads and logs as kubedock does.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from pytest_containers._engine.connection import (
    EngineInfo,
    _info_from_version,
    is_kubedock_info,
    kubedock_refusal,
)
from tests.conftest import SERIAL_AND_XDIST, InnerRuns
from tests.testenv import BUSYBOX, ROOT

#: kubedock's /info and /version, as its routes/docker/system.go and config/system.go give them.
KUBEDOCK_INFO = {
    "ID": "com.joyrex2001.kubedock",
    "Name": "kubedock",
    "ServerVersion": "0.18.0",
    "OperatingSystem": "kubernetes",
    "MemTotal": 0,
    "Labels": [],
}
KUBEDOCK_VERSION = {"Version": "1.25", "ApiVersion": "1.25", "MinAPIVersion": "1.25"}
DOCKER_INFO = {"ID": "ABCD:EFGH", "Name": "build-host", "OperatingSystem": "Debian GNU/Linux 12"}
DOCKER_VERSION = {"Version": "20.10.24", "Components": [{"Name": "Engine"}]}
REFUSED = "which cannot build images"


def test_kubedock_is_known_by_its_info() -> None:
    assert is_kubedock_info(KUBEDOCK_INFO)
    assert is_kubedock_info({"Name": "KubeDock"})
    assert is_kubedock_info({"OperatingSystem": "kubernetes"})


def test_docker_podman_and_an_engine_that_cannot_say_are_not_kubedock() -> None:
    assert not is_kubedock_info(DOCKER_INFO)
    assert not is_kubedock_info({"Name": "podman-host", "OperatingSystem": "fedora"})
    assert not is_kubedock_info({})
    assert not is_kubedock_info(None)


def test_kubedock_is_named_with_its_own_version_not_the_docker_api_it_mimics() -> None:
    assert _info_from_version(KUBEDOCK_VERSION, KUBEDOCK_INFO) == EngineInfo("kubedock", "0.18.0")
    assert _info_from_version(DOCKER_VERSION, DOCKER_INFO) == EngineInfo("Docker", "20.10.24")
    assert _info_from_version(DOCKER_VERSION, None) == EngineInfo("Docker", "20.10.24")


def test_the_refusal_is_one_line_saying_why_and_what_to_do() -> None:
    line = kubedock_refusal("build images")
    assert "\n" not in line
    assert "kubedock" in line
    assert "cannot build images" in line
    assert "push the image to a registry the cluster can pull from" in line
    assert "reference it by name" in line


# --- through the stand-in ---------------------------------------------------------------


@pytest.fixture
def kubedock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, docker_client: docker.DockerClient
) -> Iterator[Path]:
    """The stand-in on a socket of this test's own; DOCKER_HOST points the inner runs at
    it (the suite's own ``docker_client`` was made before, on the real engine)."""
    socket_path = tmp_path / "kubedock.sock"
    log = (tmp_path / "kubedock.log").open("w")
    process = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "scripts" / "kubedock-standin.py"),
            "--listen",
            str(socket_path),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 10
        while not socket_path.exists():
            assert process.poll() is None, (tmp_path / "kubedock.log").read_text()
            assert time.monotonic() < deadline, "the kubedock stand-in did not start"
            time.sleep(0.05)
        for name in ("DOCKER_CONTEXT", "DOCKER_CONFIG", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("DOCKER_HOST", f"unix://{socket_path}")
        yield socket_path
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


SUITE = f"""
    import pytest
    from pytest_containers import NetworkError, wait

    @pytest.mark.container(
        {BUSYBOX!r},
        command=["sh", "-c", "echo starting; echo ready >&2; exec sleep 300"],
        wait=wait.for_log("ready"),
    )
    def test_a_log_wait_sees_stderr_in_the_merged_stream(container):
        assert "starting" in container.logs() and "ready" in container.logs()
        assert container.exec(["sh", "-c", "echo out; echo err >&2"]).stderr == "err\\n"

    @pytest.mark.container({BUSYBOX!r}, network="backend", command=["sleep", "300"])
    def test_an_address_without_an_alias_fails_with_one_line(container):
        with pytest.raises(NetworkError, match="give it aliases=") as raised:
            container.ip()
        assert "\\n" not in str(raised.value)

    @pytest.mark.container(build="app")
    def test_built(container):
        pass

    def test_without_containers():
        pass
"""


@pytest.mark.docker
@SERIAL_AND_XDIST
def test_on_kubedock_builds_fail_with_one_line_and_the_rest_passes(
    pytester: pytest.Pytester,
    run_suite: InnerRuns,
    kubedock: Path,
    docker_client: docker.DockerClient,
    workers: list[str],
) -> None:
    app = pytester.mkdir("app")
    (app / "Dockerfile").write_text(f"FROM {BUSYBOX}\nCMD sleep 300\n")
    pytester.makepyfile(SUITE)
    result = run_suite("-rfE", *workers)
    result.assert_outcomes(passed=3, errors=1)
    assert any(line.startswith("containers: kubedock ") for line in result.outlines)
    assert "stdout and stderr merged" in result.stdout.str()
    # The error's own section, not the short summary (which repeats it in full when the
    # CI variable is set, and cut to the terminal's width otherwise).
    refused = [
        line for line in result.outlines if REFUSED in line and not line.startswith("ERROR ")
    ]
    # The error's section is that one line, with no traceback.
    assert len(refused) == 1, result.stdout.str()
    assert "::test_built: the engine is kubedock (Kubernetes), which cannot" in refused[0]
    assert "Traceback" not in result.stdout.str()
    assert "cleanup" not in result.stdout.str().lower()
    assert run_suite.leftovers(docker_client) == []
    assert run_suite.leftover_networks(docker_client) == []


@pytest.mark.docker
def test_on_kubedock_the_image_archive_fails_with_one_line(
    pytester: pytest.Pytester,
    run_suite: InnerRuns,
    kubedock: Path,
    docker_client: docker.DockerClient,
    tmp_path: Path,
) -> None:
    pytester.makepyfile(
        f"""
        import pytest

        @pytest.mark.container({BUSYBOX!r}, command=["sleep", "300"])
        def test_one(container):
            pass

        def test_without_containers():
            pass
        """
    )
    result = run_suite(f"--container-archive={tmp_path / 'archive'}", "-rfE")
    result.assert_outcomes(passed=1, errors=1)
    assert "which cannot load images from the archive" in result.stdout.str()
    assert "Traceback" not in result.stdout.str()
    assert run_suite.leftovers(docker_client) == []


@pytest.mark.docker
def test_the_doctor_says_kubedock_and_what_it_means(
    run_suite: InnerRuns, kubedock: Path, docker_client: docker.DockerClient
) -> None:
    result = run_suite("--container-doctor")
    output = result.stdout.str()
    assert "container-doctor: engine: kubedock " in output
    assert "container-doctor: kubedock mode: Kubernetes through kubedock: no image builds" in output
    assert "container-doctor: all checks passed" in output
    assert result.ret == 0
    assert run_suite.leftovers(docker_client) == []
