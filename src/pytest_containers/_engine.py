"""Finding the Docker engine: one bounded connection attempt and a clear error."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from pytest_containers.errors import EngineUnavailableError

if TYPE_CHECKING:
    import docker

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
    # Imported here: the report header uses this module, and docker-py is slow to import.
    import docker
    import docker.errors
    import requests.exceptions

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


def describe_engine(*, timeout: float = 0.5) -> str:
    """``"Docker 20.10.24 at unix:///var/run/docker.sock"`` for the report header.

    Asks the engine's /version over a bare socket, so that a run which starts no container
    pays neither docker-py's import nor more than a moment; says where it looked when no
    engine answers, or when it is reached in a way this probe does not speak (TLS, ssh).
    """
    import http.client
    import json
    import socket

    location = os.environ.get("DOCKER_HOST") or DEFAULT_SOCKET
    connection: http.client.HTTPConnection
    if location.startswith("unix://"):
        path = location[len("unix://") :]

        class _UnixConnection(http.client.HTTPConnection):
            def connect(self) -> None:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.settimeout(timeout)
                self.sock.connect(path)

        connection = _UnixConnection("docker", timeout=timeout)
    elif location.startswith("tcp://") and not os.environ.get("DOCKER_TLS_VERIFY"):
        address = location[len("tcp://") :].split("/", 1)[0]
        host, _, port = address.rpartition(":")
        connection = http.client.HTTPConnection(host or address, int(port or 2375), timeout=timeout)
    else:
        return f"at {location}"
    try:
        connection.request("GET", "/version")
        response = connection.getresponse()
        version = json.loads(response.read()).get("Version", "?")
    except (OSError, ValueError, http.client.HTTPException):
        return f"not answering at {location}"
    finally:
        connection.close()
    return f"Docker {version} at {location}"
