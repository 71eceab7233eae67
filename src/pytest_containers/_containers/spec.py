"""What a test declares of a container (:class:`ContainerSpec`): its keywords checked and
normalised at collection, kept hashable so that equal declarations share one running
container, and turned into docker-py's ``create()`` arguments.

No engine here: :mod:`pytest_containers._containers.container` starts what a spec declares.
"""

from __future__ import annotations

import os
import re
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from pytest_containers._containers.networks import (
    HOST_ACCESS_NAME,
    HOST_GATEWAY,
    Network,
    is_docker_mode,
)
from pytest_containers._containers.probes import normalize_port
from pytest_containers.wait import WaitStrategy

__all__ = ["ContainerSpec"]


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
    "networking_config": "aliases",
}
_HEALTHCHECK_KEYS = ("test", "interval", "timeout", "retries", "start_period")


@dataclass(frozen=True)
class ContainerSpec:
    """A container as a test declared it. Frozen and hashable: equal specs can share one
    running container.

    ``ports`` are normalized (``"6379/tcp"``) and each is published on an ephemeral host
    port of 127.0.0.1 (of every interface of a remote engine's host), unless
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
    network: str | Network | None = None
    aliases: tuple[str, ...] = ()
    host_access: bool = False
    healthcheck: tuple[tuple[str, Any], ...] | None = None
    user: str | None = None
    platform: str | None = None
    labels: tuple[tuple[str, str], ...] = ()
    options: tuple[tuple[str, Any], ...] = ()
    #: URL templates by driver (``""``: the plain one), for ``Container.url()``.
    urls: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        # Direct construction may spell ports loosely; equal specs must still compare equal.
        ports = tuple(sorted({normalize_port(p) for p in self.ports}, key=_port_sort_key))
        object.__setattr__(self, "ports", ports)

    def slug(self, limit: int) -> str:
        """Its name, else the image's last path part, made fit for a container's name."""
        text = re.sub(r"[^a-zA-Z0-9_.-]+", "-", self.name or self.image.split("/")[-1])
        return text.strip("-")[:limit]

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
        network, aliases = _network(kwargs.get("network"), kwargs.get("aliases"))
        host_access = kwargs.get("host_access", False)
        if not isinstance(host_access, bool):
            raise TypeError(f"host_access must be True or False, not {host_access!r}")
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
            network=network,
            aliases=aliases,
            host_access=host_access,
            healthcheck=_healthcheck(kwargs.get("healthcheck")),
            user=_optional_str("user", kwargs.get("user")),
            platform=_optional_str("platform", kwargs.get("platform")),
            labels=_pairs("labels", kwargs.get("labels")),
            options=_options(kwargs.get("options")),
            urls=_urls(kwargs.get("urls")),
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
        if isinstance(self.network, str) and is_docker_mode(self.network):
            kwargs["network"] = self.network  # a network the plugin makes is added later
        if self.host_access:
            kwargs["extra_hosts"] = _with_host_access(kwargs.get("extra_hosts"))
        if self.healthcheck is not None:
            kwargs["healthcheck"] = {k: _thaw(v) for k, v in self.healthcheck}
        if self.user is not None:
            kwargs["user"] = self.user
        if self.platform is not None:
            kwargs["platform"] = self.platform
        return kwargs


def _network(network: Any, aliases: Any) -> tuple[str | Network | None, tuple[str, ...]]:
    if network is not None and not isinstance(network, (str, Network)):
        raise TypeError(
            "network must be a name (a network private to the scope, made by the plugin) "
            f"or a Network (the value of a network_fixture), not {network!r}"
        )
    if isinstance(network, str) and not network.strip():
        raise ValueError("network must be a non-empty name")
    if aliases is None:
        return network, ()
    if isinstance(aliases, str):
        aliases = [aliases]
    if not isinstance(aliases, Iterable) or not all(
        isinstance(alias, str) and alias for alias in aliases
    ):
        raise TypeError(f"aliases must be a list of names, not {aliases!r}")
    if network is None or (isinstance(network, str) and is_docker_mode(network)):
        raise ValueError(
            f"aliases={list(aliases)!r} need a network the containers share: add "
            "network='backend' (any name) or network=<a network_fixture>; Docker's "
            f"{network or 'default'!r} network resolves no aliases"
        )
    return network, tuple(dict.fromkeys(aliases))


def _with_host_access(extra_hosts: Any) -> Any:
    """docker-py's ``extra_hosts`` (a dict or ``"name:ip"`` strings) plus the entry that
    maps the host-access name to the host's gateway."""
    entry = f"{HOST_ACCESS_NAME}:{HOST_GATEWAY}"
    if extra_hosts is None:
        return {HOST_ACCESS_NAME: HOST_GATEWAY}
    if isinstance(extra_hosts, Mapping):
        return {HOST_ACCESS_NAME: HOST_GATEWAY, **extra_hosts}
    return [entry, *extra_hosts]


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
    if isinstance(target, str) and target.isdigit():
        target = int(target)
    if target is None or (target == 0 and not isinstance(target, bool)):
        return ip, None  # 0 asks for an ephemeral port, as with bind()
    if isinstance(target, bool) or not isinstance(target, int) or not 0 < target < 65536:
        raise ValueError(
            f"port {port!r} must map to None or 0 (an ephemeral port), a host port or "
            f"(host_ip, host_port), not {target!r}"
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


#: What a URL template may use.
_URL_FIELDS = ("host", "port", "env")


def _urls(value: Any) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise TypeError(
            "urls must be a dict of driver names to templates, e.g. "
            f"{{'': 'redis://{{host}}:{{port}}/0'}}, not {value!r}"
        )
    for driver, template in value.items():
        if not isinstance(driver, str) or not isinstance(template, str):
            raise TypeError(f"urls needs str drivers and templates, got {driver!r}: {template!r}")
        try:
            names = [name for _, name, _, _ in string.Formatter().parse(template) if name]
        except ValueError as error:
            raise ValueError(f"urls[{driver!r}] is not a valid template ({error})") from None
        for name in names:
            if re.split(r"[\[.]", name, maxsplit=1)[0] not in _URL_FIELDS:
                raise ValueError(
                    f"urls[{driver!r}] uses {{{name}}}; the fields are {{host}}, {{port}}, "
                    "{port[5432]} and {env[NAME]}"
                )
    return tuple(sorted(value.items()))


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
