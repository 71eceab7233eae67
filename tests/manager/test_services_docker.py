"""Services against the real engine: an existing suite that reads its server's address
at import (REDIS_URL) and from an option in its own ``pytest_sessionstart`` gets the same
outcomes with a declared service as with a server started by hand, with and without
xdist; a broken service stops the run before any test, leaving nothing behind."""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from tests import pages
from tests.conftest import SERIAL_AND_XDIST, InnerRuns
from tests.testenv import (
    BUSYBOX,
    MIRROR_OPTION,
    REDIS,
    REGISTRY,
    ROOT,
    RegistryLog,
    run_containers,
    start_pytest,
    wait_for_files,
    wait_until_gone,
)

pytestmark = pytest.mark.docker


# A suite written as third-party suites are: it knows nothing of pytest-containers. Its
# conftest asks the server for its version at session start (a tiny RESP client, no
# redis-py) and skips tests that need a newer server; its test module reads REDIS_URL at
# import.
SUITE_CONFTEST = """
import os
import socket

import pytest

def pytest_addoption(parser):
    parser.addoption("--server-url", default="redis://127.0.0.1:1", dest="server_url")

def command(url, *words):
    host, port = url.split("//", 1)[1].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as conn:
        conn.sendall((" ".join(words) + "\\r\\n").encode())
        data = b""
        while b"\\r\\n" not in data:
            data += conn.recv(4096)
        head, _, rest = data.partition(b"\\r\\n")
        if not head.startswith(b"$"):
            return head[1:].decode()
        size = int(head[1:])
        while len(rest) < size:
            rest += conn.recv(4096)
        return rest[:size].decode()

SERVER = {}

def pytest_sessionstart(session):
    url = session.config.getoption("server_url")
    info = command(url, "INFO", "server")
    line = next(l for l in info.splitlines() if l.startswith("redis_version:"))
    SERVER["version"] = tuple(int(p) for p in line.split(":", 1)[1].split("."))
    SERVER["url"] = url

def pytest_configure(config):
    config.addinivalue_line("markers", "min_server(version): needs a server this new")

def pytest_runtest_setup(item):
    for mark in item.iter_markers("min_server"):
        if SERVER["version"] < mark.args[0]:
            pytest.skip(f"needs server {mark.args[0]}, have {SERVER['version']}")
"""

SUITE_TESTS = """
import os

import pytest

from conftest import SERVER, command

URL = os.environ["REDIS_URL"]

def test_ping():
    assert command(URL, "PING") == "PONG"

def test_the_option_and_the_variable_reach_one_server(request):
    key = "k-" + os.environ.get("PYTEST_XDIST_WORKER", "main")
    assert command(URL, "SET", key, request.node.name) == "OK"
    assert command(SERVER["url"], "GET", key) == request.node.name

@pytest.mark.min_server((2, 0))
def test_on_an_old_enough_server():
    assert SERVER["version"] >= (2, 0)

@pytest.mark.min_server((99, 0))
def test_on_a_server_from_the_future():
    assert False, "the suite's version check should have skipped this"
"""

EXPECTED = {"passed": 3, "skipped": 1}

INI_SERVICE = (
    "redis {image} ports=6379 per={per} 'wait=log:Ready to accept connections' "
    "expose=REDIS_URL=redis://{{host}}:{{port}} option=server_url=redis://{{host}}:{{port[6379]}}"
)

HOOK_SERVICE = """
import pytest_containers
from pytest_containers import wait

def pytest_containers_services(config):
    return [
        pytest_containers.service(
            "{image}", name="redis", per="{per}", ports=[6379],
            wait=wait.for_log("Ready to accept connections"),
            expose={{"REDIS_URL": "redis://{{host}}:{{port}}"}},
            options={{"server_url": "redis://{{host}}:{{port[6379]}}"}},
        )
    ]
"""


@pytest.fixture(autouse=True)
def nothing_left(run_suite: InnerRuns, docker_client: docker.DockerClient) -> Iterator[None]:
    """Every inner run of this module must leave no container behind."""
    yield
    assert run_suite.leftovers(docker_client) == []


def _suite(pytester: pytest.Pytester, declared: str = "", per: str = "worker") -> None:
    conftest = SUITE_CONFTEST
    if declared == "hook":
        conftest += HOOK_SERVICE.format(image=REDIS, per=per)
    pytester.makeconftest(conftest)
    pytester.makepyfile(test_suite=SUITE_TESTS)
    if declared == "ini":
        line = INI_SERVICE.format(image=REDIS, per=per)
        pytester.makeini(f"[pytest]\ncontainer_services =\n    {line}\n")


def _outcomes(result: pytest.RunResult) -> dict[str, int]:
    return {
        k: v
        for k, v in result.parseoutcomes().items()
        if k in ("passed", "skipped", "failed", "errors")
    }


@pytest.fixture
def server_by_hand(docker_client: docker.DockerClient) -> Iterator[str]:
    """A redis started the way users do today, by hand; its URL."""
    # An ephemeral port on loopback; the stubs want a number where docker-py takes None.
    ports: Any = {"6379/tcp": ("127.0.0.1", None)}
    raw = docker_client.containers.run(
        f"{REGISTRY}/library/{REDIS}",
        detach=True,
        ports=ports,
        labels={"pytest-containers-tests.by-hand": "1"},
    )
    try:
        deadline = time.monotonic() + 30
        while b"Ready to accept connections" not in raw.logs():
            assert time.monotonic() < deadline, raw.logs().decode()
            time.sleep(0.1)
        raw.reload()
        port = raw.attrs["NetworkSettings"]["Ports"]["6379/tcp"][0]["HostPort"]
        yield f"redis://127.0.0.1:{port}"
    finally:
        raw.remove(force=True)


@SERIAL_AND_XDIST
def test_the_suite_against_a_server_started_by_hand(
    run_suite: InnerRuns,
    pytester: pytest.Pytester,
    server_by_hand: str,
    monkeypatch: pytest.MonkeyPatch,
    workers: list[str],
) -> None:
    _suite(pytester)
    monkeypatch.setenv("REDIS_URL", server_by_hand)
    result = run_suite(f"--server-url={server_by_hand}", *workers)
    assert _outcomes(result) == EXPECTED, result.stdout.str()


@SERIAL_AND_XDIST
@pytest.mark.parametrize(
    ("declared", "per"),
    [("ini", "worker"), ("ini", "run"), ("hook", "worker"), ("hook", "run")],
)
def test_the_suite_against_a_declared_service_has_the_same_outcomes(
    run_suite: InnerRuns,
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    declared: str,
    per: str,
    workers: list[str],
) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    _suite(pytester, declared, per)
    result = run_suite(*workers)
    assert _outcomes(result) == EXPECTED, result.stdout.str()
    assert result.ret == 0
    result.stdout.fnmatch_lines(
        [
            f"containers: service redis  {REDIS} (per {per})  127.0.0.1:*->6379/tcp  "
            "sets $REDIS_URL, option server_url*",
            "*containers: images*",
            f"{REDIS}  sha256:*",
        ]
    )


def test_per_worker_services_are_one_per_worker_and_per_run_ones_shared(
    run_suite: InnerRuns, pytester: pytest.Pytester
) -> None:
    pytester.makeini(
        f"""
        [pytest]
        container_services =
            mine {REDIS} ports=6379 expose=MINE={{name}}
            shared {REDIS} ports=6379 per=run expose=SHARED={{name}}
        """
    )
    pytester.makepyfile(
        """
        import os
        import pytest

        @pytest.mark.parametrize("n", range(4))
        def test_where(n, container_services):
            assert container_services["mine"].name == os.environ["MINE"]
            assert container_services["shared"].name == os.environ["SHARED"]
            labels = container_services["mine"].labels
            assert labels["pytest-containers.worker"] == os.environ["PYTEST_XDIST_WORKER"]
            with open(f"seen-{os.environ['PYTEST_XDIST_WORKER']}", "w") as out:
                out.write(" ".join([os.environ["MINE"], os.environ["SHARED"],
                                    labels["pytest-containers.run"]]))
        """
    )
    # No --testrunuid, as users run it: the run id xdist gives its workers must be the
    # one the controller started the per="run" service under.
    result = pytester.runpytest_subprocess(
        MIRROR_OPTION,
        f"--container-cache-dir={run_suite.cache_dir}",
        "-p",
        "no:cacheprovider",
        "-n",
        "2",
        "--dist=each",
        timeout=300,
    )
    seen = [(pytester.path / f"seen-gw{i}").read_text().split() for i in range(2)]
    run_suite.run_ids.extend({s[2] for s in seen})  # for the leftover check
    result.assert_outcomes(passed=8)
    assert seen[0][0] != seen[1][0], "each worker has its own per='worker' service"
    assert seen[0][1] == seen[1][1], "the workers share the per='run' service"
    assert seen[0][2] == seen[1][2]


def test_an_option_given_on_the_command_line_wins(
    run_suite: InnerRuns, pytester: pytest.Pytester, server_by_hand: str
) -> None:
    _suite(pytester, "ini")
    pytester.makepyfile(
        test_given=f"""
        def test_given(pytestconfig):
            assert pytestconfig.getoption("server_url") == "{server_by_hand}"
        """
    )
    result = run_suite(f"--server-url={server_by_hand}", "test_given.py")
    result.assert_outcomes(passed=1)


@SERIAL_AND_XDIST
def test_a_broken_service_stops_the_run_before_any_test(
    run_suite: InnerRuns,
    pytester: pytest.Pytester,
    docker_client: docker.DockerClient,
    workers: list[str],
) -> None:
    pytester.makeini(
        f"""
        [pytest]
        container_services =
            fine {REDIS} ports=6379 expose=FINE=redis://{{host}}:{{port}}
            broken {BUSYBOX} per=run "command=sh -c 'echo boom: no config; exit 3'" wait=log:ready
        """
    )
    pytester.makepyfile(
        """
        def test_never_runs():
            raise AssertionError("ran")
        """
    )
    result = run_suite(*workers)
    assert result.ret != 0
    output = result.stdout.str() + result.stderr.str()
    assert "ran" not in result.stdout.str()
    assert " passed" not in output
    assert "failed" not in output
    errors = [line for line in output.splitlines() if "service 'broken'" in line]
    assert len(errors) == 1, output
    assert f"(image {BUSYBOX}, per=run) did not start" in errors[0]
    assert "(waiting for_log('ready'))" in errors[0]
    assert "exited with code 3" in output
    assert "boom: no config" in output
    assert run_suite.leftovers(docker_client) == []


def test_without_an_engine_and_unavailable_skip_the_tests_are_skipped(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: pytest.TempPathFactory
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    pytester.makeini(
        f"""
        [pytest]
        container_services = redis {REDIS} ports=6379 expose=REDIS_URL=redis://{{host}}:{{port}}
        """
    )
    pytester.makepyfile(
        """
        def test_needs_the_server():
            raise AssertionError("ran without its server")
        """
    )
    skipped = pytester.runpytest_subprocess("--container-unavailable=skip", "-rs")
    skipped.assert_outcomes(skipped=1)
    skipped.stdout.fnmatch_lines(["*services not started*"])
    failed = pytester.runpytest_subprocess()
    assert failed.ret == pytest.ExitCode.USAGE_ERROR
    assert "services not started" in failed.stderr.str()


@SERIAL_AND_XDIST
def test_a_reset_service_is_clean_for_every_test_but_its_first(
    run_suite: InnerRuns,
    pytester: pytest.Pytester,
    docker_client: docker.DockerClient,
    workers: list[str],
) -> None:
    pytester.makeini(
        f"""
        [pytest]
        container_services =
            box {BUSYBOX} "command=sleep 300" "reset=rm -f /tmp/dirty"
        """
    )
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.parametrize("n", range(6))
        def test_sees_a_clean_service(n, container_services):
            box = container_services["box"]
            # Exit codes, not output: the engine can drop exec output (moby#27289).
            assert box.exec(["test", "-e", "/tmp/dirty"]).exit_code == 1
            assert box.exec(["touch", "/tmp/dirty"]).exit_code == 0
        """
    )
    result = run_suite(*workers)
    result.assert_outcomes(passed=6)


def test_a_failing_service_reset_errors_that_test_and_the_others_go_on(
    run_suite: InnerRuns, pytester: pytest.Pytester
) -> None:
    pytester.makeconftest(
        f"""
        import pytest_containers

        calls = []

        def flaky(container):
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("the flush went wrong")

        def pytest_containers_services(config):
            return [pytest_containers.service("{BUSYBOX}", name="box", command=["sleep", "300"],
                                              reset=flaky)]
        """
    )
    pytester.makepyfile(
        """
        def test_first(container_services): pass
        def test_second(container_services): pass
        def test_third(container_services): pass
        """
    )
    result = run_suite()
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*test_second*service 'box': the reset of container * (*) by flaky failed: raised "
            "RuntimeError: the flush went wrong; it stays, and the next test resets it again*",
        ]
    )
    assert "Traceback" not in result.stdout.str()


def test_keep_always_keeps_the_services(
    run_suite: InnerRuns, pytester: pytest.Pytester, docker_client: docker.DockerClient
) -> None:
    pytester.makeini(
        f"""
        [pytest]
        container_services =
            mine {REDIS} ports=6379
            shared {REDIS} ports=6379 per=run
        """
    )
    pytester.makepyfile("def test_it(container_services): assert len(container_services) == 2")
    result = run_suite("--container-keep=always")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*containers: kept for debugging*"])
    kept = run_suite.leftovers(docker_client)
    assert len(kept) == 2
    assert all("-mine-" in n or "-shared-" in n for n in kept)
    for name in kept:
        with contextlib.suppress(docker.errors.NotFound):
            docker_client.containers.get(name).remove(force=True)


def test_a_service_that_fails_in_one_worker_stops_the_run(
    run_suite: InnerRuns, pytester: pytest.Pytester, docker_client: docker.DockerClient
) -> None:
    pytester.makeconftest(
        f"""
        import os
        import pytest_containers

        def pytest_containers_services(config):
            # Ready everywhere but in worker gw1: a failure only a worker meets. Asked of
            # the config: the environment may say gw1 in the controller too, when the
            # outer suite runs this one from its own worker gw1.
            broken = getattr(config, "workerinput", {{}}).get("workerid") == "gw1"
            script = "echo boom in gw1; exit 3" if broken else "echo ready; sleep 600"
            return [
                pytest_containers.service(
                    "{BUSYBOX}", name="flaky", command=["sh", "-c", script],
                    wait=pytest_containers.wait.for_log("ready"),
                )
            ]
        """
    )
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.parametrize("n", range(4))
        def test_never_runs(n):
            raise AssertionError("ran")
        """
    )
    result = run_suite("-n", "2")
    assert result.ret != 0
    output = result.stdout.str() + result.stderr.str()
    assert "AssertionError" not in output
    assert "crashed" not in output
    assert "service 'flaky' (image busybox" in output
    assert "boom in gw1" in output
    # The worker reports it as its collection error; xdist adds that gw1 collected nothing.
    outcomes = result.parseoutcomes()
    assert "passed" not in outcomes
    assert "failed" not in outcomes
    summary = [line for line in result.stdout.lines if line.startswith("ERROR ")]
    ours = [line for line in summary if "service 'flaky' (image busybox" in line]
    assert len(ours) == 1, result.stdout.str()
    others = [line for line in summary if line not in ours]
    assert all("Different tests were collected" in line for line in others), others
    assert run_suite.leftovers(docker_client) == []


def test_the_docs_service_hook_example_runs(
    run_suite: InnerRuns, pytester: pytest.Pytester
) -> None:
    page = ROOT / "docs" / "how-to" / "services.md"
    blocks = pages.blocks(page, "python")
    (example,) = [block for block in blocks if "def pytest_containers_services" in block]
    pytester.makeconftest(example)
    pytester.makepyfile(
        """
        import os

        def test_the_suite_sees_its_server(pytestconfig, container_services):
            url = pytestconfig.getoption("redis_url")
            host, port = container_services["redis"].address(6379)
            assert url == os.environ["REDIS_URL"] == f"redis://{host}:{port}"
        """
    )
    run_suite().assert_outcomes(passed=1)


def test_pyproject_declares_services_too(run_suite: InnerRuns, pytester: pytest.Pytester) -> None:
    pytester.makepyprojecttoml(
        f"""
        [tool.pytest.ini_options]
        container_services = [
            "cache {REDIS} ports=6379 expose=CACHE={{host}}:{{port}} expose=CACHE_IP={{ip}}",
            "name-only {BUSYBOX} 'command=sleep 600' expose=NAME_ONLY={{name}}",
        ]
        """
    )
    pytester.makepyfile(
        """
        import os

        def test_both(container_services):
            cache = container_services["cache"]
            host, port = cache.address(6379)
            assert os.environ["CACHE"] == f"{host}:{port}"
            networks = cache.attrs["NetworkSettings"]["Networks"]
            assert os.environ["CACHE_IP"] in {n["IPAddress"] for n in networks.values()}
            assert os.environ["NAME_ONLY"] == container_services["name-only"].name
        """
    )
    run_suite().assert_outcomes(passed=1)


@SERIAL_AND_XDIST
def test_kill_9_of_the_run_leaves_no_service_behind(
    run_suite: InnerRuns,
    pytester: pytest.Pytester,
    docker_client: docker.DockerClient,
    tmp_path: Path,
    workers: list[str],
) -> None:
    # The services carry the run's labels, so the watchdog of each process removes them.
    up = tmp_path / "up"
    up.mkdir()
    pytester.makeini(
        f"""
        [pytest]
        container_services =
            mine {BUSYBOX} 'command=sleep 300'
            shared {BUSYBOX} per=run 'command=sleep 301'
        """
    )
    pytester.makepyfile(
        f"""
        import os, time, pytest

        @pytest.mark.parametrize("n", range(2))
        def test_sleeps(n):
            open(os.path.join({str(up)!r}, str(os.getpid()) + str(n)), "w").close()
            time.sleep(300)
        """
    )
    run_id = run_suite.new_run_id()
    run = start_pytest(pytester, run_id, f"--container-cache-dir={run_suite.cache_dir}", *workers)
    wait_for_files(up, 2 if workers else 1)
    # serial: mine + shared; xdist: the controller's and each worker's mine + shared.
    assert len(run_containers(docker_client, run_id)) == (4 if workers else 2)
    os.killpg(run.pid, signal.SIGKILL)
    run.communicate(timeout=30)
    assert wait_until_gone(docker_client, run_id, 10) < 10


def test_services_start_concurrently(tmp_path: Path, docker_client: docker.DockerClient) -> None:
    # Each is ready only once the other has started: started one after the other, the
    # first would never be ready.
    from pytest_containers import service, wait
    from pytest_containers._base.settings import Settings
    from pytest_containers._manager.manager import ContainerManager
    from pytest_containers._manager.services import start_services, stop_services

    shared = tmp_path / "shared"
    shared.mkdir()

    def waiting_for(me: str, other: str) -> Any:
        script = f"touch /shared/{me}; until [ -e /shared/{other} ]; do sleep 0.1; done; "
        return service(
            BUSYBOX,
            name=me,
            command=["sh", "-c", script + "echo ready; sleep 600"],
            volumes=[f"{shared}:/shared"],
            wait=wait.for_log("ready", timeout=20),
        )

    run_id = uuid.uuid4().hex
    manager = ContainerManager(
        Settings(mirror=REGISTRY, cache_dir=tmp_path / "cache"), run_id=run_id, worker="t"
    )
    try:
        started = start_services(
            manager, [waiting_for("a", "b"), waiting_for("b", "a")], base_dir=tmp_path
        )
        assert sorted(started.containers) == ["a", "b"]
        stop_services(manager, started)
    finally:
        manager.close()
        manager.remove_run_containers()
        manager.guard.stop()
    assert run_containers(docker_client, run_id) == []


def test_a_cold_service_image_is_pulled_once_for_the_run(
    run_suite: InnerRuns,
    pytester: pytest.Pytester,
    unique_image: Callable[[], str],
    registry_log: RegistryLog,
) -> None:
    image = unique_image()
    pytester.makeini(
        f"""
        [pytest]
        container_services =
            mine {image} 'command=sleep 300'
            shared {image} per=run 'command=sleep 301'
        """
    )
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.parametrize("n", range(4))
        def test_it(container_services, n):
            assert container_services["mine"].exec(["cat", "/etc/image-id"]).exit_code == 0
        """
    )
    run_suite("-n", "2").assert_outcomes(passed=4)
    assert registry_log.manifest_requests(image) == 1


@SERIAL_AND_XDIST
def test_keep_failed_keeps_the_services_of_a_run_with_a_failed_test(
    run_suite: InnerRuns,
    pytester: pytest.Pytester,
    docker_client: docker.DockerClient,
    workers: list[str],
) -> None:
    pytester.makeini(
        f"""
        [pytest]
        container_services =
            mine {BUSYBOX} 'command=sleep 300'
            shared {BUSYBOX} per=run 'command=sleep 301'
        """
    )
    pytester.makepyfile("def test_passes(): pass")
    run_suite("--container-keep=failed", *workers).assert_outcomes(passed=1)
    assert run_suite.leftovers(docker_client) == []
    pytester.makepyfile("def test_fails(): assert False")
    result = run_suite("--container-keep=failed", *workers)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*containers: kept for debugging*"])
    kept = run_suite.leftovers(docker_client)
    assert any("-shared-" in name for name in kept)
    assert any("-mine-" in name for name in kept)
    for name in kept:
        with contextlib.suppress(docker.errors.NotFound):
            docker_client.containers.get(name).remove(force=True)
