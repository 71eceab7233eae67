"""Services that talk to each other: a client reaching redis by its alias on a network
private to each test, and clients sharing one module-scoped redis on a module network."""

from __future__ import annotations

import pytest

from pytest_containers import Container, container_fixture, network_fixture, wait

READY = wait.for_log("Ready to accept connections")


def ask(client: Container, host: str, port: int, command: str) -> str:
    # nc stops reading once its input ends: keep the input open until the answer is in.
    script = f"(printf '{command}\\r\\n'; sleep 1) | nc {host} {port}"
    return client.exec(["sh", "-c", script]).stdout


@pytest.mark.container("redis:7", name="db", network="backend", aliases=["db"], wait=READY)
@pytest.mark.container("busybox", name="client", network="backend", command=["sleep", "300"])
@pytest.mark.parametrize("n", range(4))
def test_each_test_has_its_own_db(containers: dict[str, Container], n: int) -> None:
    db, client = containers["db"], containers["client"]
    host, port = db.internal_address(6379)
    # A fresh database every time, even with four tests on two workers at once.
    assert ask(client, host, port, "INCR hits") == ":1\r\n"


backend = network_fixture(scope="module")
shared_db = container_fixture(
    "redis:7", network=backend, aliases=["shared-db"], scope="module", wait=READY
)


@pytest.mark.container("busybox", network=backend, command=["sleep", "300"])
def test_clients_share_the_module_db(container: Container, shared_db: Container) -> None:
    assert ask(container, "shared-db", 6379, "PING") == "+PONG\r\n"
