"""Where the engine is, found the way the docker CLI finds it: ``DOCKER_HOST``, else the
docker context (``DOCKER_CONTEXT``, else ``currentContext`` in
``$DOCKER_CONFIG/config.json``), else the default socket, else the rootless and podman
sockets. The context store is read here, so every docker-py version behaves alike.

Pure: files and environment variables only; :mod:`pytest_containers._engine.connection` connects.
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pytest_containers.errors import EngineUnavailableError

__all__ = [
    "DEFAULT_SOCKET",
    "Endpoint",
    "Tls",
    "context_id",
    "endpoint_environ",
    "resolve_endpoint",
]

DEFAULT_SOCKET = "unix:///var/run/docker.sock"


@dataclass(frozen=True)
class Tls:
    """Client TLS material: a directory with ``ca.pem``, ``cert.pem`` and ``key.pem``
    (any may be missing), and whether the server's certificate is verified."""

    cert_dir: Path
    verify: bool


@dataclass(frozen=True)
class Endpoint:
    """Where the engine is, and how that was decided.

    ``url`` is what a user would write in ``DOCKER_HOST`` (``unix:///...``,
    ``tcp://host:port``, ``ssh://user@host``); ``source`` says where it came from;
    ``tried`` lists each earlier source with why it was not used.
    """

    url: str
    source: str
    tls: Tls | None = None
    tried: tuple[str, ...] = ()
    #: Further candidates to try when this one does not answer (implicit sockets only).
    fallbacks: tuple[Endpoint, ...] = field(default=(), compare=False)

    @property
    def scheme(self) -> str:
        return urllib.parse.urlsplit(self.url).scheme

    @property
    def hostname(self) -> str | None:
        """The host of a tcp or ssh endpoint as written (an ssh alias is not resolved)."""
        if self.scheme in ("tcp", "http", "https", "ssh"):
            return urllib.parse.urlsplit(self.url).hostname
        return None

    def describe(self) -> str:
        return f"{self.url} ({self.source})"


def _docker_config_dir(environ: Mapping[str, str]) -> Path:
    configured = environ.get("DOCKER_CONFIG")
    if configured:
        return Path(configured).expanduser()
    return Path(environ.get("HOME") or Path.home()) / ".docker"


def _tls_from_env(environ: Mapping[str, str]) -> Tls | None:
    # As the docker CLI: DOCKER_TLS_VERIFY set to anything but "" turns TLS on and
    # verification with it; DOCKER_CERT_PATH alone turns TLS on without verifying.
    verify = bool(environ.get("DOCKER_TLS_VERIFY"))
    cert_path = environ.get("DOCKER_CERT_PATH")
    if not verify and not cert_path:
        return None
    directory = Path(cert_path).expanduser() if cert_path else _docker_config_dir(environ)
    return Tls(directory, verify)


def context_id(name: str) -> str:
    """The directory name of a context in the docker CLI's context store."""
    return hashlib.sha256(name.encode()).hexdigest()


def _context_endpoint(name: str, how: str, environ: Mapping[str, str]) -> Endpoint:
    store = _docker_config_dir(environ) / "contexts"
    meta_path = store / "meta" / context_id(name) / "meta.json"
    try:
        meta = json.loads(meta_path.read_text())
        docker_endpoint = meta["Endpoints"]["docker"]
        host = str(docker_endpoint["Host"])
    except FileNotFoundError:
        raise EngineUnavailableError(
            f"docker context {name!r} ({how}) does not exist: no {meta_path}. List the "
            "contexts with `docker context ls`, or unset the selection"
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise EngineUnavailableError(
            f"docker context {name!r} ({how}) cannot be read from {meta_path}: {error}"
        ) from None
    tls_dir = store / "tls" / context_id(name) / "docker"
    tls = None
    if tls_dir.is_dir():
        tls = Tls(tls_dir, verify=not bool(docker_endpoint.get("SkipTLSVerify")))
    return Endpoint(host, f"docker context {name!r}, {how}", tls)


def _socket_candidates(environ: Mapping[str, str]) -> list[tuple[str, str]]:
    candidates = [(DEFAULT_SOCKET, "the default socket")]
    runtime = environ.get("XDG_RUNTIME_DIR")
    if runtime:
        candidates.append((f"unix://{runtime}/docker.sock", "the rootless Docker socket"))
        candidates.append((f"unix://{runtime}/podman/podman.sock", "the rootless podman socket"))
    candidates.append(("unix:///run/podman/podman.sock", "the podman socket"))
    return candidates


def resolve_endpoint(environ: Mapping[str, str] | None = None) -> Endpoint:
    """The engine the docker CLI would talk to, with the sources looked at.

    Raises :class:`EngineUnavailableError` when a selected context is missing or broken,
    or when no source names an engine at all.
    """
    env = os.environ if environ is None else environ
    tried: list[str] = []
    host = env.get("DOCKER_HOST", "").strip()
    if host:
        return Endpoint(host, "DOCKER_HOST", _tls_from_env(env))
    tried.append("DOCKER_HOST: not set")
    name = env.get("DOCKER_CONTEXT", "").strip()
    how = "DOCKER_CONTEXT"
    if not name:
        config = _docker_config_dir(env) / "config.json"
        try:
            name = str(json.loads(config.read_text()).get("currentContext") or "")
        except FileNotFoundError:
            pass
        except (OSError, ValueError, AttributeError) as error:
            tried.append(f"{config}: unreadable ({error})")
        how = f"currentContext in {config}"
    if name and name != "default":
        found = _context_endpoint(name, how, env)
        return Endpoint(found.url, found.source, found.tls, tuple(tried))
    tried.append("docker context: the default one" if name else "docker context: none selected")
    sockets = []
    for url, what in _socket_candidates(env):
        path = url[len("unix://") :]
        if Path(path).exists():
            sockets.append(Endpoint(url, what, None, tuple(tried)))
        else:
            tried.append(f"{what} {url}: no such file")
    if not sockets:
        raise EngineUnavailableError(
            "no Docker engine found; tried, in order: " + "; ".join(tried) + ". Start Docker "
            "(`dockerd` or `systemctl start docker`), or point DOCKER_HOST or a docker context "
            "at a running engine"
        )
    first, *others = sockets
    return Endpoint(first.url, first.source, None, tuple(tried), tuple(others))


def endpoint_environ(endpoint: Endpoint) -> dict[str, str]:
    """Environment variables that make any docker client (docker-py's ``from_env``, the
    CLI) use ``endpoint``: handed to the watchdog so it cleans up on the same engine."""
    environ = {"DOCKER_HOST": endpoint.url}
    if endpoint.tls is not None:
        environ["DOCKER_CERT_PATH"] = str(endpoint.tls.cert_dir)
        environ["DOCKER_TLS_VERIFY"] = "1" if endpoint.tls.verify else ""
    return environ
