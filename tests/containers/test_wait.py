"""Wait strategies against the real engine: each ends when the service is ready, not
before, and fails at once when the container dies or the wait cannot be satisfied."""

from __future__ import annotations

import contextlib
import io
import re
import socket
import time
import uuid
from collections.abc import Iterator

import docker
import docker.errors
import pytest

from pytest_containers._base.image import Image
from pytest_containers._containers.container import Container, ContainerSpec
from pytest_containers._containers.probes import listening
from pytest_containers.errors import ContainerStartupError
from pytest_containers.wait import (
    WaitFailed,
    WaitStrategy,
    all_of,
    for_exec,
    for_healthy,
    for_http,
    for_log,
    for_port,
)
from tests.testenv import REGISTRY, Starter, http_get

BUSYBOX_REF = f"{REGISTRY}/library/busybox:1.35"
# Fast health checks: every 100 ms (durations in ns, as docker-py takes them).
FAST_HEALTH = {"interval": 100_000_000, "timeout": 1_000_000_000, "retries": 2}


def build_image(client: docker.DockerClient, dockerfile: str) -> Image:
    """Build a small image on top of the busybox seed under a tag of its own."""
    tag = f"pytest-containers-test-{uuid.uuid4().hex[:12]}:1"
    built, _ = client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=tag, rm=True)
    return Image(ref=tag, resolved_ref=tag, id=str(built.id), source="built")


def remove_tag(client: docker.DockerClient, tag: str) -> None:
    with contextlib.suppress(docker.errors.ImageNotFound):
        client.images.remove(tag)


@pytest.fixture(scope="session")
def images(docker_client: docker.DockerClient, busybox: Image) -> Iterator[dict[str, Image]]:
    """Images built for these tests: one with a HEALTHCHECK, one without a shell."""
    built = {
        "healthcheck": build_image(
            docker_client,
            f"FROM {BUSYBOX_REF}\n"
            "HEALTHCHECK --interval=100ms --timeout=1s --retries=2 CMD test -f /tmp/ready\n",
        ),
        # RUN itself needs the shell; it removes it as its last act.
        "no-shell": build_image(docker_client, f"FROM {BUSYBOX_REF}\nRUN rm /bin/sh\n"),
    }
    yield built
    for image in built.values():
        remove_tag(docker_client, image.ref)


def sh(script: str) -> list[str]:
    return ["sh", "-c", script]


def wait_directly(container: Container, strategy: WaitStrategy, timeout: float = 30) -> float:
    """Run ``strategy`` on a container that is already up; returns the seconds it took."""
    began = time.monotonic()
    strategy.wait(container, began + timeout)
    return time.monotonic() - began


# --- describe (no engine) ------------------------------------------------------------------


def test_describe_says_how_the_wait_was_declared() -> None:
    assert for_log("Ready to accept connections").describe() == (
        "for_log('Ready to accept connections')"
    )
    assert for_log(re.compile(r"ready \d"), times=2).describe() == (
        "for_log(re.compile('ready \\\\d'), times=2)"
    )
    assert for_port().describe() == "for_port()"
    assert for_port("6379/tcp").describe() == "for_port(6379)"
    assert for_port("53/udp").describe() == "for_port('53/udp')"
    assert for_http().describe() == "for_http('/')"
    assert for_http("health", port=8080, status=204).describe() == (
        "for_http('/health', port=8080, status=204)"
    )
    assert for_healthy().describe() == "for_healthy()"
    assert for_exec(["test", "-f", "/x"]).describe() == "for_exec(['test', '-f', '/x'])"
    assert all_of(for_log("a"), for_port(1)).describe() == "all_of(for_log('a'), for_port(1))"
    assert str(for_healthy()) == "for_healthy()"


def test_equal_declarations_are_equal_and_hashable() -> None:
    assert for_log("x", times=2) == for_log("x", times=2)
    assert for_port(80) == for_port("80/tcp")
    assert for_exec("true") != for_exec(["true"])
    assert len({all_of(for_http(), for_healthy()), all_of(for_http(), for_healthy())}) == 1
    spec = ContainerSpec.from_kwargs("x", wait=for_log("ready", timeout=5))
    assert hash(spec) == hash(ContainerSpec.from_kwargs("x", wait=for_log("ready", timeout=5)))


def test_bad_declarations_are_refused() -> None:
    with pytest.raises(ValueError, match="times"):
        for_log("x", times=0)
    with pytest.raises(ValueError, match="non-empty"):
        for_log("")
    with pytest.raises(ValueError, match="timeout"):
        for_port(80, timeout=0)
    with pytest.raises(ValueError, match="TCP"):
        for_http(port="53/udp")
    with pytest.raises(ValueError, match="command"):
        for_exec([])
    with pytest.raises(TypeError, match="wait strategies"):
        all_of(for_port(), "for_log")  # type: ignore[arg-type]


# --- for_log -------------------------------------------------------------------------------


@pytest.mark.docker
def test_for_log_counts_matching_lines(start: Starter, busybox: Image) -> None:
    ticks = sh("for i in 1 2 3; do sleep 0.3; echo tick $i; done; exec sleep 600")
    began = time.monotonic()
    container = start(busybox, command=ticks, wait=for_log("tick", times=2), options={"init": True})
    assert time.monotonic() - began >= 0.55
    assert "tick 2" in container.logs()
    # A regex over stderr too; both earlier lines count at once.
    assert wait_directly(container, for_log(re.compile(r"^tick [12]$"), times=2)) < 1


@pytest.mark.docker
def test_for_log_fails_at_once_when_the_container_exits(start: Starter, busybox: Image) -> None:
    began = time.monotonic()
    with pytest.raises(ContainerStartupError) as failure:
        start(busybox, command=sh("sleep 0.3; echo bye; exit 4"), wait=for_log("never"))
    assert time.monotonic() - began < 5
    assert failure.value.exit_code == 4
    assert "bye" in failure.value.logs


# --- for_port ------------------------------------------------------------------------------


def proxy_accepts(host: str, port: int) -> bool:
    """Whether a bare TCP connect to a host port succeeds (docker-proxy accepts it)."""
    try:
        socket.create_connection((host, port), timeout=1).close()
    except OSError:
        return False
    return True


@pytest.mark.docker
def test_for_port_is_not_fooled_by_docker_proxy(start: Starter, busybox: Image) -> None:
    # nc listens only after a second and serves one connection with "hello".
    container = start(
        busybox,
        command=sh("sleep 1; echo hello | nc -l -p 8080"),
        ports=[8080],
        wait=for_exec("true"),
    )
    host, port = container.address(8080)
    # With docker-proxy, a connect succeeds although nothing listens yet; the check
    # inside the container must not take that for readiness.
    fooled = proxy_accepts(host, port)
    took = wait_directly(container, for_port(8080))
    assert took > 0.3, f"ready after {took:.2f}s although nc sleeps for 1s (proxy: {fooled})"
    with socket.create_connection((host, port), timeout=5) as conn:
        assert conn.recv(16) == b"hello\n"


@pytest.mark.docker
def test_for_port_falls_back_to_the_host_without_a_shell(
    start: Starter, images: dict[str, Image]
) -> None:
    began = time.monotonic()
    container = start(
        images["no-shell"],
        command=["busybox", "sh", "-c", "sleep 1; exec busybox httpd -f -p 8080 -h /etc"],
        ports=[8080],
        options={"init": True},
    )
    assert time.monotonic() - began >= 0.9
    assert container.exec("sh").exit_code == 126
    assert http_get(f"http://{container.host}:{container.port(8080)}/hostname")[0] == 200
    # Unpublished ports cannot be checked from the host: that fails at once.
    with pytest.raises(WaitFailed, match="not published and the image has no shell"):
        wait_directly(container, for_port(9090), timeout=30)


@pytest.mark.docker
def test_for_port_does_not_accept_a_loopback_only_listener(start: Starter, busybox: Image) -> None:
    container = start(
        busybox,
        command=sh("httpd -f -p 127.0.0.1:8080 -h /etc"),
        ports=[8080],
        wait=for_exec("true"),
        options={"init": True},
    )
    with pytest.raises(WaitFailed, match="listens only on loopback"):
        wait_directly(container, for_port(8080), timeout=0.5)


@pytest.mark.docker
def test_for_port_checks_unpublished_ports_inside(start: Starter, busybox: Image) -> None:
    container = start(
        busybox,
        command=sh("sleep 0.3; nc -l -p 7000 & exec sleep 600"),
        wait=for_exec("true"),
        options={"init": True},
    )
    assert wait_directly(container, for_port(7000)) >= 0.1


def test_socket_tables_are_read_like_the_kernel_writes_them() -> None:
    tables = """#tcp
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid
   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0
   1: 0100007F:18EB 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0
   2: 0200A8C0:0050 0100A8C0:D2F0 01 00000000:00000000 00:00000000 00000000     0
#tcp6
   0: 00000000000000000000000001000000:1538 00000000000000000000000000000000:0000 0A 0
   1: 0000000000000000FFFF00000100007F:0BB8 00000000000000000000000000000000:0000 0A 0
#udp
   0: 00000000:14E9 00000000:0000 07 00000000:00000000 00:00000000 00000000     0
"""
    assert listening(tables) == {
        "8080/tcp": True,  # 0.0.0.0
        "6379/tcp": False,  # 127.0.0.1 only
        "5432/tcp": False,  # ::1 only
        "3000/tcp": False,  # ::ffff:127.0.0.1 only
        "5353/udp": True,
    }  # port 80 is an established connection, not a listener


# --- for_http ------------------------------------------------------------------------------

WEB_LATE = sh(
    "mkdir -p /www && echo hello > /www/index.html && sleep 0.5 && exec httpd -f -p 8080 -h /www"
)


@pytest.mark.docker
def test_for_http_waits_for_the_status(start: Starter, busybox: Image) -> None:
    began = time.monotonic()
    web = start(
        busybox,
        command=WEB_LATE,
        ports=[8080],
        wait=for_http("/index.html"),
        options={"init": True},
    )
    assert time.monotonic() - began >= 0.45
    assert http_get(f"http://{web.host}:{web.port(8080)}/index.html") == (200, "hello\n")
    assert wait_directly(web, for_http("/missing", status=404)) < 1
    with pytest.raises(WaitFailed, match=r"timed out.*-> 404"):
        wait_directly(web, for_http("/missing"), timeout=0.3)


@pytest.mark.docker
def test_for_http_needs_a_port_when_several_are_published(start: Starter, busybox: Image) -> None:
    web = start(busybox, command=WEB_LATE, ports=[8080, 9090], wait=for_port(8080))
    with pytest.raises(WaitFailed, match="needs port="):
        wait_directly(web, for_http("/index.html"))
    assert wait_directly(web, for_http("/index.html", port=8080)) < 1


# --- for_healthy ---------------------------------------------------------------------------


@pytest.mark.docker
def test_for_healthy_with_an_image_healthcheck(start: Starter, images: dict[str, Image]) -> None:
    began = time.monotonic()
    container = start(
        images["healthcheck"],
        command=sh("sleep 0.5; touch /tmp/ready; exec sleep 600"),
        wait=for_healthy(),
        options={"init": True},
    )
    assert time.monotonic() - began >= 0.45
    assert container.attrs["State"]["Health"]["Status"] == "healthy"


@pytest.mark.docker
def test_for_healthy_with_a_container_healthcheck(start: Starter, busybox: Image) -> None:
    container = start(
        busybox,
        command=sh("sleep 0.3; touch /tmp/ready; exec sleep 600"),
        healthcheck={"test": ["CMD", "test", "-f", "/tmp/ready"], **FAST_HEALTH},
        wait=for_healthy(),
        options={"init": True},
    )
    assert container.attrs["State"]["Health"]["Status"] == "healthy"


@pytest.mark.docker
def test_for_healthy_without_healthcheck_fails_at_once(start: Starter, busybox: Image) -> None:
    began = time.monotonic()
    with pytest.raises(ContainerStartupError, match="defines a HEALTHCHECK") as failure:
        start(busybox, command=["sleep", "600"], wait=for_healthy(), wait_timeout=60)
    assert time.monotonic() - began < 3
    assert failure.value.wait == "for_healthy()"
    assert failure.value.state == "running"

    idle = start(busybox, command=["sleep", "600"], options={"init": True})
    began = time.monotonic()
    with pytest.raises(WaitFailed, match="HEALTHCHECK"):
        wait_directly(idle, for_healthy())
    assert time.monotonic() - began < 0.5


@pytest.mark.docker
def test_for_healthy_timeout_tells_the_last_check(start: Starter, busybox: Image) -> None:
    with pytest.raises(ContainerStartupError, match=r"health is unhealthy .*exit code 1, 'nope'"):
        start(
            busybox,
            command=["sleep", "600"],
            healthcheck={"test": ["CMD", "sh", "-c", "echo nope; false"], **FAST_HEALTH},
            wait=for_healthy(timeout=1),
        )


# --- for_exec and all_of -------------------------------------------------------------------


@pytest.mark.docker
def test_for_exec_waits_for_exit_code_zero(start: Starter, busybox: Image) -> None:
    began = time.monotonic()
    container = start(
        busybox,
        command=sh("sleep 0.5; touch /tmp/ready; exec sleep 600"),
        wait=for_exec("test -f /tmp/ready"),
        options={"init": True},
    )
    assert time.monotonic() - began >= 0.45
    with pytest.raises(WaitFailed, match="cannot run"):
        wait_directly(container, for_exec(["no-such-command"]))
    with pytest.raises(WaitFailed, match=r"timed out.*exit code 1"):
        # Long enough for one exec to finish on a loaded machine.
        wait_directly(container, for_exec(sh("false")), timeout=3)


@pytest.mark.docker
def test_all_of_waits_for_each_in_turn(start: Starter, busybox: Image) -> None:
    began = time.monotonic()
    web = start(
        busybox,
        command=sh("echo starting; " + WEB_LATE[2]),
        ports=[8080],
        wait=all_of(for_log("starting"), for_port(8080), for_http("/index.html")),
        options={"init": True},
    )
    assert time.monotonic() - began >= 0.45
    assert http_get(f"http://{web.host}:{web.port(8080)}/index.html")[0] == 200


@pytest.mark.docker
def test_all_of_reports_a_member_timeout(start: Starter, busybox: Image) -> None:
    began = time.monotonic()
    with pytest.raises(ContainerStartupError) as failure:
        start(
            busybox,
            command=["sleep", "600"],
            wait=all_of(for_exec("true"), for_log("never", timeout=0.3)),
            wait_timeout=60,
        )
    assert time.monotonic() - began < 5
    assert "not ready within 0.3s" in str(failure.value)
    assert "for_log('never'): timed out" in str(failure.value)


# --- every wait notices a dying container --------------------------------------------------

STRATEGIES = {
    "log": for_log("never"),
    "port": for_port(8080),
    "http": for_http("/"),
    "healthy": for_healthy(),
    "exec": for_exec("false"),
    "all_of": all_of(for_port(8080), for_log("never")),
}


@pytest.mark.docker
@pytest.mark.parametrize("name", list(STRATEGIES))
def test_every_wait_fails_at_once_when_the_container_dies(
    start: Starter, busybox: Image, name: str
) -> None:
    began = time.monotonic()
    with pytest.raises(ContainerStartupError) as failure:
        start(
            busybox,
            command=sh("echo dying; sleep 0.5; exit 7"),
            ports=[8080],
            healthcheck={"test": ["CMD", "false"], "interval": 10_000_000_000},
            wait=STRATEGIES[name],
            wait_timeout=60,
        )
    assert time.monotonic() - began < 5
    error = failure.value
    assert (error.state, error.exit_code) == ("exited", 7)
    assert "exited with code 7" in str(error)
    assert "dying" in error.logs
    assert start.leftovers() == []


@pytest.mark.docker
def test_oom_kill_is_reported(start: Starter, busybox: Image) -> None:
    # Fill a tmpfs-backed shell variable past the memory limit.
    hog = sh("echo hogging; x=$(head -c 200000000 /dev/zero | tr '\\0' a); sleep 600")
    with pytest.raises(ContainerStartupError) as failure:
        start(
            busybox,
            command=hog,
            wait=for_log("never"),
            options={"mem_limit": "32m", "memswap_limit": "32m"},
            wait_timeout=30,
        )
    if failure.value.exit_code is None:
        pytest.skip(f"the engine did not enforce the memory limit: {failure.value}")
    assert "OOM-killed" in str(failure.value)
