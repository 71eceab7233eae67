"""Running containers: how one is started and made ready (:func:`start_container`), and
the handle a test gets (:class:`Container`). What a test declares is a
:class:`~pytest_containers._containers.spec.ContainerSpec` (re-exported here); files are copied in
and out by :mod:`pytest_containers._containers.copy`.

Containers are always created from an image id already present in the engine; nothing
here pulls.
"""

from __future__ import annotations

import math
import os
import tarfile
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, cast

import docker
import docker.errors
import docker.models.containers

from pytest_containers._base.image import Image
from pytest_containers._containers.copy import extract, tar_of
from pytest_containers._containers.logs import MAX_LOG_BYTES, read_log_tail
from pytest_containers._containers.networks import Network
from pytest_containers._containers.probes import exit_reason, normalize_port
from pytest_containers._containers.spec import ContainerSpec
from pytest_containers._engine.connection import (
    Access,
    access_for,
    docker_time,
    is_kubedock,
    is_podman,
)
from pytest_containers._engine.streams import LogFollower, follow_logs, run_exec
from pytest_containers.errors import ContainerStartupError, NetworkError, PortNotPublishedError
from pytest_containers.wait import PortWait, WaitFailed, WaitStrategy, wait_until_ready

__all__ = [
    "Container",
    "ContainerSpec",
    "ExecResult",
    "remove_container",
    "start_container",
]

#: How many lines of a failed container's logs an error carries.
LOG_TAIL_LINES = 20


@dataclass(frozen=True)
class ExecResult:
    """What a command run in a container left: its exit code and its separate outputs."""

    exit_code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        """stdout followed by stderr."""
        return self.stdout + self.stderr


# --- the container -----------------------------------------------------------------------


class Container:
    """A running container made for a test.

    :attr:`host` and :meth:`port` (together :meth:`address`) say where the test reaches
    a port of it; ``raw`` is the docker-py container for anything this class does not
    cover. ``attrs`` is the engine's inspect data as of the last :meth:`reload`.
    """

    def __init__(
        self,
        raw: docker.models.containers.Container,
        image: Image,
        spec: ContainerSpec,
        *,
        access: Access,
        wait_timeout: float = 60.0,
    ) -> None:
        self.raw = raw
        self.id: str = cast(str, raw.id)
        self.name: str = cast(str, raw.name)
        self.image = image
        self.spec = spec
        #: How this process reaches the container (see :func:`_engine.access_for`).
        self.access = access
        self.wait_timeout = wait_timeout
        #: Logs written before this moment (a Unix time) belong to an earlier run; the
        #: log wait of :meth:`start` skips them.
        self.logs_since: float | None = None
        #: The network ``network=`` put it on (``None``: Docker's default or a mode).
        self.network: Network | None = None

    def __repr__(self) -> str:
        return f"<Container {self.name} {self.id[:12]} image={self.image.ref!r}>"

    @property
    def attrs(self) -> dict[str, Any]:
        """The engine's inspect data as of the last :meth:`reload`."""
        return self.raw.attrs

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
    def status(self) -> str:
        """``"running"``, ``"exited"``, ... as of the last :meth:`reload`."""
        return str((self.attrs.get("State") or {}).get("Status", "unknown"))

    @property
    def labels(self) -> dict[str, str]:
        """The container's labels."""
        return dict((self.attrs.get("Config") or {}).get("Labels") or {})

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
        container_port: int | str,
        scheme: str = "http",
        path: str = "",
        internal: bool = False,
    ) -> str:
        """A URL of ``container_port``: for the test, through the published port
        (``redis://127.0.0.1:49153``); with ``internal=True``, for another container on
        its network (``redis://cache:6379``)."""
        __tracebackhide__ = True
        if internal:
            host, port = self.internal_address(container_port)
        else:
            host, port = self.address(container_port)
        if ":" in host:
            host = f"[{host}]"  # an IPv6 address
        if path and not path.startswith("/"):
            path = f"/{path}"
        return f"{scheme}://{host}:{port}{path}"

    def exec(
        self,
        cmd: str | Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        user: str | None = None,
        workdir: str | None = None,
    ) -> ExecResult:
        """Run ``cmd`` in the container and return its exit code and separate outputs.

        A ``str`` is split into words like a shell would, but no shell runs it; pass
        ``["sh", "-c", "..."]`` for shell syntax.
        """
        command = cmd if isinstance(cmd, str) else list(cmd)
        exit_code, stdout, stderr = run_exec(
            cast("docker.DockerClient", self.raw.client),
            str(self.raw.id),
            command,
            environment=dict(env) if env else None,
            user=user or "",
            workdir=workdir,
        )
        return ExecResult(
            exit_code=exit_code,
            stdout=stdout.decode(errors="replace"),
            stderr=stderr.decode(errors="replace"),
        )

    def follow_logs(self) -> LogFollower:
        """Follow the output of the container's current run as it comes (the lines of a
        run before :meth:`start` are left out); ``close()`` ends the iteration."""
        return follow_logs(self.raw, since=self.logs_since)

    @property
    def on_podman(self) -> bool:
        """Whether the engine running the container is podman."""
        client = self.raw.client
        return client is not None and is_podman(client)

    def logs(self, *, tail: int | None = None) -> str:
        """The container's output so far (stdout and stderr interleaved), or its last
        ``tail`` lines."""
        data = self.raw.logs(stdout=True, stderr=True, tail="all" if tail is None else tail)
        return data.decode(errors="replace")

    def copy_to(self, host_path: str | os.PathLike[str], container_path: str) -> None:
        """Copy a file or a directory (recursively) into the container, as ``docker cp``
        does: into ``container_path`` when it ends with ``/`` or is an existing directory,
        else to ``container_path`` itself.

        Missing parent directories are created. Copies are owned by root and keep their
        permission bits.
        """
        source = Path(host_path)
        if not source.exists():
            raise FileNotFoundError(f"nothing to copy at {source}")
        target = PurePosixPath(container_path)
        if not target.is_absolute():
            raise ValueError(f"container_path must be an absolute path: {container_path}")
        if container_path.endswith("/") or self._is_directory(str(target)):
            target = target / source.name
        try:
            self.raw.put_archive(str(target.parent), tar_of(source, target.name))
        except docker.errors.NotFound:
            # The parent is missing: unpack at / with the whole path so the engine makes it.
            self.raw.put_archive("/", tar_of(source, str(target.relative_to("/"))))

    def _is_directory(self, container_path: str) -> bool:
        if container_path == "/":
            return True
        try:
            stream, stat = self.raw.get_archive(container_path)
        except docker.errors.NotFound:
            return False
        close = getattr(stream, "close", None)
        if close is not None:
            close()  # only the stat header was wanted, not the archive
        # Go's os.ModeDir bit, as the engine reports file modes.
        return bool(int((stat or {}).get("mode", 0)) & (1 << 31))

    def copy_from(self, container_path: str, host_path: str | os.PathLike[str]) -> None:
        """Copy the file or directory at ``container_path`` to ``host_path``, which it
        becomes (a directory's content is merged into an existing one). Links that would
        point outside ``host_path`` are skipped."""
        stream, stat = self.raw.get_archive(container_path)
        top = str((stat or {}).get("name") or PurePosixPath(container_path).name)
        with tempfile.TemporaryFile() as spool:
            for chunk in stream:
                spool.write(chunk)
            spool.seek(0)
            with tarfile.open(fileobj=spool) as archive:
                extract(archive, top, Path(host_path))

    def reload(self) -> None:
        """Inspect the container again: state, ports, ..."""
        self.raw.reload()

    def stop(self, timeout: float = 10) -> None:
        """Stop the container, killing it after ``timeout`` seconds."""
        self.raw.stop(timeout=math.ceil(timeout))
        self.reload()

    def start(self) -> None:
        """Start a stopped container and wait until it is ready again (the spec's wait, or
        its published ports). Host ports may change: :meth:`port` tells the new ones.

        Raises :class:`ContainerStartupError` if it does not become ready; the container
        is left for its owner to remove.
        """
        self.reload()
        # Only lines of the new run may satisfy a log wait.
        self.logs_since = docker_time((self.attrs.get("State") or {}).get("FinishedAt"))
        try:
            self.raw.start()
        except docker.errors.APIError as exc:
            raise self._startup_error(f"could not start: {exc.explanation}", None) from None
        self.reload()
        self._wait_ready()

    def restart(self) -> None:
        """Stop and start the container, waiting until it is ready again."""
        self.stop()
        self.start()

    def _wait_ready(self) -> None:
        strategy = _default_wait(self)
        if strategy is None:
            reason = exit_reason(self.attrs.get("State") or {})
            if reason is not None:
                raise self._startup_error(reason, None)
            return
        try:
            wait_until_ready(self, strategy, default_timeout=self.wait_timeout)
        except WaitFailed as exc:
            raise self._startup_error_from_wait(exc, strategy) from None

    def _startup_error_from_wait(
        self, exc: WaitFailed, strategy: WaitStrategy
    ) -> ContainerStartupError:
        wait = strategy.describe()
        if exc.exited:
            return self._startup_error(f"{exc.reason.removeprefix('the container ')}", strategy)
        if exc.timed_out:
            timeout = exc.timeout or (
                strategy.timeout if strategy.timeout is not None else self.wait_timeout
            )
            return self._startup_error(
                f"was not ready within {timeout:g}s waiting {wait}: {exc.reason}. If it is "
                "only slow, raise the wait's timeout= (or --container-timeout); otherwise "
                "check the wait against the logs below",
                strategy,
            )
        return self._startup_error(f"failed {wait}: {exc.reason}", strategy)

    def _startup_error(self, what: str, strategy: WaitStrategy | None) -> ContainerStartupError:
        state: dict[str, Any] = {}
        logs = ""
        try:
            self.reload()
            state = self.attrs.get("State") or {}
            client = self.raw.client
            if client is not None:
                # Lines may be long: keep the error's size bounded too.
                logs = read_log_tail(
                    client.api, self.id, lines=LOG_TAIL_LINES, max_bytes=MAX_LOG_BYTES
                ).text
        except docker.errors.APIError:
            pass  # gone already; report what is known
        status = state.get("Status")
        exit_code = state.get("ExitCode") if status in ("exited", "dead") else None
        waited = f" (waiting {strategy.describe()})" if strategy and exit_code is not None else ""
        return ContainerStartupError(
            f"container {self.name} from {self.image.ref} {what}{waited}",
            image=self.image.ref,
            container=self.name,
            state=status,
            exit_code=exit_code,
            wait=strategy.describe() if strategy else None,
            logs=logs,
        )


def _default_wait(container: Container) -> WaitStrategy | None:
    if container.spec.wait is not None:
        return container.spec.wait
    # Published UDP and SCTP ports tell nothing about readiness; TCP ones are waited on.
    if any(port.endswith("/tcp") for port in container.spec.ports):
        return PortWait(tcp_only=True)
    return None


# --- starting and removing -----------------------------------------------------------------


def _publish(spec: ContainerSpec, default_ip: str) -> dict[str, tuple[str, int | None]]:
    # A local engine publishes on loopback only; a remote one must be reachable from here.
    explicit = {port: (ip, number) for port, ip, number in spec.port_bindings}
    published: dict[str, tuple[str, int | None]] = {}
    for port in spec.ports:
        ip, number = explicit.get(port, (None, None))
        published[port] = (default_ip if ip is None else ip, number)
    return published


def start_container(
    client: docker.DockerClient,
    image: Image,
    spec: ContainerSpec,
    *,
    labels: Mapping[str, str],
    wait_timeout: float = 60.0,
    name: str | None = None,
    access: Access | None = None,
    network: Network | None = None,
) -> Container:
    """Create a container of ``image`` (by id; nothing is pulled) as ``spec`` says, start
    it and wait until it is ready.

    The wait is ``spec.wait``, else :func:`~pytest_containers.wait.for_port` on the
    published TCP ports, if any, else none. ``labels`` are added to the spec's. On any
    failure (exit, OOM kill, wait failure or timeout, engine error) the container is
    removed and :class:`ContainerStartupError` raised with its state, exit code, the wait
    and the last lines of its logs.

    ``network`` is the network to attach it to, under the spec's aliases: the one the
    spec names, or the private network the caller made for the spec's logical name.
    """
    if access is None:
        access = access_for(client)
    kwargs = spec.create_kwargs()
    if network is None and isinstance(spec.network, Network):
        network = spec.network
    if network is not None:
        kwargs["network"] = network.name
        if spec.aliases:
            config = client.api.create_endpoint_config(aliases=list(spec.aliases))
            kwargs["networking_config"] = {network.name: config}
    kwargs["labels"] = {**dict(spec.labels), **dict(labels)}
    if spec.ports:
        kwargs["ports"] = _publish(spec, access.bind_ip)
    container_name = name or spec.name
    if container_name:
        kwargs["name"] = container_name
    try:
        raw = client.containers.create(image.id, **kwargs)
    except docker.errors.APIError as exc:
        raise ContainerStartupError(
            f"could not create a container from {image.ref}: {exc.explanation}",
            image=image.ref,
            container=container_name,
            wait=spec.wait.describe() if spec.wait else None,
        ) from None
    container = Container(raw, image, spec, access=access, wait_timeout=wait_timeout)
    container.network = network
    try:
        if access.mode == "network":
            _join(client, raw, access)
        try:
            raw.start()
        except docker.errors.APIError as exc:
            raise container._startup_error(f"could not start: {exc.explanation}", None) from None
        container.reload()
        container._wait_ready()
    except BaseException:
        remove_container(container)
        raise
    return container


def _join(
    client: docker.DockerClient, raw: docker.models.containers.Container, access: Access
) -> None:
    """Attach ``raw`` to the network of the container the tests run in, unless it is on
    it already, so that the tests can dial it."""
    networks = (raw.attrs.get("NetworkSettings") or {}).get("Networks") or {}
    mode = str((raw.attrs.get("HostConfig") or {}).get("NetworkMode") or "")
    if access.network in networks or access.network == mode:
        return
    if mode == "default" and access.network == "bridge":
        return
    if access.network is None or mode == "host" or mode.startswith(("container:", "none")):
        return  # cannot join a network; its ports are reached as the spec arranged
    try:
        client.api.connect_container_to_network(str(raw.id), access.network)
    except docker.errors.APIError as exc:
        raise _join_error(raw, access, exc) from None


def _join_error(
    raw: docker.models.containers.Container, access: Access, exc: docker.errors.APIError
) -> ContainerStartupError:
    return ContainerStartupError(
        f"could not attach container {raw.name} to network {access.network!r}, where the "
        f"tests (in container {str(access.own_container)[:12]}) can reach it: "
        f"{exc.explanation}. Set --container-host to an address the tests can reach instead",
        container=str(raw.name),
    )


def remove_container(container: Container) -> None:
    """Remove ``container`` and its anonymous volumes, killing it if it runs; a container
    that is gone already is fine."""
    try:
        container.raw.remove(force=True, v=True)
    except docker.errors.NotFound:
        pass
    except docker.errors.APIError as exc:
        # Another removal of the same container is under way.
        if exc.status_code != 409 or "already in progress" not in str(exc.explanation):
            raise
