"""Where a container is reached, read from the engine's inspect data: by the tests
(:attr:`~Addresses.host`, :meth:`~Addresses.port`, :meth:`~Addresses.address`,
:meth:`~Addresses.url`) and by other containers on its networks (:meth:`~Addresses.ip`,
:meth:`~Addresses.internal_address`). Parts of the
:class:`~pytest_containers._containers.container.Container` handle.
"""

from __future__ import annotations

from typing import Any

import docker.models.containers

from pytest_containers._base.image import Image
from pytest_containers._containers.networks import Network
from pytest_containers._containers.probes import normalize_port
from pytest_containers._containers.spec import ContainerSpec
from pytest_containers._engine.connection import Access, is_kubedock
from pytest_containers.errors import NetworkError, PortNotPublishedError

__all__ = ["Addresses", "Inspected"]


class Inspected:
    """A container as the engine last described it (the handle sets the attributes)."""

    raw: docker.models.containers.Container
    name: str
    image: Image
    spec: ContainerSpec
    #: How this process reaches the container (see :func:`_engine.access_for`).
    access: Access
    #: The network ``network=`` put it on (``None``: Docker's default or a mode).
    network: Network | None

    @property
    def attrs(self) -> dict[str, Any]:
        """The engine's inspect data as of the last :meth:`reload`."""
        return self.raw.attrs

    @property
    def status(self) -> str:
        """``"running"``, ``"exited"``, ... as of the last :meth:`reload`."""
        return str((self.attrs.get("State") or {}).get("Status", "unknown"))

    @property
    def labels(self) -> dict[str, str]:
        """The container's labels."""
        return dict((self.attrs.get("Config") or {}).get("Labels") or {})

    def reload(self) -> None:
        """Inspect the container again: state, ports, ..."""
        self.raw.reload()


class Addresses(Inspected):
    """Ports and addresses of a container, for the tests and for its peers."""

    @property
    def host(self) -> str:
        """The address the test dials: the engine's host for published ports (127.0.0.1
        for a local engine), or the container's own address when the tests themselves run
        in a container of the engine."""
        if self.access.mode != "network":
            return self.access.host
        networks = (self.attrs.get("NetworkSettings") or {}).get("Networks") or {}
        address = str((networks.get(self.access.network) or {}).get("IPAddress") or "")
        if not address:
            self.reload()
            networks = (self.attrs.get("NetworkSettings") or {}).get("Networks") or {}
            address = str((networks.get(self.access.network) or {}).get("IPAddress") or "")
        return address

    @property
    def ports(self) -> dict[str, int]:
        """Published ports: ``{"6379/tcp": host_port}``, as of the last :meth:`reload`."""
        published: dict[str, int] = {}
        network = self.attrs.get("NetworkSettings") or {}
        for port, bindings in (network.get("Ports") or {}).items():
            if not bindings:
                continue
            # Prefer the IPv4 binding: an engine may list 0.0.0.0 and :: for one port.
            ordered = sorted(bindings, key=lambda b: ":" in str(b.get("HostIp", "")))
            for binding in ordered:
                if str(binding.get("HostPort", "")).isdigit():
                    published[port] = int(binding["HostPort"])
                    break
        return published

    def port(self, container_port: int | str) -> int:
        """The port the test dials for ``container_port`` (``6379``, ``"6379"``,
        ``"6379/tcp"``): the host port it is published on, as currently bound (it changes
        when the container is started again), or the container port itself when the tests
        run in a container of the engine and dial containers directly. Raises
        :class:`PortNotPublishedError` naming the published ones."""
        __tracebackhide__ = True  # the user's call is the interesting frame, not this one
        key = normalize_port(container_port)
        if self.access.mode == "network":
            return int(key.split("/")[0])
        published = self.ports
        if key in published:
            return published[key]
        listed = ", ".join(sorted(published)) or "none"
        state = "" if self.status == "running" else f" (the container is {self.status})"
        raise PortNotPublishedError(
            f"port {key} of container {self.name} is not published; published: {listed}{state}",
            image=self.image.ref,
            container=self.name,
        )

    def address(self, container_port: int | str) -> tuple[str, int]:
        """``(host, port)`` the test connects to for ``container_port`` (see :attr:`host`
        and :meth:`port`), as bound now: the engine picks new ephemeral host ports when the
        container is started again (:meth:`start`, :meth:`restart`), so ask again after
        those rather than keeping the old address."""
        __tracebackhide__ = True
        return self.host, self.port(container_port)

    def _networks(self) -> dict[str, Any]:
        return dict((self.attrs.get("NetworkSettings") or {}).get("Networks") or {})

    def _network_name(self, network: str | Network | None) -> str:
        """The engine's name of ``network``: a Network, its logical or engine name, or
        ``None`` for the one ``network=`` chose (else the only one the container is on)."""
        __tracebackhide__ = True
        attached = self._networks()
        if isinstance(network, Network):
            wanted: str | None = network.name
        elif network is None:
            wanted = self.network.name if self.network is not None else None
            if wanted is None and len(attached) == 1:
                wanted = next(iter(attached))
        elif self.network is not None and network in (self.network.logical, self.network.name):
            wanted = self.network.name
        else:
            wanted = network
        if wanted is None or wanted not in attached:
            listed = ", ".join(sorted(attached)) or "none"
            asked = "which network" if wanted is None else f"network {wanted!r}"
            raise NetworkError(
                f"container {self.name} is on networks {listed}: say {asked} by "
                "network=<a name or a Network> it joined",
                network=wanted,
                image=self.image.ref,
                container=self.name,
            )
        return wanted

    def ip(self, network: str | Network | None = None) -> str:
        """The container's address on ``network`` (by default the one ``network=``
        put it on), for another container on that network to dial."""
        __tracebackhide__ = True
        name = self._network_name(network)
        if self.raw.client is not None and is_kubedock(self.raw.client):
            # kubedock flattens networks and says 127.0.0.1 for every container: an
            # address would lead another container to itself.
            raise NetworkError(
                f"container {self.name} has no address of its own on kubedock, which "
                "flattens networks: give it aliases=['name'] and ports=[...] (kubedock "
                "makes each alias a Kubernetes Service for those ports) and dial the alias",
                network=name,
                image=self.image.ref,
                container=self.name,
            )
        address = str(self._networks()[name].get("IPAddress") or "")
        if not address:
            self.reload()
            address = str(self._networks().get(name, {}).get("IPAddress") or "")
        if not address:
            raise NetworkError(
                f"container {self.name} has no address on network {name} "
                f"(the container is {self.status})",
                network=name,
                image=self.image.ref,
                container=self.name,
            )
        return address

    def internal_address(
        self, container_port: int | str, network: str | Network | None = None
    ) -> tuple[str, int]:
        """``(name, port)`` another container on ``network`` dials to reach
        ``container_port``: the first of ``aliases=`` (on the network ``network=``
        chose), else the container's address on that network; the port is the
        container's own, not the published one."""
        __tracebackhide__ = True
        port = int(normalize_port(container_port).partition("/")[0])
        name = self._network_name(network)
        own = self.network is not None and name == self.network.name
        if own and self.spec.aliases:
            return self.spec.aliases[0], port
        return self.ip(name), port

    def url(
        self,
        container_port: int | str | None = None,
        scheme: str = "http",
        path: str = "",
        internal: bool = False,
        *,
        driver: str = "",
    ) -> str:
        """A URL of ``container_port``: for the test, through the published port
        (``redis://127.0.0.1:49153``); with ``internal=True``, for another container on
        its network (``redis://cache:6379``).

        Without a port, the container's own URL from its ``urls=`` templates (a preset's:
        ``postgresql://test:test@127.0.0.1:49153/test``); ``driver`` picks another of
        them (``driver="asyncpg"``: ``postgresql+asyncpg://...``)."""
        __tracebackhide__ = True
        if container_port is None:
            return self._url_of_template(driver, internal)
        if internal:
            host, port = self.internal_address(container_port)
        else:
            host, port = self.address(container_port)
        if path and not path.startswith("/"):
            path = f"/{path}"
        return f"{scheme}://{_bracketed(host)}:{port}{path}"

    def _url_of_template(self, driver: str, internal: bool) -> str:
        __tracebackhide__ = True
        templates = dict(self.spec.urls)
        if driver not in templates:
            if not templates:
                raise PortNotPublishedError(
                    f"container {self.name} ({self.spec.image}) has no URL of its own: pass "
                    "the port, url(6379, 'redis'), or declare urls={'': 'redis://{host}:"
                    "{port}'} (presets do)",
                    image=self.image.ref,
                    container=self.name,
                )
            known = ", ".join(repr(name) for name in sorted(templates) if name)
            raise PortNotPublishedError(
                f"container {self.name} ({self.spec.image}) has no URL for driver "
                f"{driver!r}; its drivers are: {known or 'none but the default'}",
                image=self.image.ref,
                container=self.name,
            )
        return fill_url(templates[driver], self, internal=internal)


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host  # an IPv6 address


class _TemplatePorts:
    """``{port}`` (the first declared port) and ``{port[5432]}`` in a URL template."""

    def __init__(self, where: Addresses, internal: bool) -> None:
        self._where = where
        self._internal = internal

    def __getitem__(self, port: int | str) -> int:
        if self._internal:
            return self._where.internal_address(port)[1]
        return self._where.address(port)[1]

    def __format__(self, spec: str) -> str:
        return format(self[self._where.spec.ports[0]], spec)


class _Quoted(dict[str, str]):
    """``{env[NAME]}``: the container's environment, quoted for a URL's user, password
    and path."""

    def __missing__(self, key: str) -> str:
        raise KeyError(f"env[{key!r}] (the container sets no {key})")

    def __getitem__(self, key: str) -> str:
        from urllib.parse import quote

        return quote(super().__getitem__(key), safe="")


def fill_url(template: str, where: Addresses, *, internal: bool = False) -> str:
    """A URL template filled for ``where``: ``{host}`` and ``{port}``/``{port[N]}`` as the
    tests reach it (``internal``: as its peers on its network do), ``{env[NAME]}`` from
    its declared environment."""
    ports = where.spec.ports
    if internal:
        host = where.internal_address(ports[0])[0] if ports else where.ip()
    else:
        host = where.address(ports[0])[0] if ports else where.host
    fields = {
        "host": _bracketed(host),
        "port": _TemplatePorts(where, internal),
        "env": _Quoted(where.spec.env),
    }
    return template.format_map(fields)
