"""Networks between a test's containers: the :class:`Network` handle, and how the plugin
creates and removes the networks it owns.

A container's ``network=`` is a logical name (a private network the plugin creates for
one scope instance: one test, one module, ...), a :class:`Network` (joined, never removed
by the container), or one of Docker's own modes (``bridge``, ``host``, ``none``,
``container:<id>``), passed through as ``docker run --network`` takes it.

pytest-free; the manager decides when a network is created and removed.
"""

from __future__ import annotations

import contextlib
import itertools
import re
import time
import uuid
from collections.abc import Mapping
from typing import Any, cast

import docker
import docker.errors
import docker.models.networks

from pytest_containers.errors import NetworkError

__all__ = [
    "DOCKER_MODES",
    "HOST_ACCESS_NAME",
    "Network",
    "create_network",
    "is_docker_mode",
    "network_name",
    "remove_network",
]

#: Network names that are Docker's own modes, not networks the plugin makes.
DOCKER_MODES = ("bridge", "host", "none", "default")

#: The name a container with ``host_access=True`` dials to reach the test's machine.
HOST_ACCESS_NAME = "host.docker.internal"
#: What the engine maps it to (Docker 20.10+ on Linux: the bridge gateway's address).
HOST_GATEWAY = "host-gateway"

#: The attribute that marks a fixture made by ``network_fixture`` (its module's name).
NETWORK_FIXTURE = "_pytest_containers_network"


def is_docker_mode(name: str) -> bool:
    """``bridge``, ``host``, ``none``, ``default`` or ``container:<id>``: no network to
    create, and none that takes aliases."""
    return name in DOCKER_MODES or name.startswith("container:")


class Network:
    """A Docker network containers of a test join by ``network=``.

    ``name`` is the engine's name (the plugin's own networks get a unique one, so that
    two tests running at once never share one), ``logical`` the name the test declared,
    ``id`` the engine's id and ``raw`` the docker-py network. Two handles of the same
    network are equal.
    """

    def __init__(self, raw: docker.models.networks.Network, *, logical: str | None = None) -> None:
        self.raw = raw
        self.id: str = cast(str, raw.id)
        self.name: str = cast(str, raw.name)
        self.logical: str = logical or self.name

    @classmethod
    def get(cls, client: docker.DockerClient, name: str) -> Network:
        """A handle of a network made outside the plugin (``docker network create``, a
        compose project): containers join it, and the plugin never removes it."""
        try:
            return cls(client.networks.get(name))
        except docker.errors.NotFound:
            raise NetworkError(
                f"there is no network {name!r} in the engine; create it first, or use "
                "network_fixture() to have one made for the tests",
                network=name,
            ) from None

    def __repr__(self) -> str:
        return f"<Network {self.name} {self.id[:12]}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Network) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def containers(self) -> list[str]:
        """The names of the containers attached to the network now, sorted."""
        self.raw.reload()
        attached = cast("Mapping[str, Any]", self.raw.attrs.get("Containers") or {})
        return sorted(str(entry.get("Name", key[:12])) for key, entry in attached.items())


def network_name(run_id: str, logical: str, *, unique: str | None = None) -> str:
    """A name no other run, worker or scope instance uses: the run, the logical name and
    a random suffix, like the plugin's container names; ``unique`` replaces the suffix
    for a name every process of a run must find."""
    slug = re.sub(r"[^a-zA-Z0-9_.-]+", "-", logical).strip("-")[:40] or "net"
    return f"pytest-containers-{run_id[:8]}-{slug}-{unique or uuid.uuid4().hex[:6]}"


def create_network(
    client: docker.DockerClient,
    *,
    name: str,
    logical: str,
    labels: Mapping[str, str],
    internal: bool = False,
    driver: str = "bridge",
    options: Mapping[str, Any] | None = None,
) -> Network:
    """Create a network labelled like the plugin's containers (so that the end of the
    run, the watchdog and the sweep of dead runs find it). ``options`` are more
    docker-py ``networks.create`` keywords (``ipam``, ``options`` for the driver, ...)."""
    extra = dict(options or {})
    for own in ("name", "labels", "internal", "driver", "check_duplicate"):
        if own in extra:
            hint = "use the keyword of that name" if own in ("internal", "driver") else ""
            raise NetworkError(
                f"network {logical!r}: options[{own!r}] is set by the plugin; {hint}".rstrip("; "),
                network=logical,
            )
    try:
        raw = client.networks.create(
            name, driver=driver, internal=internal, labels=dict(labels), **extra
        )
    except docker.errors.APIError as exc:
        raise NetworkError(
            f"could not create network {logical!r}: {exc.explanation or exc}",
            network=logical,
        ) from None
    except TypeError as exc:  # a keyword docker-py does not know
        raise NetworkError(
            f"network {logical!r}: {exc}; options takes docker-py networks.create keywords",
            network=logical,
        ) from None
    return Network(raw, logical=logical)


#: How long a network's removal waits for containers that are being removed to leave it.
_REMOVE_PATIENCE = 10.0


def remove_network(client: docker.DockerClient, network: Network) -> None:
    """Remove ``network``. Containers still attached (a fixture torn down before the
    containers on its network, a container joined by hand) are disconnected first, so
    that the removal never fails on "active endpoints"; a network that is gone already
    is fine. A container whose removal is under way (the background removals) cannot be
    disconnected but soon leaves by itself: the removal is tried again for a few seconds."""
    deadline = time.monotonic() + _REMOVE_PATIENCE
    for attempt in itertools.count():
        if attempt > 1:
            time.sleep(0.1)
        try:
            client.api.remove_network(network.id)
            return
        except docker.errors.NotFound:
            return
        except docker.errors.APIError as exc:
            if "active endpoints" not in str(exc.explanation or exc) or time.monotonic() > deadline:
                raise NetworkError(
                    f"could not remove network {network.logical!r} ({network.name}): "
                    f"{exc.explanation or exc}",
                    network=network.logical,
                ) from None
        try:
            attached = client.api.inspect_network(network.id).get("Containers") or {}
        except docker.errors.NotFound:
            return
        for container_id in attached:
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                client.api.disconnect_container_from_network(container_id, network.id, force=True)
