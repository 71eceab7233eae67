"""Running containers: how one is started and made ready (:func:`start_container`), and
the handle a test gets (:class:`Container`). What a test declares is a
:class:`~pytest_containers._containers.spec.ContainerSpec` (re-exported here). The handle's
ports and addresses come from :mod:`pytest_containers._containers.addresses`, its files in
and out from :mod:`pytest_containers._containers.copy`.

Containers are always created from an image id already present in the engine; nothing
here pulls.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import docker
import docker.errors
import docker.models.containers

from pytest_containers._base.image import Image
from pytest_containers._containers.addresses import Addresses
from pytest_containers._containers.copy import Files
from pytest_containers._containers.logs import MAX_LOG_BYTES, read_log_tail
from pytest_containers._containers.networks import Network
from pytest_containers._containers.probes import exit_reason
from pytest_containers._containers.spec import ContainerSpec
from pytest_containers._engine.connection import (
    Access,
    access_for,
    docker_time,
    is_podman,
)
from pytest_containers._engine.streams import LogFollower, follow_logs, run_exec
from pytest_containers.errors import ContainerStartupError
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


class Container(Addresses, Files):
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


def _create_kwargs(
    client: docker.DockerClient,
    spec: ContainerSpec,
    labels: Mapping[str, str],
    access: Access,
    network: Network | None,
    name: str | None,
) -> dict[str, Any]:
    """docker-py's ``create()`` arguments for ``spec``, with the process's ``labels``,
    on ``network`` under the spec's aliases, its ports published where tests reach them."""
    kwargs = spec.create_kwargs()
    if network is not None:
        kwargs["network"] = network.name
        if spec.aliases:
            config = client.api.create_endpoint_config(aliases=list(spec.aliases))
            kwargs["networking_config"] = {network.name: config}
    kwargs["labels"] = {**dict(spec.labels), **dict(labels)}
    if spec.ports:
        kwargs["ports"] = _publish(spec, access.bind_ip)
    if name:
        kwargs["name"] = name
    return kwargs


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
    if network is None and isinstance(spec.network, Network):
        network = spec.network
    container_name = name or spec.name
    kwargs = _create_kwargs(client, spec, labels, access, network, container_name)
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
