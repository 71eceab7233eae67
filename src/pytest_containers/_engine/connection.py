"""The Docker engine: the one place that knows where it is, what it is, and how the
tests reach the containers it runs.

* :func:`resolve_endpoint` (from :mod:`pytest_containers._engine.endpoint`) finds the engine the
  way the docker CLI does.
* :func:`connect` makes a docker-py client for that endpoint with a bounded first call,
  and turns every way of failing (refused, TLS, ssh host key or login) into
  :class:`EngineUnavailableError` naming each source tried.
* :func:`describe_engine` is the report header's line; :func:`access_for` decides the
  address tests dial and the host IP ports are published on; :func:`own_container_id`
  tells whether this process runs in a container of that engine.
* :func:`engine_identity` names the engine in every lock and state file, the same in
  every process that talks to it (podman's ``/info`` ID changes on every request).
* :func:`docker_time` reads the engine's timestamps.

Streams from the engine (followed logs, a pull's or a build's progress that must be cut
off) are in :mod:`pytest_containers._engine.streams`. pytest-free, and docker-py is
imported only where a client is made.
"""

from __future__ import annotations

import datetime
import hashlib
import importlib
import ipaddress
import json
import os
import re
import socket
import threading
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_containers._engine.endpoint import (
    DEFAULT_SOCKET,
    Endpoint,
    Tls,
    context_id,
    endpoint_environ,
    resolve_endpoint,
)
from pytest_containers.errors import EngineUnavailableError

if TYPE_CHECKING:
    import docker

__all__ = [
    "DEFAULT_SOCKET",
    "KUBEDOCK_MEANS",
    "Access",
    "Endpoint",
    "EngineIdentity",
    "EngineInfo",
    "Tls",
    "access_for",
    "connect",
    "context_id",
    "describe_engine",
    "docker_time",
    "endpoint_environ",
    "engine_identity",
    "engine_info",
    "identify_engine",
    "is_kubedock",
    "is_kubedock_info",
    "is_podman",
    "kubedock_refusal",
    "own_container_id",
    "resolve_endpoint",
]

#: Hosts that mean "this machine": its engine publishes on loopback and is dialled there.
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "ip6-localhost"})
#: The variable testcontainers users already set to the address of published ports.
TESTCONTAINERS_HOST_OVERRIDE = "TESTCONTAINERS_HOST_OVERRIDE"


# --- connecting --------------------------------------------------------------------------


def _tls_config(tls: Tls) -> Any:
    from docker.tls import TLSConfig

    def present(name: str) -> str | None:
        path = tls.cert_dir / name
        return str(path) if path.is_file() else None

    cert, key = present("cert.pem"), present("key.pem")
    return TLSConfig(
        client_cert=(cert, key) if cert and key else None,
        ca_cert=present("ca.pem") if tls.verify else None,
        verify=tls.verify and present("ca.pem") is not None,
    )


def _base_url(endpoint: Endpoint) -> str:
    url = endpoint.url
    if endpoint.tls is not None and url.startswith("tcp://"):
        return "https://" + url[len("tcp://") :]
    return url


_ERRNO = re.compile(r"\[Errno -?\d+\] [^'\")\]]+")


def _os_error_in(error: BaseException, depth: int = 0) -> OSError | None:
    """The OSError somewhere under ``error`` (its causes, or the arguments urllib3 and
    requests wrap it in), which says what went wrong in the fewest words."""
    if isinstance(error, OSError) and error.errno is not None:
        return error
    if depth > 6:
        return None
    inner: list[object] = [error.__cause__, error.__context__, *error.args]
    for candidate in inner:
        if isinstance(candidate, tuple):
            inner.extend(candidate)
        elif isinstance(candidate, BaseException):
            found = _os_error_in(candidate, depth + 1)
            if found is not None:
                return found
    return None


def _failure_text(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    # docker-py wraps requests, which wraps urllib3, which wraps the OSError that says it.
    found = _ERRNO.search(text)
    cause = _os_error_in(error)
    if found is not None:
        text = found.group(0).strip()
    elif cause is not None and cause.strerror:
        text = f"[Errno {cause.errno}] {cause.strerror}"
    # paramiko's messages name the problem but not always the class that says what it is.
    name = type(error).__name__
    if name in ("BadHostKeyException", "AuthenticationException", "SSHException"):
        text = f"ssh: {text}"
    return text.splitlines()[0][:300]


def _client_for(endpoint: Endpoint, timeout: float) -> docker.DockerClient:
    import docker

    kwargs: dict[str, Any] = {"base_url": _base_url(endpoint), "timeout": int(max(timeout, 1))}
    if endpoint.tls is not None:
        kwargs["tls"] = _tls_config(endpoint.tls)
    if endpoint.scheme == "ssh":
        # paramiko, which reads ~/.ssh/config and known_hosts and rejects unknown keys.
        kwargs["use_ssh_client"] = False
    client = docker.DockerClient(**kwargs)
    client.ping()
    return client


def connect(
    endpoint: Endpoint | None = None, *, connect_timeout: float = 5.0, timeout: float = 300.0
) -> docker.DockerClient:
    """A docker-py client for ``endpoint`` (:func:`resolve_endpoint` by default), pinged.

    The first calls are bounded by ``connect_timeout`` so that a missing engine fails in
    seconds; later calls get ``timeout``. Any failure (refused, TLS, an ssh host key or
    login, a missing context) raises :class:`EngineUnavailableError` listing every source
    tried, in order.
    """
    if endpoint is None:
        endpoint = resolve_endpoint()
    # Podman answers /version in about a second on a loaded machine: not too tight.
    connect_timeout = max(connect_timeout, 3.0)
    failures: list[str] = []
    for candidate in (endpoint, *endpoint.fallbacks):
        try:
            client = _client_for(candidate, connect_timeout)
        except Exception as error:  # requests, docker, paramiko, ssl, OSError: all alike
            failures.append(f"{candidate.describe()}: {_failure_text(error)}")
            continue
        client.api.timeout = int(timeout)
        client.pytest_containers_endpoint = candidate  # type: ignore[attr-defined]
        return client
    tried = [*endpoint.tried, *failures]
    if endpoint.scheme == "ssh":
        advice = (
            f"Check that `ssh {endpoint.hostname} docker version` works as this user (the "
            "host key in ~/.ssh/known_hosts, the key and the user in ~/.ssh/config)"
        )
    else:
        advice = (
            "Start Docker (`dockerd` or `systemctl start docker`), or point DOCKER_HOST or a "
            "docker context at a running engine"
        )
    raise EngineUnavailableError(
        "no Docker engine answered; tried, in order: "
        + "; ".join(tried)
        + f". {advice} (`pytest --container-doctor` shows the details); tests that need no "
        "container are not affected"
    )


def client_endpoint(client: docker.DockerClient) -> Endpoint:
    """The endpoint ``client`` was made for (by :func:`connect`), else the resolved one."""
    found = getattr(client, "pytest_containers_endpoint", None)
    if isinstance(found, Endpoint):
        return found
    base = str(client.api.base_url)
    if base.startswith(("http://", "https://")) and "docker" not in base.split("://")[0]:
        return Endpoint(base.replace("http://", "tcp://").replace("https://", "tcp://"), "client")
    try:
        return resolve_endpoint()
    except EngineUnavailableError:
        return Endpoint(DEFAULT_SOCKET, "the default socket")


# --- what the engine is ------------------------------------------------------------------


@dataclass(frozen=True)
class EngineInfo:
    """``kind`` is ``"Docker"``, ``"Podman"`` or ``"kubedock"``; ``version`` the engine's
    own version."""

    kind: str
    version: str

    def __str__(self) -> str:
        return f"{self.kind} {self.version}"


#: What running on kubedock means for the tests, for the header and the doctor.
KUBEDOCK_MEANS = (
    "Kubernetes through kubedock: no image builds or loads, volumes copied one way at "
    "start, stdout and stderr merged, network aliases become Services"
)


def is_kubedock_info(info: Mapping[str, Any] | None) -> bool:
    """Whether ``info`` (an engine's ``/info``) is kubedock's, the Docker API served on
    top of Kubernetes: it names itself (``Name: kubedock``, ``ID:
    com.joyrex2001.kubedock``) and says ``OperatingSystem: kubernetes``; its ``/version``
    looks like an old Docker's (API 1.25, no ``Components``), so only ``/info`` tells."""
    if not info:
        return False
    return (
        str(info.get("Name") or "").lower() == "kubedock"
        or str(info.get("ID") or "") == "com.joyrex2001.kubedock"
        or str(info.get("OperatingSystem") or "").lower() == "kubernetes"
    )


def kubedock_refusal(what: str) -> str:
    """The one line that says kubedock cannot do ``what`` (e.g. "build images") and what
    to do instead: kubedock runs every container as a pod, from an image the cluster pulls."""
    return (
        f"the engine is kubedock (Kubernetes), which cannot {what}: push the image to a "
        "registry the cluster can pull from and reference it by name, e.g. "
        "@pytest.mark.container('registry.example.com/team/app:1.0')"
    )


def _info_from_version(
    data: Mapping[str, Any], info: Mapping[str, Any] | None = None
) -> EngineInfo:
    if is_kubedock_info(info):
        assert info is not None
        return EngineInfo("kubedock", str(info.get("ServerVersion") or "?"))
    components = data.get("Components") or []
    for component in components:
        name = str((component or {}).get("Name") or "")
        if "podman" in name.lower():
            return EngineInfo("Podman", str(component.get("Version") or data.get("Version")))
    return EngineInfo("Docker", str(data.get("Version") or "?"))


_INFO_LOCK = threading.Lock()
_VERSIONS: dict[str, dict[str, Any]] = {}


def _version_of(client: docker.DockerClient) -> dict[str, Any]:
    """The engine's ``/version`` answer, asked once per endpoint."""
    key = client_endpoint(client).url
    with _INFO_LOCK:
        known = _VERSIONS.get(key)
    if known is None:
        known = dict(client.version())
        with _INFO_LOCK:
            _VERSIONS[key] = known
    return known


_INFOS: dict[str, dict[str, Any] | None] = {}


def _info_of(client: docker.DockerClient) -> dict[str, Any] | None:
    """The engine's ``/info`` answer, asked once per endpoint; ``None`` when it fails
    (an engine that cannot say is still used)."""
    key = client_endpoint(client).url
    with _INFO_LOCK:
        if key in _INFOS:
            return _INFOS[key]
    try:
        known: dict[str, Any] | None = dict(client.info())
    except Exception:  # an engine whose /info fails: known by its /version alone
        known = None
    with _INFO_LOCK:
        _INFOS[key] = known
    return known


def engine_info(client: docker.DockerClient) -> EngineInfo:
    """What the engine behind ``client`` is, asked once per endpoint."""
    return _info_from_version(_version_of(client), _info_of(client))


def is_kubedock(client: docker.DockerClient) -> bool:
    """Whether the engine is kubedock (see :func:`is_kubedock_info`)."""
    try:
        return engine_info(client).kind == "kubedock"
    except Exception:  # an engine that cannot say: treat it as Docker
        return False


# --- which engine it is ------------------------------------------------------------------


@dataclass(frozen=True)
class EngineIdentity:
    """Which engine this is: ``key`` is the same in every process that talks to the same
    engine and differs between engines; it names the engine in every lock and state file
    (image pulls, builds). ``source`` says what it was derived from, for the doctor;
    ``own_id`` whether that is the engine's own stable ID."""

    key: str
    source: str
    own_id: bool = False


def identify_engine(
    info: Mapping[str, Any] | None, version: Mapping[str, Any] | None, endpoint_url: str
) -> EngineIdentity:
    """The identity of the engine that answered ``info`` (``/info``) and ``version``
    (``/version``) at ``endpoint_url``; either answer may be missing.

    Docker's daemon keeps its ``ID`` for life. Podman answers a new random ``ID`` on every
    request, and other Docker-compatible engines promise nothing, so for them the identity
    is derived from what does not change: the engine's name and its storage root (which
    tells a rootful podman from a rootless one on the same host), and the endpoint when
    there is no storage root to tell two engines of one name apart.
    """
    info = info or {}
    components = (version or {}).get("Components") or []
    docker_daemon = any(str((c or {}).get("Name") or "") == "Engine" for c in components)
    engine_id = str(info.get("ID") or "")
    if docker_daemon and engine_id:
        return EngineIdentity(f"docker-{engine_id}", "the engine's ID", own_id=True)
    name = str(info.get("Name") or "")
    root = str(info.get("DockerRootDir") or "")
    if root:
        parts = ["root", name, root]
        source = f"its name and storage root ({name or '?'}, {root})"
    elif name:
        parts = ["name", name, endpoint_url]
        source = f"its name and endpoint ({name}, {endpoint_url})"
    else:
        parts = ["endpoint", endpoint_url]
        source = f"its endpoint ({endpoint_url}): /info gave no ID, name or storage root"
    digest = hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:24]
    return EngineIdentity(f"{parts[0]}-{digest}", source)


_IDENTITIES: dict[str, EngineIdentity] = {}


def engine_identity(client: docker.DockerClient) -> EngineIdentity:
    """The identity (:func:`identify_engine`) of the engine behind ``client``, asked once
    per endpoint; an engine whose ``/info`` or ``/version`` fails is known by its endpoint."""
    url = client_endpoint(client).url
    with _INFO_LOCK:
        known = _IDENTITIES.get(url)
    if known is not None:
        return known
    info = _info_of(client)  # None when it fails: the endpoint still names the engine
    try:
        version: dict[str, Any] | None = _version_of(client)
    except Exception:
        version = None
    known = identify_engine(info, version, url)
    with _INFO_LOCK:
        _IDENTITIES[url] = known
    return known


def _bare_get(endpoint: Endpoint, path: str, timeout: float) -> dict[str, Any] | None:
    """GET ``path`` over a plain socket, or ``None`` for transports this does not speak
    (TLS, ssh). Raises OSError and friends when the engine does not answer."""
    import http.client

    connection: http.client.HTTPConnection
    if endpoint.scheme == "unix":
        socket_path = endpoint.url[len("unix://") :]

        class _UnixConnection(http.client.HTTPConnection):
            def connect(self) -> None:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.settimeout(timeout)
                self.sock.connect(socket_path)

        connection = _UnixConnection("docker", timeout=timeout)
    elif endpoint.scheme == "tcp" and endpoint.tls is None:
        parts = urllib.parse.urlsplit(endpoint.url)
        connection = http.client.HTTPConnection(
            parts.hostname or "127.0.0.1", parts.port or 2375, timeout=timeout
        )
    else:
        return None
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        data = json.loads(response.read())
    finally:
        connection.close()
    return data if isinstance(data, dict) else {}


def _bare_info(endpoint: Endpoint, timeout: float) -> dict[str, Any] | None:
    """``/info`` over a plain socket, or ``None`` when the engine cannot say."""
    import http.client

    try:
        return _bare_get(endpoint, "/info", timeout)
    except (OSError, ValueError, http.client.HTTPException):
        return None


def describe_engine(*, timeout: float = 3.0, environ: Mapping[str, str] | None = None) -> str:
    """``"Docker 20.10.24 at unix:///var/run/docker.sock (the default socket)"``, and
    where the engine's identity came from when the engine has no stable ID of its own.

    Asks the engine's /version and /info over a bare socket where it can, so that a run
    which starts no container pays neither docker-py's import nor more than a moment; TLS
    and ssh engines are asked through docker-py. Says what was tried when nothing answers.
    """
    import http.client

    try:
        endpoint = resolve_endpoint(environ)
    except EngineUnavailableError as error:
        return f"no engine found ({error})"
    for candidate in (endpoint, *endpoint.fallbacks):
        try:
            version = _bare_get(candidate, "/version", timeout)
            if version is None:
                client = connect(candidate, connect_timeout=timeout)
                try:
                    info = engine_info(client)
                    identity = engine_identity(client)
                finally:
                    client.close()
            else:
                raw_info = _bare_info(candidate, timeout)
                info = _info_from_version(version, raw_info)
                identity = identify_engine(raw_info, version, candidate.url)
        except (OSError, ValueError, http.client.HTTPException, EngineUnavailableError):
            continue
        known_by = "" if identity.own_id else f", known by {identity.source}"
        means = f" ({KUBEDOCK_MEANS})" if info.kind == "kubedock" else ""
        return f"{info}{means} at {candidate.describe()}{known_by}"
    return f"not answering at {endpoint.describe()}"


# --- where the tests dial --------------------------------------------------------------------


@dataclass(frozen=True)
class Access:
    """How the tests reach the containers' ports.

    ``mode`` is ``"published"`` (dial ``host`` at the published host port; ports are
    published on ``bind_ip``, ``""`` meaning every interface) or ``"network"`` (this
    process runs in a container of the engine: dial each container's address on
    ``network`` at the container port; the containers are attached to that network).
    ``reason`` says why, for the header and the doctor.
    """

    mode: str
    host: str
    bind_ip: str
    reason: str
    network: str | None = None
    own_container: str | None = None

    def describe(self) -> str:
        if self.mode == "network":
            return f"containers' addresses on network {self.network!r} ({self.reason})"
        return f"{self.host} ({self.reason})"


def _is_local_host(host: str) -> bool:
    return host.strip("[]").lower() in LOCAL_HOSTS


def _ssh_hostname(alias: str, environ: Mapping[str, str]) -> str:
    """The ``HostName`` ssh_config gives ``alias``, as docker-py's ssh transport uses it."""
    home = environ.get("HOME") or str(Path.home())
    config = Path(home) / ".ssh" / "config"
    if not config.is_file():
        return alias
    try:
        paramiko: Any = importlib.import_module("paramiko")
    except ImportError:  # docker-py cannot use ssh without it either
        return alias
    try:
        parsed = paramiko.SSHConfig.from_path(str(config))
        return str(parsed.lookup(alias).get("hostname") or alias)
    except Exception:  # a config paramiko cannot read: the alias is the best we know
        return alias


def _unbracket(host: str) -> str:
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def _dial_form(host: str) -> str:
    """``::1`` stays ``::1``; names and IPv4 addresses are kept as they are."""
    try:
        return str(ipaddress.ip_address(_unbracket(host)))
    except ValueError:
        return host


_ACCESS_LOCK = threading.Lock()
_ACCESS: dict[tuple[str, str | None], Access] = {}


def access_for(
    client: docker.DockerClient,
    *,
    override: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Access:
    """How the tests of this process reach the containers of ``client``'s engine.

    In order: an override (``--container-host``, or ``TESTCONTAINERS_HOST_OVERRIDE``);
    this process running in a container of the engine (dial containers on its network);
    a remote engine (dial its host, publish on every interface there); a local one
    (dial and publish on 127.0.0.1). Decided once per client.
    """
    env = os.environ if environ is None else environ
    endpoint = client_endpoint(client)
    key = (endpoint.url, override)
    with _ACCESS_LOCK:
        known = _ACCESS.get(key)
    if known is not None:
        return known

    def own() -> tuple[str, str | None] | None:
        found = own_container_id(client)
        return None if found is None else (found, _own_network(client, found))

    access = decide_access(endpoint, override, env, own)
    with _ACCESS_LOCK:
        _ACCESS[key] = access
    return access


def might_run_in_container() -> bool:
    """Whether this process shows any sign of running in a container (only the engine
    can confirm it: see :func:`own_container_id`)."""
    return bool(
        container_id_candidates(
            _read("/proc/self/mountinfo"), _read("/proc/self/cgroup"), socket.gethostname()
        )
    )


def decide_access(
    endpoint: Endpoint,
    override: str | None,
    env: Mapping[str, str],
    own: Callable[[], tuple[str, str | None] | None],
) -> Access:
    """The rules of :func:`access_for`; ``own`` gives this process's container id and
    its joinable network (``None`` for the host's network), or ``None`` outside one."""
    engine_host = endpoint.hostname
    if engine_host is not None and endpoint.scheme == "ssh":
        engine_host = _ssh_hostname(engine_host, env)
    remote = engine_host is not None and not _is_local_host(engine_host)
    if not override and env.get(TESTCONTAINERS_HOST_OVERRIDE):
        override = env[TESTCONTAINERS_HOST_OVERRIDE]
        how = TESTCONTAINERS_HOST_OVERRIDE
    else:
        how = "--container-host"
    if override:
        host = _dial_form(override.strip())
        bind = "127.0.0.1" if _is_local_host(host) and not remote else ""
        return Access("published", host, bind, f"set by {how}")
    found = own()
    if found is not None:
        own_id, network = found
        if network is None:
            return Access(
                "published",
                "127.0.0.1",
                "127.0.0.1",
                f"this process runs in container {own_id[:12]} on the host's network",
                own_container=own_id,
            )
        return Access(
            "network",
            "",
            "127.0.0.1",
            f"this process runs in container {own_id[:12]} of the engine",
            network=network,
            own_container=own_id,
        )
    if remote and engine_host is not None:
        return Access(
            "published",
            _dial_form(engine_host),
            "",
            f"the engine is remote ({endpoint.url}); ports are published on all its interfaces",
        )
    return Access("published", "127.0.0.1", "127.0.0.1", "a local engine; ports on loopback")


def describe_access(
    override: str | None = None, *, environ: Mapping[str, str] | None = None
) -> str:
    """For the report header: the address tests will dial and why. Asks the engine only
    when this process may run in one of its containers (only the engine can tell)."""
    env = os.environ if environ is None else environ
    try:
        endpoint = resolve_endpoint(env)
    except EngineUnavailableError:
        return "unknown (no engine)"
    if might_run_in_container():
        try:
            client = connect(endpoint)
        except EngineUnavailableError:
            return "unknown (the engine does not answer)"
        try:
            return access_for(client, override=override, environ=env).describe()
        except Exception as error:  # the engine went away between two calls
            return f"unknown ({_failure_text(error)})"
        finally:
            client.close()
    return decide_access(endpoint, override, env, lambda: None).describe()


def _own_network(client: docker.DockerClient, container_id: str) -> str | None:
    """The network of our container that other containers can join, or ``None`` when it
    shares the host's network (then published ports on loopback are reachable)."""
    attrs = client.api.inspect_container(container_id)
    mode = str((attrs.get("HostConfig") or {}).get("NetworkMode") or "")
    if mode == "host":
        return None
    networks = (attrs.get("NetworkSettings") or {}).get("Networks") or {}
    if mode in networks:
        return mode
    if mode == "default" and "bridge" in networks:
        return "bridge"
    return next(iter(sorted(networks)), None)


# --- am I in a container of this engine? ----------------------------------------------------

_HEX_ID = re.compile(r"[0-9a-f]{64}")
_ID_IN_PATH = re.compile(r"(?:containers|overlay-containers)/([0-9a-f]{64})(?:/|$)")
_ID_IN_CGROUP = re.compile(r"(?:docker|libpod)[-/]([0-9a-f]{64})")


def container_id_candidates(mountinfo: str = "", cgroup: str = "", hostname: str = "") -> list[str]:
    """Ids this process's container might have, best evidence first: the source of the
    bind-mounted /etc/hostname (the engine's own per-container files), the cgroup path,
    then the hostname (a container's default hostname is its short id). None of these
    proves anything until the engine confirms it (:func:`own_container_id`)."""
    found: list[str] = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) > 4 and fields[4] in ("/etc/hostname", "/etc/hosts", "/etc/resolv.conf"):
            match = _ID_IN_PATH.search(fields[3])
            if match and match.group(1) not in found:
                found.append(match.group(1))
    for match in _ID_IN_CGROUP.finditer(cgroup):
        if match.group(1) not in found:
            found.append(match.group(1))
    short = hostname.strip().lower()
    if re.fullmatch(r"[0-9a-f]{12}", short) and not any(i.startswith(short) for i in found):
        found.append(short)
    return found


def _read(path: str) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


_OWN_LOCK = threading.Lock()
_OWN: dict[str, str | None] = {}


def own_container_id(client: docker.DockerClient) -> str | None:
    """The full id of the container this process runs in, confirmed by ``client``'s
    engine, or ``None``. ``/.dockerenv`` alone proves nothing: a machine may have it and
    run its own engine; an id counts only when the engine knows that container, it runs,
    and its hostname is ours."""
    key = client_endpoint(client).url
    with _OWN_LOCK:
        if key in _OWN:
            return _OWN[key]
    import docker.errors

    hostname = socket.gethostname()
    found: str | None = None
    candidates = container_id_candidates(
        _read("/proc/self/mountinfo"), _read("/proc/self/cgroup"), hostname
    )
    for candidate in candidates:
        try:
            attrs = client.api.inspect_container(candidate)
        except docker.errors.DockerException:
            continue
        running = bool((attrs.get("State") or {}).get("Running"))
        their_hostname = str((attrs.get("Config") or {}).get("Hostname") or "")
        if running and their_hostname == hostname:
            found = str(attrs["Id"])
            break
    with _OWN_LOCK:
        _OWN[key] = found
    return found


def is_podman(client: docker.DockerClient) -> bool:
    """Whether the engine is podman's Docker-compatible API."""
    try:
        return engine_info(client).kind == "Podman"
    except Exception:  # an engine that cannot say: treat it as Docker
        return False


# --- the engine's timestamps ------------------------------------------------------------------

_TIMESTAMP = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)?$")


def docker_time(value: Any) -> float | None:
    """The engine's ``2024-05-01T12:00:00.123456789Z`` (RFC 3339 with nanoseconds, as in
    ``Created``, ``State.StartedAt`` and ``FinishedAt``) as a Unix time; ``None`` for Go's
    zero time (``0001-01-01T00:00:00Z``, "never") and for anything else."""
    if not isinstance(value, str) or value.startswith("0001-"):
        return None
    match = _TIMESTAMP.match(value.strip())
    if match is None:
        return None
    seconds, fraction, zone = match.groups()
    offset = "+00:00" if zone in (None, "Z") else zone
    try:
        moment = datetime.datetime.fromisoformat(seconds + offset)
    except ValueError:
        return None
    digits = (fraction or "")[:9]
    return moment.timestamp() + (int(digits) / 10 ** len(digits) if digits else 0.0)
