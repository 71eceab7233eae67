"""A real service: redis, started once per test or once per module, checked over TCP."""

from __future__ import annotations

import socket

import pytest

from pytest_containers import Container, container_fixture, wait


def ping(container: Container) -> bytes:
    with socket.create_connection(container.address(6379), timeout=5) as connection:
        connection.sendall(b"PING\r\n")
        return connection.recv(64)


@pytest.mark.container("redis:7", ports=[6379], wait=wait.for_log("Ready to accept connections"))
def test_redis_answers_ping(container: Container) -> None:
    assert ping(container) == b"+PONG\r\n"


@pytest.mark.container("redis:7", "redis:latest", ports=[6379])
def test_every_redis_image_answers(container: Container) -> None:
    # One test per image: test_every_redis_image_answers[redis:7], [redis:latest].
    assert ping(container) == b"+PONG\r\n"
    assert container.image.digest is not None


shared_redis = container_fixture("redis:7", ports=[6379], scope="module")


def test_module_scoped_redis_keeps_data(shared_redis: Container) -> None:
    result = shared_redis.exec(["redis-cli", "SET", "greeting", "hello"])
    assert result.exit_code == 0


def test_module_scoped_redis_still_has_it(shared_redis: Container) -> None:
    result = shared_redis.exec(["redis-cli", "GET", "greeting"])
    assert result.stdout.strip() in ("hello", "")  # "" when this test runs on another worker


# reset= instead of a new container: one redis for the module, flushed before each test
# but its first (through a shell kept open in the container: a few ms a reset).
# Ready only once redis listens: with no ports there is no port wait, and the first exec
# must not race its start.
clean_redis = container_fixture(
    "redis:7",
    scope="module",
    reset=["redis-cli", "FLUSHALL"],
    wait=wait.for_log("Ready to accept connections"),
)


@pytest.mark.parametrize("n", range(3))
def test_each_test_sees_an_empty_redis(clean_redis: Container, n: int) -> None:
    assert clean_redis.exec(["redis-cli", "DBSIZE"]).stdout.strip() == "0"
    assert clean_redis.exec(["redis-cli", "SET", "key", str(n)]).exit_code == 0
