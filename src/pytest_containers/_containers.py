"""Running containers: what a test declares (:class:`ContainerSpec`), how one is started
and made ready (:func:`start_container`), and the handle a test gets (:class:`Container`).

Containers are always created from an image id already present in the engine; nothing
here pulls.
"""

from __future__ import annotations

import io
import math
import os
import tarfile
import tempfile
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any, cast

import docker
import docker.errors
import docker.models.containers

from pytest_containers._image import Image
from pytest_containers.errors import ContainerStartupError, PortNotPublishedError
from pytest_containers.wait import (
    WaitFailed,
    WaitStrategy,
    exit_reason,
    for_port,
    normalize_port,
    wait_until_ready,
)

__all__ = [
    "Container",
    "ContainerSpec",
    "ExecResult",
    "docker_host",
    "remove_container",
    "start_container",
]

#: How many lines of a failed container's logs an error carries.
LOG_TAIL_LINES = 20

_LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


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


# --- hashable forms of docker-py arguments ------------------------------------------------


class _FrozenDict(tuple):  # type: ignore[type-arg]
    """A dict kept as sorted ``(key, value)`` pairs so that a spec stays hashable."""

    __slots__ = ()


class _FrozenList(tuple):  # type: ignore[type-arg]
    """A list kept as a tuple, remembered as a list for docker-py."""

    __slots__ = ()


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return _FrozenDict(sorted(((k, _freeze(v)) for k, v in value.items()), key=repr))
    if isinstance(value, list):
        return _FrozenList(_freeze(v) for v in value)
    if isinstance(value, tuple):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, (set, frozenset)):
        return frozenset(_freeze(v) for v in value)
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, _FrozenDict):
        return {k: _thaw(v) for k, v in value}
    if isinstance(value, _FrozenList):
        return [_thaw(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_thaw(v) for v in value)
    if isinstance(value, frozenset):
        return {_thaw(v) for v in value}
    return value


# --- the spec ---------------------------------------------------------------------------

# docker-py create() keywords that have a field of their own, and that field.
_OWN_FIELDS = {
    "image": "image",
    "name": "name",
    "ports": "ports",
    "environment": "env",
    "command": "command",
    "entrypoint": "entrypoint",
    "volumes": "volumes",
    "tmpfs": "tmpfs",
    "network": "network",
    "healthcheck": "healthcheck",
    "user": "user",
    "platform": "platform",
    "labels": "labels",
}
_HEALTHCHECK_KEYS = ("test", "interval", "timeout", "retries", "start_period")


@dataclass(frozen=True)
class ContainerSpec:
    """A container as a test declared it. Frozen and hashable: equal specs can share one
    running container.

    ``ports`` are normalized (``"6379/tcp"``) and each is published on an ephemeral host
    port of 127.0.0.1 (of every interface when the engine is remote), unless
    ``port_bindings`` holds ``(port, host_ip, host_port)`` for it (``None`` parts keep the
    default). ``volumes`` are docker-py strings ``"source:/path[:mode]"``, ``tmpfs``
    ``(path, mount options)`` pairs and ``healthcheck`` the pairs of docker-py's
    healthcheck dict (``test``, ``interval`` in ns, ...). ``options`` holds any other
    keyword of docker-py's ``containers.create`` as ``(name, value)`` pairs.

    Build one with :meth:`from_kwargs`, which validates and normalizes.
    """

    image: str
    name: str | None = None
    ports: tuple[str, ...] = ()
    port_bindings: tuple[tuple[str, str | None, int | None], ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    command: str | tuple[str, ...] | None = None
    entrypoint: str | tuple[str, ...] | None = None
    wait: WaitStrategy | None = None
    volumes: tuple[str, ...] = ()
    tmpfs: tuple[tuple[str, str], ...] = ()
    network: str | None = None
    healthcheck: tuple[tuple[str, Any], ...] | None = None
    user: str | None = None
    platform: str | None = None
    labels: tuple[tuple[str, str], ...] = ()
    options: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        # Direct construction may spell ports loosely; equal specs must still compare equal.
        ports = tuple(sorted({normalize_port(p) for p in self.ports}, key=_port_sort_key))
        object.__setattr__(self, "ports", ports)

    @classmethod
    def keywords(cls) -> tuple[str, ...]:
        """The keywords :meth:`from_kwargs` accepts besides ``image``."""
        return tuple(f.name for f in fields(cls) if f.name not in ("image", "port_bindings"))

    @classmethod
    def from_kwargs(cls, image: str, **kwargs: Any) -> ContainerSpec:
        """Validate and normalize a declaration.

        ``ports`` takes one port or a list (``6379``, ``"6379"``, ``"6379/tcp"``,
        ``"53/udp"``), or a mapping to where each is published: ``{6379: None}``
        (ephemeral), ``{6379: 16379}`` or ``{"6379/tcp": ("127.0.0.1", 16379)}``. ``env``
        and ``labels`` take a mapping or ``"KEY=VALUE"`` strings, ``command`` and
        ``entrypoint`` a string or a list, ``volumes`` a list of ``"src:/path[:mode]"`` or
        docker-py's ``{src: {"bind": path, "mode": mode}}``, ``tmpfs`` a list of paths or
        ``{path: options}``, ``healthcheck`` docker-py's dict, ``options`` a dict of other
        ``containers.create`` keywords.

        Raises :class:`TypeError` for an unknown keyword (naming the valid ones) or a
        wrong type, :class:`ValueError` for a bad value.
        """
        valid = cls.keywords()
        unknown = sorted(set(kwargs) - set(valid))
        if unknown:
            raise TypeError(
                f"unknown container option(s) {', '.join(map(repr, unknown))}; "
                f"valid ones are: {', '.join(valid)}"
            )
        if not isinstance(image, str) or not image.strip():
            raise TypeError(f"image must be a non-empty str, not {image!r}")
        ports, bindings = _ports(kwargs.get("ports"))
        wait = kwargs.get("wait")
        if wait is not None and not isinstance(wait, WaitStrategy):
            raise TypeError(f"wait must be a WaitStrategy (e.g. for_log(...)), not {wait!r}")
        return cls(
            image=image.strip(),
            name=_optional_str("name", kwargs.get("name")),
            ports=ports,
            port_bindings=bindings,
            env=_pairs("env", kwargs.get("env")),
            command=_command("command", kwargs.get("command")),
            entrypoint=_command("entrypoint", kwargs.get("entrypoint")),
            wait=wait,
            volumes=_volumes(kwargs.get("volumes")),
            tmpfs=_tmpfs(kwargs.get("tmpfs")),
            network=_optional_str("network", kwargs.get("network")),
            healthcheck=_healthcheck(kwargs.get("healthcheck")),
            user=_optional_str("user", kwargs.get("user")),
            platform=_optional_str("platform", kwargs.get("platform")),
            labels=_pairs("labels", kwargs.get("labels")),
            options=_options(kwargs.get("options")),
        )

    def create_kwargs(self) -> dict[str, Any]:
        """The docker-py ``containers.create`` keywords of this spec, without the image,
        port publishing and name (:func:`start_container` adds those)."""
        kwargs: dict[str, Any] = {k: _thaw(v) for k, v in self.options}
        if self.env:
            kwargs["environment"] = dict(self.env)
        if self.command is not None:
            kwargs["command"] = _as_docker_command(self.command)
        if self.entrypoint is not None:
            kwargs["entrypoint"] = _as_docker_command(self.entrypoint)
        if self.volumes:
            kwargs["volumes"] = list(self.volumes)
        if self.tmpfs:
            kwargs["tmpfs"] = dict(self.tmpfs)
        if self.network is not None:
            kwargs["network"] = self.network
        if self.healthcheck is not None:
            kwargs["healthcheck"] = {k: _thaw(v) for k, v in self.healthcheck}
        if self.user is not None:
            kwargs["user"] = self.user
        if self.platform is not None:
            kwargs["platform"] = self.platform
        return kwargs


def _optional_str(field: str, value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise TypeError(f"{field} must be a str, not {value!r}")


def _ports(value: Any) -> tuple[tuple[str, ...], tuple[tuple[str, str | None, int | None], ...]]:
    if value is None:
        return (), ()
    if isinstance(value, (int, str)):
        value = [value]
    bindings: dict[str, tuple[str | None, int | None]] = {}
    if isinstance(value, Mapping):
        for port, target in value.items():
            bindings[normalize_port(port)] = _binding(port, target)
        ports = set(bindings)
    elif isinstance(value, Iterable):
        ports = {normalize_port(port) for port in value}
    else:
        raise TypeError(f"ports must be a port, a list of ports or a mapping, not {value!r}")
    ordered = tuple(sorted(ports, key=_port_sort_key))
    explicit = tuple(
        (port, ip, number)
        for port, (ip, number) in sorted(bindings.items(), key=lambda i: _port_sort_key(i[0]))
        if (ip, number) != (None, None)
    )
    return ordered, explicit


def _port_sort_key(port: str) -> tuple[str, int]:
    number, _, protocol = port.partition("/")
    return protocol, int(number)


def _binding(port: Any, target: Any) -> tuple[str | None, int | None]:
    ip: Any = None
    if isinstance(target, tuple) and len(target) == 2:
        ip, target = target
    if ip is not None and not isinstance(ip, str):
        raise TypeError(f"the host address of port {port!r} must be a str, not {ip!r}")
    if target is None:
        return ip, None
    if isinstance(target, str) and target.isdigit():
        target = int(target)
    if isinstance(target, bool) or not isinstance(target, int) or not 0 < target < 65536:
        raise ValueError(
            f"port {port!r} must map to None, a host port or (host_ip, host_port), not {target!r}"
        )
    return ip, target


def _pairs(field: str, value: Any) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    items: Iterable[tuple[Any, Any]]
    if isinstance(value, Mapping):
        items = value.items()
    elif isinstance(value, Iterable) and not isinstance(value, (str, bytes)):
        pairs = []
        for entry in value:
            if not isinstance(entry, str) or "=" not in entry:
                raise ValueError(f"{field} entries must look like 'KEY=VALUE', not {entry!r}")
            key, _, text = entry.partition("=")
            pairs.append((key, text))
        items = pairs
    else:
        raise TypeError(f"{field} must be a mapping or a list of 'KEY=VALUE', not {value!r}")
    result: dict[str, str] = {}
    for key, text in items:
        if not isinstance(key, str) or not key:
            raise ValueError(f"{field} keys must be non-empty str, not {key!r}")
        if isinstance(text, bool) or not isinstance(text, (str, int, float)):
            raise TypeError(f"{field}[{key!r}] must be a str, not {text!r}")
        result[key] = str(text)
    return tuple(sorted(result.items()))


def _command(field: str, value: Any) -> str | tuple[str, ...] | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, Sequence) and all(isinstance(word, str) for word in value):
        return tuple(value)
    raise TypeError(f"{field} must be a str or a list of str, not {value!r}")


def _as_docker_command(value: str | tuple[str, ...]) -> str | list[str]:
    return list(value) if isinstance(value, tuple) else value


def _volumes(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    entries: list[str] = []
    if isinstance(value, Mapping):
        for source, target in value.items():
            if isinstance(target, str):
                bind, mode = target, "rw"
            elif isinstance(target, Mapping) and isinstance(target.get("bind"), str):
                bind, mode = target["bind"], str(target.get("mode", "rw"))
            else:
                raise ValueError(
                    f"volume {source!r} must map to a path or {{'bind': path, 'mode': mode}}"
                )
            entries.append(f"{os.fspath(source)}:{bind}:{mode}")
    elif isinstance(value, Iterable) and not isinstance(value, (str, bytes)):
        for entry in value:
            if not isinstance(entry, str) or ":" not in entry:
                raise ValueError(f"volumes entries must look like 'src:/path[:mode]': {entry!r}")
            entries.append(entry)
    else:
        raise TypeError(f"volumes must be a list or a mapping, not {value!r}")
    return tuple(sorted(set(entries)))


def _tmpfs(value: Any) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    result: dict[str, str] = {}
    if isinstance(value, Mapping):
        for path, opts in value.items():
            result[str(path)] = "" if opts is None else str(opts)
    elif isinstance(value, Iterable) and not isinstance(value, (str, bytes)):
        for entry in value:
            path, _, opts = str(entry).partition(":")
            result[path] = opts
    else:
        raise TypeError(f"tmpfs must be a list of paths or a mapping, not {value!r}")
    for path in result:
        if not path.startswith("/"):
            raise ValueError(f"tmpfs paths must be absolute, not {path!r}")
    return tuple(sorted(result.items()))


def _healthcheck(value: Any) -> tuple[tuple[str, Any], ...] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise TypeError(f"healthcheck must be a dict like docker-py's, not {value!r}")
    unknown = sorted(set(value) - set(_HEALTHCHECK_KEYS))
    if unknown:
        raise TypeError(
            f"unknown healthcheck key(s) {unknown}; valid ones are {list(_HEALTHCHECK_KEYS)}"
        )
    return tuple(sorted((key, _freeze(item)) for key, item in value.items()))


def _options(value: Any) -> tuple[tuple[str, Any], ...]:
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise TypeError(f"options must be a dict of docker-py create() keywords, not {value!r}")
    for key in value:
        if key in _OWN_FIELDS:
            raise TypeError(f"options[{key!r}]: use the {_OWN_FIELDS[key]}= keyword instead")
        if key == "detach":
            raise TypeError("options['detach']: containers are always created detached")
    frozen = tuple(sorted((str(key), _freeze(item)) for key, item in value.items()))
    try:
        hash(frozen)
    except TypeError:
        raise TypeError(
            f"options values must be plain data (dicts, lists, ...): {value!r}"
        ) from None
    return frozen


# --- the container -----------------------------------------------------------------------


class Container:
    """A running container made for a test.

    ``host`` is where its published ports are reached, ``raw`` the docker-py container
    for anything this class does not cover. ``attrs`` is the engine's inspect data as of
    the last :meth:`reload`.
    """

    def __init__(
        self,
        raw: docker.models.containers.Container,
        image: Image,
        spec: ContainerSpec,
        *,
        host: str,
        wait_timeout: float = 60.0,
    ) -> None:
        self.raw = raw
        self.id: str = cast(str, raw.id)
        self.name: str = cast(str, raw.name)
        self.image = image
        self.spec = spec
        self.host = host
        self.wait_timeout = wait_timeout
        #: Logs written before this moment (a Unix time) belong to an earlier run; the
        #: log wait of :meth:`start` skips them.
        self.logs_since: float | None = None

    def __repr__(self) -> str:
        return f"<Container {self.name} {self.id[:12]} image={self.image.ref!r}>"

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
        """The host port ``container_port`` (``6379``, ``"6379"``, ``"6379/tcp"``) is
        published on. Raises :class:`PortNotPublishedError` naming the published ones."""
        __tracebackhide__ = True  # the user's call is the interesting frame, not this one
        key = normalize_port(container_port)
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
        """``(host, host_port)`` to connect to ``container_port``."""
        __tracebackhide__ = True
        return self.host, self.port(container_port)

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
        result = self.raw.exec_run(
            command,
            stdout=True,
            stderr=True,
            demux=True,
            environment=dict(env) if env else None,
            user=user or "",
            workdir=workdir,
        )
        # demux=True makes the output a (stdout, stderr) pair; the stubs do not know that.
        output = cast("tuple[bytes | None, bytes | None] | None", result.output)
        stdout, stderr = output or (None, None)
        return ExecResult(
            exit_code=int(result.exit_code if result.exit_code is not None else -1),
            stdout=(stdout or b"").decode(errors="replace"),
            stderr=(stderr or b"").decode(errors="replace"),
        )

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
            self.raw.put_archive(str(target.parent), _tar(source, target.name))
        except docker.errors.NotFound:
            # The parent is missing: unpack at / with the whole path so the engine makes it.
            self.raw.put_archive("/", _tar(source, str(target.relative_to("/"))))

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
                _extract(archive, top, Path(host_path))

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
        self.logs_since = _docker_time((self.attrs.get("State") or {}).get("FinishedAt"))
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
            logs = self.logs(tail=LOG_TAIL_LINES)
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
    return for_port() if container.spec.ports else None


def _docker_time(value: Any) -> float | None:
    """``2024-05-01T12:00:00.123456789Z`` -> Unix time; ``None`` for Docker's zero time."""
    if not isinstance(value, str) or not value or value.startswith("0001-"):
        return None
    main, _, fraction = value.rstrip("Z").partition(".")
    try:
        moment = datetime.strptime(main, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc)
    except ValueError:
        return None
    digits = "".join(c for c in fraction[:9] if c.isdigit())
    return moment.timestamp() + (int(digits) / 10 ** len(digits) if digits else 0.0)


def _tar(source: Path, arcname: str) -> bytes:
    def as_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        return info

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        archive.add(source, arcname=arcname, filter=as_root)
    return buffer.getvalue()


def _extract(archive: tarfile.TarFile, top: str, dest: Path) -> None:
    """Unpack ``archive`` (whose entries sit under ``top``) so that ``top`` becomes
    ``dest``, refusing entries and links that would land outside it."""
    root = dest.resolve()
    for member in archive.getmembers():
        parts = PurePosixPath(member.name).parts
        if not parts or parts[0] != top or any(p in ("..", "/") for p in parts[1:]):
            continue
        target = dest.joinpath(*parts[1:])
        parent = target.parent.resolve()
        if parent != root and root not in parent.parents and target != dest:
            continue  # a link extracted earlier would lead outside dest
        if member.isdir():
            target.mkdir(parents=True, exist_ok=True)
        elif member.isfile() or member.islnk():
            source = archive.extractfile(member)
            if source is None:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with source, open(target, "wb") as out:
                while chunk := source.read(1 << 20):
                    out.write(chunk)
            target.chmod(member.mode & 0o777)
        elif member.issym():
            link = PurePosixPath(member.linkname)
            landing = os.path.normpath(os.path.join(str(target.parent), member.linkname))
            if link.is_absolute() or not (landing == str(dest) or landing.startswith(f"{dest}/")):
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.is_symlink() or target.exists():
                target.unlink()
            target.symlink_to(member.linkname)


# --- starting and removing -----------------------------------------------------------------


def docker_host(client_or_env: Any = None) -> str:
    """The host on which the engine publishes ports.

    Takes a docker-py ``DockerClient`` or ``APIClient``, an environment mapping (its
    ``DOCKER_HOST`` is read) or a ``DOCKER_HOST``-style URL; ``None`` reads
    :data:`os.environ`. ``"127.0.0.1"`` for a local socket, the host of
    ``tcp://HOST:PORT`` or ``ssh://user@HOST`` otherwise.
    """
    if isinstance(client_or_env, docker.DockerClient):
        client_or_env = client_or_env.api
    if isinstance(client_or_env, docker.APIClient):
        url = str(client_or_env.base_url)
        # docker-py shows ssh and socket engines alike as http+docker://...; the
        # environment tells which host an ssh engine is.
        if url.startswith("http+docker://"):
            url = os.environ.get("DOCKER_HOST", "") if "ssh" in url else ""
    elif isinstance(client_or_env, Mapping):
        url = str(client_or_env.get("DOCKER_HOST") or "")
    elif isinstance(client_or_env, str):
        url = client_or_env
    elif client_or_env is None:
        url = os.environ.get("DOCKER_HOST", "")
    else:
        raise TypeError(
            f"docker_host() takes a docker client, a mapping or a URL: {client_or_env!r}"
        )
    parsed = urllib.parse.urlsplit(url.strip())
    if parsed.scheme in ("tcp", "http", "https", "ssh") and parsed.hostname:
        return parsed.hostname
    return "127.0.0.1"


def _publish(spec: ContainerSpec, host: str) -> dict[str, tuple[str, int | None]]:
    # A local engine publishes on loopback only; a remote one must be reachable from here.
    default_ip = "127.0.0.1" if host in _LOCAL_HOSTS else ""
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
) -> Container:
    """Create a container of ``image`` (by id; nothing is pulled) as ``spec`` says, start
    it and wait until it is ready.

    The wait is ``spec.wait``, else :func:`~pytest_containers.wait.for_port` when ports
    are published, else none. ``labels`` are added to the spec's. On any failure (exit,
    OOM kill, wait failure or timeout, engine error) the container is removed and
    :class:`ContainerStartupError` raised with its state, exit code, the wait and the
    last lines of its logs.
    """
    host = docker_host(client)
    kwargs = spec.create_kwargs()
    kwargs["labels"] = {**dict(spec.labels), **dict(labels)}
    if spec.ports:
        kwargs["ports"] = _publish(spec, host)
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
    container = Container(raw, image, spec, host=host, wait_timeout=wait_timeout)
    try:
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
