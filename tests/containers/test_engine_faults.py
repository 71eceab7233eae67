"""Engine faults survived: an engine restarted or stopped mid-run (a second dockerd of
this test's own, never the shared one), and containers killed, OOM-killed or removed
from outside while their tests use them."""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from pytest_containers._base.image import Image
from pytest_containers._containers.faults import (
    EngineRecovery,
    container_fault,
    engine_gone,
    never_sent,
    oom_killed,
    retry_unsent,
)
from pytest_containers._engine.endpoint import resolve_endpoint
from pytest_containers.errors import EngineUnavailableError
from tests.conftest import SERIAL_AND_XDIST, InnerRuns
from tests.testenv import BUSYBOX, MIRROR_OPTION, ROOT

pytestmark = pytest.mark.docker


def free_bridge_subnet() -> str:
    """A 10.211.N.1/24 that no interface uses: apart from docker0, the shared engine's
    networks and the bridges of other second engines (xdist runs two tests at once)."""
    used = subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True, text=True).stdout
    free = [n for n in range(100, 250) if f" 10.211.{n}." not in used]
    return f"10.211.{random.choice(free)}.1/24"


class SecondEngine:
    """A dockerd of the test's own: its own socket, data root, exec root, pid file and
    bridge, and no iptables or masquerading, so that stopping it touches nothing else."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.socket = root / "docker.sock"
        self.host = f"unix://{self.socket}"
        self.process: subprocess.Popen[bytes] | None = None
        # Each engine its own bridge: one shared by name was deleted by the first test to
        # end, under the other one's engine (could not find bridge).
        self.bridge = f"pcte{root.name[-8:]}"
        self.made_bridge = False

    def start(self) -> float:
        """Start it; returns the seconds until it answered."""
        if not self.made_bridge:
            subprocess.run(["ip", "link", "add", self.bridge, "type", "bridge"], check=True)
            self.made_bridge = True
            address = free_bridge_subnet()
            subprocess.run(["ip", "addr", "add", address, "dev", self.bridge], check=True)
            subprocess.run(["ip", "link", "set", self.bridge, "up"], check=True)
        (self.root / "daemon.json").write_text("{}")  # not the machine's /etc/docker one
        started = time.monotonic()
        log = (self.root / "dockerd.log").open("ab")
        self.process = subprocess.Popen(
            ["dockerd", "--config-file", str(self.root / "daemon.json"),
             "--host", self.host, "--data-root", str(self.root / "data"),
             "--exec-root", str(self.root / "exec"), "--pidfile", str(self.root / "docker.pid"),
             "--bridge", self.bridge, "--iptables=false", "--ip-masq=false", "--ip-forward=false",
             "--shutdown-timeout", "1"],
            stdout=log, stderr=log, start_new_session=True,
        )  # fmt: skip
        log.close()
        client = docker.DockerClient(base_url=self.host, version="1.41", timeout=5)
        try:
            while True:
                with contextlib.suppress(Exception):
                    client.ping()
                    return time.monotonic() - started
                assert self.process.poll() is None, (self.root / "dockerd.log").read_text()[-2000:]
                assert time.monotonic() - started < 60, "the second dockerd did not answer"
                time.sleep(0.05)
        finally:
            client.close()

    def stop(self) -> float:
        """Stop it (SIGTERM, as a service manager would); returns the seconds it took."""
        started = time.monotonic()
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        return time.monotonic() - started

    def close(self) -> None:
        self.stop()
        subprocess.run(["umount", "-R", "-l", str(self.root / "data")], capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)
        if self.made_bridge:
            subprocess.run(["ip", "link", "delete", self.bridge], capture_output=True)


@pytest.fixture
def second_engine(monkeypatch: pytest.MonkeyPatch) -> Iterator[SecondEngine]:
    if os.geteuid() != 0 or shutil.which("dockerd") is None:
        pytest.skip("needs root and dockerd for an engine of the test's own")
    root = Path(f"/tmp/pct-engine-{uuid.uuid4().hex[:8]}")
    root.mkdir(mode=0o700)
    engine = SecondEngine(root)
    try:
        engine.start()
        monkeypatch.setenv("DOCKER_HOST", engine.host)
        yield engine
    finally:
        engine.close()


def run_in_background(pytester: pytest.Pytester, cache: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", MIRROR_OPTION,
         f"--container-cache-dir={cache}", "-rA", *args],
        cwd=pytester.path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT / "src")),
    )  # fmt: skip


def wait_for(path: Path, process: subprocess.Popen[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            pytest.fail(f"the run ended first:\n{process.communicate()[0]}")
        assert time.monotonic() < deadline, f"no {path.name} within {timeout} s"
        time.sleep(0.02)


OUTAGE_SUITE = f"""
import pathlib, time
import pytest

HERE = pathlib.Path(__file__).parent
# Ends on SIGTERM (a plain sleep as pid 1 would not), so that the engine stops in a moment.
STOPS_AT_ONCE = ["sh", "-c", "trap 'exit 0' TERM; sleep 300 & wait"]

@pytest.mark.container("{BUSYBOX}", command=STOPS_AT_ONCE, scope="session", name="shared")
def test_0_before(containers):
    assert containers["shared"].exec(["true"]).exit_code == 0

def test_1_the_engine_goes_away():
    (HERE / "go-away").touch()
    deadline = time.monotonic() + 60
    while not (HERE / "gone").exists() and time.monotonic() < deadline:
        time.sleep(0.02)

@pytest.mark.container("{BUSYBOX}", command=STOPS_AT_ONCE)
@pytest.mark.parametrize("n", range(3))
def test_2_after(container, n):
    assert container.exec(["true"]).exit_code == 0

@pytest.mark.container("{BUSYBOX}", command=STOPS_AT_ONCE, scope="session", name="shared")
def test_3_shared_after(containers):
    assert containers["shared"].exec(["true"]).exit_code == 0

def test_4_plain():
    pass
"""


def test_an_engine_restarted_mid_run_costs_no_test(
    second_engine: SecondEngine, pytester: pytest.Pytester, tmp_path: Path
) -> None:
    pytester.makepyfile(test_outage=OUTAGE_SUITE)
    run = run_in_background(pytester, tmp_path / "cache")
    try:
        wait_for(pytester.path / "go-away", run)
        stopped = second_engine.stop()
        (pytester.path / "gone").touch()
        restarted = second_engine.start()
        output, _ = run.communicate(timeout=180)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    print(
        f"\nengine down for {stopped + restarted:.2f} s (stop {stopped:.2f}, start {restarted:.2f})"
    )
    assert stopped + restarted < 10, "the restart took longer than the default grace"
    assert run.returncode == 0, output
    assert re.search(r"\b7 passed\b", output), output


def test_an_engine_stopped_for_good_fails_each_container_test_with_one_line(
    second_engine: SecondEngine, pytester: pytest.Pytester, tmp_path: Path
) -> None:
    grace = 3
    # test_1 uses the shared container while the engine goes away under it.
    suite = OUTAGE_SUITE.replace(
        "def test_1_the_engine_goes_away():",
        f"@pytest.mark.container({BUSYBOX!r}, command=STOPS_AT_ONCE, scope='session', "
        "name='shared')\ndef test_1_the_engine_goes_away(containers):",
    ).replace(
        "        time.sleep(0.02)\n\n@pytest.mark.container",
        "        time.sleep(0.02)\n    containers['shared'].exec(['true'])\n\n"
        "@pytest.mark.container",
        1,
    )
    assert suite.count("containers['shared'].exec") == 1
    pytester.makepyfile(test_outage=suite)
    run = run_in_background(pytester, tmp_path / "cache", f"--container-engine-grace={grace}")
    try:
        wait_for(pytester.path / "go-away", run)
        second_engine.stop()
        (pytester.path / "gone").touch()
        gone_at = time.monotonic()
        output, _ = run.communicate(timeout=180)
        took = time.monotonic() - gone_at
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    print(f"\nthe run ended {took:.2f} s after the engine stopped")
    assert re.search(r"\b1 failed, 2 passed, 4 errors\b", output), output
    # Not the short summary's lines: pytest writes them whole when CI is set.
    said = [
        line
        for line in output.splitlines()
        if "stopped answering" in line and not line.startswith(("ERROR ", "FAILED "))
    ]
    assert len(said) == 5, output
    (during,) = (line for line in said if line.startswith("EngineUnavailableError: "))
    assert during.startswith("EngineUnavailableError: test_outage.py::test_1_the_engine_goes_away")
    assert "while the test ran" in during
    said.remove(during)
    for line in said:
        assert line.startswith("test_outage.py::test_"), line
        assert f"did not come back within {grace} s (--container-engine-grace)" in line
    assert "Traceback" not in output
    assert "requests.exceptions" not in output
    assert took < grace + 5


def test_the_guard_waits_for_an_engine_that_comes_back_and_not_for_one_that_is_gone(
    second_engine: SecondEngine,
) -> None:
    client = docker.DockerClient(base_url=second_engine.host, timeout=5)
    guard = EngineRecovery(client.ping, grace=5, location=second_engine.host)
    try:
        assert guard.run(client.version, what="asking")["Version"]
        second_engine.stop()
        failure: Exception | None = None
        try:
            client.version()
        except Exception as error:  # whatever docker-py raises for a vanished socket
            failure = error
        assert failure is not None
        assert engine_gone(failure)
        started = time.monotonic()
        with pytest.raises(EngineUnavailableError, match="did not come back within 5 s"):
            guard.run(client.version, what="asking")
        assert 5 <= time.monotonic() - started < 8
        started = time.monotonic()
        with pytest.raises(EngineUnavailableError):
            guard.run(client.version, what="asking")
        assert time.monotonic() - started < 1, "a gone engine is not waited for twice"
        second_engine.start()
        assert guard.run(client.version, what="asking")["Version"]
        assert not guard.gone
    finally:
        client.close()


# -- an engine out of reach for a moment ----------------------------------------------


class SocketProxy:
    """A unix socket in front of the engine's that forwards bytes both ways and can drop
    out as a restarted engine or proxy does: :meth:`drop` closes its listening socket,
    removes the socket file and cuts every connection; :meth:`restore` listens again."""

    def __init__(self, path: Path, engine: str) -> None:
        self.path = path
        self.host = f"unix://{path}"
        self._engine = engine
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._accepting: threading.Thread | None = None
        #: The first line of each request that came through (method and path).
        self.requests: list[str] = []

    def restore(self) -> None:
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(str(self.path))
        listener.listen(64)
        self._listener = listener
        self._accepting = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        self._accepting.start()

    def drop(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() under way
            listener.close()
        if self._accepting is not None:
            self._accepting.join()
        self.path.unlink(missing_ok=True)
        with self._lock:
            cut = list(self._open)
        for connection in cut:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        engine = socket.socket(socket.AF_UNIX)
        with self._lock:
            self._open.update((client, engine))
        try:
            engine.connect(self._engine)
            upstream = threading.Thread(target=self._pump, args=(client, engine, True), daemon=True)
            upstream.start()
            self._pump(engine, client, False)
            upstream.join()
        except OSError:
            pass
        finally:
            with self._lock:
                self._open.difference_update((client, engine))
            client.close()
            engine.close()

    def _pump(self, source: socket.socket, target: socket.socket, requests: bool) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if requests and data.split(b" ", 1)[0] in (b"GET", b"POST", b"HEAD", b"PUT"):
                    self.requests.append(data.split(b"\r\n", 1)[0].decode(errors="replace"))
                target.sendall(data)
        # An end of input passed on as one (the engine's answer may still come).
        with contextlib.suppress(OSError):
            target.shutdown(socket.SHUT_WR)


@pytest.fixture
def engine_proxy(monkeypatch: pytest.MonkeyPatch) -> Iterator[SocketProxy]:
    """A :class:`SocketProxy` in front of the suite's engine, which DOCKER_HOST names."""
    engine = resolve_endpoint()
    if engine.scheme != "unix":
        pytest.skip("needs the engine on a unix socket to put a proxy in front of it")
    root = Path(f"/tmp/pct-proxy-{uuid.uuid4().hex[:8]}")
    root.mkdir(mode=0o700)
    proxy = SocketProxy(root / "docker.sock", engine.url.removeprefix("unix://"))
    proxy.restore()
    monkeypatch.setenv("DOCKER_HOST", proxy.host)
    try:
        yield proxy
    finally:
        proxy.drop()
        shutil.rmtree(root, ignore_errors=True)


BLIP_SUITE = f"""
import pathlib, time
import pytest

HERE = pathlib.Path(__file__).parent

def wait_for(name):
    deadline = time.monotonic() + 120
    while not (HERE / name).exists():
        assert time.monotonic() < deadline, f"no {{name}}"
        time.sleep(0.02)

@pytest.mark.container("{BUSYBOX}", command=["sh", "-c", "echo hello; exec sleep 300"])
@pytest.mark.parametrize("n", range(4))
def test_exec_and_logs_across_a_blip(container, n):
    assert container.exec(["true"]).exit_code == 0
    (HERE / f"ready-{{n}}").touch()
    wait_for("dropped")
    # The engine is out of reach now: these calls cannot connect, so they wait and go again.
    assert container.exec(["echo", "hi"]).output == "hi\\n"
    assert "hello" in container.logs()
    container.reload()
    assert container.status == "running"
    # Not before the proxy was back (restoring is written just before it is).
    assert (HERE / "restoring").exists()
"""


@SERIAL_AND_XDIST
def test_an_engine_out_of_reach_for_a_second_costs_no_test(
    engine_proxy: SocketProxy, run_suite: InnerRuns, pytester: pytest.Pytester,
    docker_client: docker.DockerClient, workers: list[str],
) -> None:  # fmt: skip
    pytester.makepyfile(test_blip=BLIP_SUITE)
    # The proxy drops once every process has a test waiting for it: nothing is under way.
    processes = 2 if workers else 1

    def blip() -> None:
        deadline = time.monotonic() + 240
        while len(list(pytester.path.glob("ready-*"))) < processes:
            if time.monotonic() > deadline:
                return
            time.sleep(0.02)
        engine_proxy.drop()
        (pytester.path / "dropped").touch()
        time.sleep(1)
        (pytester.path / "restoring").touch()
        engine_proxy.restore()

    blipping = threading.Thread(target=blip, daemon=True)
    blipping.start()
    result = run_suite(*workers)
    blipping.join(timeout=60)
    assert (pytester.path / "restoring").exists(), result.stdout.str()
    result.assert_outcomes(passed=4)
    assert "EngineUnavailableError" not in result.stdout.str()
    assert run_suite.leftovers(docker_client) == []


def test_a_request_that_could_not_connect_waits_for_the_engine_and_goes_again(
    engine_proxy: SocketProxy,
) -> None:
    client = docker.DockerClient(base_url=engine_proxy.host, version="1.41", timeout=30)
    # The guard pings through the same client, as the plugin's does: it must not wait on
    # itself.
    retry_unsent(client, EngineRecovery(client.ping, grace=30, location=engine_proxy.host))
    answers: list[dict[str, object]] = []
    asking = threading.Thread(target=lambda: answers.append(client.version()), daemon=True)
    try:
        engine_proxy.drop()
        back = threading.Timer(1, engine_proxy.restore)
        back.start()
        asking.start()
        asking.join(timeout=20)
        back.join()
        assert answers, "no answer once the engine was back"
        assert engine_proxy.requests[-1].startswith("GET /v1.41/version ")
    finally:
        client.close()


def test_a_request_cut_after_it_was_sent_is_not_sent_again(
    engine_proxy: SocketProxy, docker_client: docker.DockerClient, busybox: Image,
) -> None:  # fmt: skip
    sleeper = docker_client.containers.run(busybox.id, ["sleep", "300"], detach=True)
    client = docker.DockerClient(base_url=engine_proxy.host, version="1.41", timeout=30)
    retry_unsent(client, EngineRecovery(client.ping, grace=30, location=engine_proxy.host))
    failures: list[Exception] = []

    def wait_for_its_exit() -> None:
        try:
            client.api.wait(str(sleeper.id))
        except Exception as error:
            failures.append(error)

    waiting = threading.Thread(target=wait_for_its_exit, daemon=True)
    try:
        waiting.start()
        deadline = time.monotonic() + 30
        while not any("/wait" in line for line in engine_proxy.requests):
            assert time.monotonic() < deadline, engine_proxy.requests
            time.sleep(0.02)
        engine_proxy.drop()
        engine_proxy.restore()  # back at once: a retry would get through, and wait 300 s
        waiting.join(timeout=20)
        assert not waiting.is_alive(), "the cut request was sent again"
        (failure,) = failures
        assert engine_gone(failure)
        assert not never_sent(failure)
        assert [line for line in engine_proxy.requests if "/wait" in line] == [
            f"POST /v1.41/containers/{sleeper.id}/wait HTTP/1.1"
        ]
    finally:
        client.close()
        sleeper.remove(force=True)


# -- containers killed or removed from outside ----------------------------------------

FROM_OUTSIDE_SUITE = f"""
import time
import pytest

@pytest.mark.container("{BUSYBOX}", command=["sleep", "300"])
def test_killed(container, container_client):
    container_client.api.kill(container.id)
    container.exec(["true"])

@pytest.mark.container("{BUSYBOX}", command=["sleep", "300"])
def test_removed(container, container_client):
    container_client.api.remove_container(container.id, force=True)
    container.exec(["true"])

@pytest.mark.container(
    "{BUSYBOX}", command=["sh", "-c", "sleep 1; tail /dev/zero"],
    options={{"mem_limit": "32m", "memswap_limit": "32m"}},
)
def test_oom(container):
    deadline = time.monotonic() + 60
    while container.status == "running" and time.monotonic() < deadline:
        time.sleep(0.2)
        container.reload()
    container.exec(["true"])

@pytest.mark.container("{BUSYBOX}", command=["sleep", "300"])
def test_own_failure(container):
    assert container.exec(["false"]).exit_code == 0
"""


def test_a_container_killed_or_removed_from_outside_fails_its_test_saying_which(
    run_suite: InnerRuns, pytester: pytest.Pytester, docker_client: docker.DockerClient
) -> None:
    pytester.makepyfile(FROM_OUTSIDE_SUITE)
    result = run_suite("-rf")
    result.assert_outcomes(failed=4)
    result.stdout.fnmatch_lines_random(
        [
            "ContainerError: *::test_killed: the container * was killed from outside (SIGKILL*",
            "ContainerError: *::test_removed: the container * was removed from outside*",
            "ContainerError: *::test_oom: the container * was OOM-killed (out of memory*",
            "E       AssertionError: assert 1 == 0",
        ]
    )
    assert "docker.errors" not in result.stdout.str()
    assert run_suite.leftovers(docker_client) == []


OWN_ERRORS_SUITE = f"""
import socket
import pytest

@pytest.mark.container("{BUSYBOX}", command=["sleep", "300"])
def test_opens_a_missing_file(container):
    open("/no/such/file/of/the/test")

@pytest.mark.container("{BUSYBOX}", command=["sleep", "300"])
def test_dials_a_closed_port(container):
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    socket.create_connection(("127.0.0.1", port), timeout=5)
"""


def test_a_tests_own_missing_file_or_refused_connection_is_not_called_an_engine_fault(
    run_suite: InnerRuns, pytester: pytest.Pytester, docker_client: docker.DockerClient
) -> None:
    """A FileNotFoundError or a ConnectionRefusedError is how the engine's socket fails,
    but a test's own one, with the engine answering, is the test's failure as it is."""
    pytester.makepyfile(OWN_ERRORS_SUITE)
    result = run_suite("-rf")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines_random(
        [
            "E *FileNotFoundError: *no/such/file/of/the/test*",
            "E *ConnectionRefusedError: *",
        ]
    )
    assert "EngineUnavailableError" not in result.stdout.str()
    assert run_suite.leftovers(docker_client) == []


def test_an_oom_kill_the_engine_recorded_after_the_exit_is_still_an_oom_kill(
    docker_client: docker.DockerClient, busybox: Image
) -> None:
    # What dockerd says on a busy machine when it handled the exit before the OOM:
    # OOMKilled false. Its oom event says otherwise, and has the last word.
    hog = docker_client.containers.run(
        busybox.id, ["tail", "/dev/zero"], mem_limit="32m", memswap_limit="32m", detach=True
    )
    try:
        hog.wait(timeout=60)
        attrs = docker_client.api.inspect_container(str(hog.id))
        assert attrs["State"]["ExitCode"] == 137
        exit_first = {**attrs, "State": {**attrs["State"], "OOMKilled": False}}
        assert oom_killed(docker_client, exit_first)
    finally:
        hog.remove(force=True)


def test_a_container_with_a_memory_limit_killed_from_outside_is_not_called_oom_killed(
    docker_client: docker.DockerClient, busybox: Image
) -> None:
    sleeper = docker_client.containers.run(
        busybox.id, ["sleep", "300"], mem_limit="32m", memswap_limit="32m", detach=True
    )
    try:
        sleeper.kill()
        sleeper.wait(timeout=60)
        said = container_fault(docker_client, str(sleeper.id), "sleeper")
        assert said is not None
        assert "was killed from outside (SIGKILL, exit code 137" in str(said)
    finally:
        sleeper.remove(force=True)


SHARED_DIES_SUITE = f"""
import pytest

SHARED = pytest.mark.container("{BUSYBOX}", command=["sleep", "300"], scope="{{scope}}", name="s")

@SHARED
def test_0_kill_it(containers, container_client):
    container_client.api.kill(containers["s"].id)

@SHARED
def test_1_replaced(containers):
    assert containers["s"].exec(["true"]).exit_code == 0

@SHARED
def test_2_remove_it_too(containers, container_client):
    container_client.api.remove_container(containers["s"].id, force=True)

@SHARED
def test_3_not_again(containers):
    pass

@SHARED
def test_4_not_again(containers):
    pass
"""


@pytest.mark.parametrize("scope", ["session", "run"])
def test_a_shared_container_found_dead_is_replaced_once_then_fails_in_one_line(
    run_suite: InnerRuns, pytester: pytest.Pytester, docker_client: docker.DockerClient,
    scope: str,
) -> None:  # fmt: skip
    pytester.makepyfile(SHARED_DIES_SUITE.format(scope=scope))
    result = run_suite()
    result.assert_outcomes(passed=3, errors=2)
    if scope == "run":
        said = "the run-scoped container of * died again after it was replaced once*"
    else:
        said = "the container * was removed from outside*it was replaced once already*"
    result.stdout.fnmatch_lines([f"*::test_3_not_again: {said}", f"*::test_4_not_again: {said}"])
    assert "Traceback" not in result.stdout.str()
    assert run_suite.leftovers(docker_client) == []
