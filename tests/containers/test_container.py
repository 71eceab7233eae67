"""Starting, using and removing containers against the real engine and the seed images."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from pytest_containers._base.image import Image
from pytest_containers._containers.container import (
    Container,
    ContainerSpec,
    start_container,
)
from pytest_containers.errors import ContainerStartupError, PortNotPublishedError
from pytest_containers.wait import all_of, for_log, for_port
from tests.testenv import LABELS, RUN_ID, TEST_LABEL, Starter, free_port, http_get


@pytest.fixture(scope="module")
def sleeper(
    docker_client: docker.DockerClient, busybox: Image, no_leftovers: None
) -> Iterator[Container]:
    """One idle busybox container shared by the tests that only exec and copy."""
    starter = Starter(docker_client)
    yield starter(busybox, command=["sleep", "600"], options={"init": True})
    starter.remove_all()


# --- specs (no engine) -------------------------------------------------------------------


def test_spec_normalizes_ports_env_and_stays_hashable() -> None:
    specs = [
        ContainerSpec.from_kwargs("redis:7", ports=port, env={"A": "1", "B": 2})
        for port in (6379, "6379", "6379/tcp", [6379], ("6379/TCP",))
    ]
    assert all(spec.ports == ("6379/tcp",) for spec in specs)
    assert all(spec.env == (("A", "1"), ("B", "2")) for spec in specs)
    assert len(set(specs)) == 1
    assert ContainerSpec.from_kwargs("x", env=["B=2", "A=1"]).env == specs[0].env
    assert ContainerSpec.from_kwargs("x", ports=["53/udp", 80]).ports == ("80/tcp", "53/udp")
    loose = ContainerSpec("x", ports=("53/udp", "80", "80/tcp"))
    assert loose == ContainerSpec("x", ports=("80/tcp", "53/udp"))


def test_spec_port_mapping_form() -> None:
    spec = ContainerSpec.from_kwargs(
        "x", ports={6379: 16379, "53/udp": None, "80": ("0.0.0.0", None)}
    )
    assert spec.ports == ("80/tcp", "6379/tcp", "53/udp")
    assert spec.port_bindings == (("80/tcp", "0.0.0.0", None), ("6379/tcp", None, 16379))


def test_spec_port_zero_is_an_ephemeral_port_like_none() -> None:
    spec = ContainerSpec.from_kwargs("x", ports={6379: 0, "80": ("127.0.0.1", 0)})
    assert spec.ports == ("80/tcp", "6379/tcp")
    assert spec.port_bindings == (("80/tcp", "127.0.0.1", None),)
    assert spec == ContainerSpec.from_kwargs("x", ports={6379: None, "80": ("127.0.0.1", None)})
    with pytest.raises(ValueError, match="None or 0"):
        ContainerSpec.from_kwargs("x", ports={6379: -1})


def test_spec_options_are_frozen_and_thawed_back() -> None:
    options = {"cap_add": ["NET_ADMIN"], "ulimits": None, "sysctls": {"net.core.somaxconn": "1"}}
    one = ContainerSpec.from_kwargs(
        "x",
        command="sleep 1",
        entrypoint=["sh", "-c"],
        healthcheck={"test": ["CMD", "true"], "interval": 100_000_000},
        tmpfs={"/run": "size=1m"},
        volumes={"data": {"bind": "/data", "mode": "ro"}},
        options=options,
    )
    two = ContainerSpec.from_kwargs(
        "x",
        command="sleep 1",
        entrypoint=("sh", "-c"),
        healthcheck={"interval": 100_000_000, "test": ["CMD", "true"]},
        tmpfs=["/run:size=1m"],
        volumes=["data:/data:ro"],
        options=dict(reversed(options.items())),
    )
    assert one == two
    assert hash(one) == hash(two)
    kwargs = one.create_kwargs()
    assert kwargs["cap_add"] == ["NET_ADMIN"]
    assert isinstance(kwargs["cap_add"], list)
    assert kwargs["sysctls"] == {"net.core.somaxconn": "1"}
    assert kwargs["entrypoint"] == ["sh", "-c"]
    assert kwargs["healthcheck"] == {"test": ["CMD", "true"], "interval": 100_000_000}
    assert kwargs["tmpfs"] == {"/run": "size=1m"}
    assert kwargs["volumes"] == ["data:/data:ro"]
    assert "privileged" not in kwargs


def test_spec_rejects_unknown_and_bad_options() -> None:
    with pytest.raises(TypeError, match=r"'colour'.*valid ones are: name, ports, env"):
        ContainerSpec.from_kwargs("x", colour="blue")
    with pytest.raises(TypeError, match="use the env= keyword"):
        ContainerSpec.from_kwargs("x", options={"environment": {"A": "1"}})
    with pytest.raises(ValueError, match="1-65535"):
        ContainerSpec.from_kwargs("x", ports=70000)
    with pytest.raises(ValueError, match="protocol"):
        ContainerSpec.from_kwargs("x", ports="80/xyz")
    with pytest.raises(TypeError, match="WaitStrategy"):
        ContainerSpec.from_kwargs("x", wait="log")
    with pytest.raises(ValueError, match="KEY=VALUE"):
        ContainerSpec.from_kwargs("x", env=["NOEQUALS"])


# --- ports -----------------------------------------------------------------------------

WEB = ["sh", "-c", "mkdir -p /www && echo hello > /www/index.html && exec httpd -f -p 8080 -h /www"]


@pytest.mark.docker
def test_ports_are_published_on_loopback_and_reachable(start: Starter, busybox: Image) -> None:
    web = start(busybox, command=WEB, ports=[8080], options={"init": True})
    bindings = web.attrs["NetworkSettings"]["Ports"]["8080/tcp"]
    assert {b["HostIp"] for b in bindings} == {"127.0.0.1"}
    assert web.port(8080) == web.port("8080") == web.port("8080/tcp") > 0
    host, port = web.address(8080)
    assert host == "127.0.0.1"
    assert http_get(f"http://{host}:{port}/index.html") == (200, "hello\n")
    assert web.labels[TEST_LABEL] == RUN_ID
    assert web.attrs["HostConfig"]["Privileged"] is False
    assert web.attrs["Image"] == busybox.id

    with pytest.raises(PortNotPublishedError, match=r"port 9999/tcp .* published: 8080/tcp"):
        web.port(9999)
    with pytest.raises(PortNotPublishedError, match=r"8080/udp"):
        web.port("8080/udp")


@pytest.mark.docker
def test_fixed_host_port_mapping(start: Starter, busybox: Image) -> None:
    wanted = free_port()
    web = start(busybox, command=WEB, ports={"8080/tcp": ("127.0.0.1", wanted)})
    assert web.port(8080) == wanted
    assert http_get(f"http://127.0.0.1:{wanted}/index.html")[0] == 200


# --- exec, logs, files ---------------------------------------------------------------------


@pytest.mark.docker
def test_exec_separates_outputs_and_reports_exit_code(sleeper: Container) -> None:
    result = sleeper.exec(["sh", "-c", "echo out; echo err >&2; exit 5"])
    assert (result.exit_code, result.stdout, result.stderr) == (5, "out\n", "err\n")
    assert sleeper.exec("echo a   b").stdout == "a b\n"
    assert sleeper.exec(["sh", "-c", "echo $GREETING"], env={"GREETING": "hi"}).stdout == "hi\n"
    assert sleeper.exec(["id", "-u"], user="1234").stdout.strip() == "1234"
    assert sleeper.exec("pwd", workdir="/etc").stdout == "/etc\n"


@pytest.mark.docker
def test_logs(start: Starter, busybox: Image) -> None:
    container = start(
        busybox,
        # stdout and stderr are copied apart: a pause keeps their order in the log.
        command=["sh", "-c", "echo to-stderr >&2; sleep 0.1; echo to-stdout; echo done; sleep 600"],
        wait=for_log("done"),
        options={"init": True},
    )
    logs = container.logs()
    assert "to-stdout\n" in logs
    assert "to-stderr\n" in logs
    assert container.logs(tail=1) == "done\n"


@pytest.mark.docker
def test_copy_files_and_directories(sleeper: Container, tmp_path: Path) -> None:
    (tmp_path / "note.txt").write_text("a note\n")
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "top.txt").write_text("top\n")
    (tree / "sub" / "run.sh").write_text("#!/bin/sh\necho ran\n")
    (tree / "sub" / "run.sh").chmod(0o755)

    sleeper.copy_to(tmp_path / "note.txt", "/tmp/copied.txt")
    sleeper.copy_to(tree, "/tmp/new/parents/tree")
    assert sleeper.exec("cat /tmp/copied.txt").stdout == "a note\n"
    assert sleeper.exec("cat /tmp/new/parents/tree/top.txt").stdout == "top\n"
    assert sleeper.exec("/tmp/new/parents/tree/sub/run.sh").stdout == "ran\n"

    # As with docker cp, a trailing slash or an existing directory means "into it".
    sleeper.copy_to(tmp_path / "note.txt", "/tmp/new/")
    sleeper.copy_to(tmp_path / "note.txt", "/tmp/new/parents")
    assert sleeper.exec("cat /tmp/new/note.txt").stdout == "a note\n"
    assert sleeper.exec("cat /tmp/new/parents/note.txt").stdout == "a note\n"

    sleeper.exec(
        ["sh", "-c", "mkdir -p /tmp/out/d && echo x > /tmp/out/d/x && echo y > /tmp/out/y"]
    )
    sleeper.copy_from("/tmp/copied.txt", tmp_path / "back.txt")
    sleeper.copy_from("/tmp/out", tmp_path / "out")
    sleeper.copy_from("/tmp/new/parents/tree", tmp_path / "tree-back")
    assert (tmp_path / "back.txt").read_text() == "a note\n"
    assert (tmp_path / "out" / "y").read_text() == "y\n"
    assert (tmp_path / "out" / "d" / "x").read_text() == "x\n"
    assert (tmp_path / "tree-back" / "sub" / "run.sh").stat().st_mode & 0o777 == 0o755

    with pytest.raises(docker.errors.NotFound):
        sleeper.copy_from("/no/such/path", tmp_path / "missing")


# --- stop, start, restart -----------------------------------------------------------------


@pytest.mark.docker
def test_stop_start_restart_wait_again(start: Starter, busybox: Image) -> None:
    # "ready" only after a pause: a start that does not wait again, or that counts the
    # previous run's line, would return before it.
    command = ["sh", "-c", "sleep 0.6; echo ready; exec httpd -f -p 8080 -h /etc"]
    web = start(
        busybox,
        command=command,
        ports=[8080],
        wait=all_of(for_log("ready"), for_port(8080)),
        options={"init": True},
    )
    web.stop(timeout=2)
    assert web.status == "exited"
    with pytest.raises(PortNotPublishedError, match="exited"):
        web.port(8080)

    began = time.monotonic()
    web.start()
    assert time.monotonic() - began >= 0.5
    assert web.status == "running"
    assert http_get(f"http://{web.host}:{web.port(8080)}/hostname")[0] == 200

    began = time.monotonic()
    web.restart()
    assert time.monotonic() - began >= 0.5
    assert http_get(f"http://{web.host}:{web.port(8080)}/hostname")[0] == 200
    assert web.logs().count("ready") == 3


# --- failures ------------------------------------------------------------------------------


@pytest.mark.docker
@pytest.mark.parametrize(
    "wait", [None, for_log("never"), for_port(8080)], ids=["default", "log", "port"]
)
def test_container_that_exits_at_once_fails_fast(start: Starter, busybox: Image, wait: Any) -> None:
    began = time.monotonic()
    with pytest.raises(ContainerStartupError) as failure:
        start(
            busybox,
            command=["sh", "-c", "echo boom >&2; exit 3"],
            ports=[8080],
            wait=wait,
            wait_timeout=60,
        )
    assert time.monotonic() - began < 5
    error = failure.value
    assert error.exit_code == 3
    assert error.state == "exited"
    assert "boom" in error.logs
    assert "exited with code 3" in str(error)
    assert "boom" in str(error)
    assert error.wait == (wait or for_port()).describe()
    assert start.leftovers() == []


@pytest.mark.docker
def test_wait_timeout_names_the_wait(start: Starter, busybox: Image) -> None:
    began = time.monotonic()
    with pytest.raises(ContainerStartupError) as failure:
        start(
            busybox,
            command=["sh", "-c", "echo waiting; exec sleep 600"],
            wait=for_log("never"),
            wait_timeout=0.5,
        )
    assert time.monotonic() - began < 5
    error = failure.value
    assert error.wait == "for_log('never')"
    assert "not ready within 0.5s waiting for_log('never')" in str(error)
    assert error.state == "running"
    assert error.exit_code is None
    assert "waiting" in error.logs
    assert start.leftovers() == []


@pytest.mark.docker
def test_a_startup_error_carries_a_bounded_log_tail(start: Starter, busybox: Image) -> None:
    # 20 lines of 1 MB: the error keeps their end, at most 64 KiB of it.
    script = "for i in $(seq 20); do head -c 1000000 /dev/zero | tr '\\0' y; echo; done; exit 1"
    with pytest.raises(ContainerStartupError) as failure:
        start(busybox, command=["sh", "-c", script], wait=for_log("never"))
    logs = failure.value.logs or ""
    assert 0 < len(logs.encode()) <= 64 * 1024
    assert set(logs.strip()) == {"y"}


@pytest.mark.docker
def test_command_that_cannot_start_is_removed(start: Starter, busybox: Image) -> None:
    with pytest.raises(ContainerStartupError, match="could not start"):
        start(busybox, command=["/no/such/binary"])
    assert start.leftovers() == []


@pytest.mark.docker
def test_missing_image_is_never_pulled(docker_client: docker.DockerClient) -> None:
    missing = Image(ref="nothing:1", resolved_ref="nothing:1", id="sha256:" + "0" * 64)
    with pytest.raises(ContainerStartupError, match="could not create"):
        start_container(docker_client, missing, ContainerSpec("nothing:1"), labels=LABELS)


# --- a real service -------------------------------------------------------------------------


@pytest.mark.docker
def test_redis_ready_by_log_answers_ping(start: Starter, redis: Image) -> None:
    server = start(redis, ports=[6379], wait=for_log("Ready to accept connections"))
    with socket.create_connection(server.address(6379), timeout=5) as conn:
        conn.sendall(b"PING\r\n")
        assert conn.recv(64) == b"+PONG\r\n"
