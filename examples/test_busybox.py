"""A tiny image: logs, exec, files, and containers started from inside a test."""

from __future__ import annotations

import http.client
from pathlib import Path

import pytest

from pytest_containers import Container, ContainerFactory, wait


@pytest.mark.container(
    "busybox",
    command=["sh", "-c", "echo started; exec sleep 300"],
    wait=wait.for_log("started"),
)
def test_logs_exec_and_files(container: Container, tmp_path: Path) -> None:
    assert "started" in container.logs()
    assert container.exec(["sh", "-c", "echo $((6 * 7))"]).stdout.strip() == "42"
    (tmp_path / "hello.txt").write_text("hello from the host\n")
    container.copy_to(tmp_path / "hello.txt", "/tmp/")
    assert container.exec(["cat", "/tmp/hello.txt"]).stdout == "hello from the host\n"


def test_http_server_from_a_factory(container_factory: ContainerFactory) -> None:
    web = container_factory(
        "busybox",
        command=["sh", "-c", "mkdir /www && echo hi > /www/index.html && httpd -f -p 8080 -h /www"],
        ports=[8080],
        wait=wait.for_http("/index.html", port=8080),
    )
    # The address the test dials: 127.0.0.1 for a local engine, the engine's host for a
    # remote one, the service's address on the network when the tests run in a container.
    host, port = web.address(8080)
    connection = http.client.HTTPConnection(host, port, timeout=5)
    connection.request("GET", "/index.html")
    assert connection.getresponse().read() == b"hi\n"
    connection.close()
