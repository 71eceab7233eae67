"""Finding the Docker engine: one bounded connection attempt and a clear error."""

from __future__ import annotations

import os

import docker
import docker.errors
import requests.exceptions

from pytest_containers.errors import EngineUnavailableError

DEFAULT_SOCKET = "unix:///var/run/docker.sock"


def engine_location() -> str:
    """Where docker-py will look for the engine, as a user would write it."""
    host = os.environ.get("DOCKER_HOST")
    return f"DOCKER_HOST={host}" if host else f"the default socket {DEFAULT_SOCKET}"


def connect(*, connect_timeout: float = 5.0, timeout: float = 300.0) -> docker.DockerClient:
    """Connect to the engine named by DOCKER_HOST (or the default socket) and ping it.

    The ping is bounded by ``connect_timeout`` so that a missing engine fails in seconds;
    later calls get ``timeout``. Raises :class:`EngineUnavailableError` naming what was tried.
    """
    try:
        client = docker.DockerClient.from_env(timeout=int(max(connect_timeout, 1)))
        client.ping()
    except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as error:
        raise EngineUnavailableError(
            f"no Docker engine answered at {engine_location()}: {error}. Start Docker "
            "(e.g. `dockerd` or `systemctl start docker`), or point DOCKER_HOST at a running "
            "engine; tests that need no container are not affected."
        ) from None
    client.api.timeout = int(timeout)
    return client
