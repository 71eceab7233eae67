"""The local test environment, as scripts/testenv.sh made it.

The registry's address and the seed images' names come from testenv/settings.env, the one
place that the scripts, the examples and this suite share. The helpers here count pulls in
the registry's access log and make images that no engine has seen, so that pulls are cold.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import uuid
from pathlib import Path
from typing import Any

import docker
import docker.errors

ROOT = Path(__file__).resolve().parents[1]


def _read_settings() -> dict[str, str]:
    settings: dict[str, str] = {}
    for line in (ROOT / "testenv" / "settings.env").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition("=")
        settings[key] = os.environ.get(key, value)
    return settings


SETTINGS = _read_settings()
REGISTRY = SETTINGS["TESTENV_REGISTRY"]
#: A registry that refuses every pull: it wants a login nobody has.
AUTH_REGISTRY = SETTINGS["TESTENV_AUTH_REGISTRY"]
TESTENV_DIR = Path(SETTINGS["TESTENV_DIR"])
REGISTRY_LOG = TESTENV_DIR / "registry.log"

#: Docker Hub style names of the seed images; pull them with --container-mirror=REGISTRY.
BUSYBOX = "busybox:" + SETTINGS["TESTENV_BUSYBOX_TAGS"].split()[0]
REDIS = "redis:" + SETTINGS["TESTENV_REDIS_TAGS"].split()[0]

#: The plugin option that points Docker Hub names at the local registry.
MIRROR_OPTION = f"--container-mirror={REGISTRY}"


def hub_repository(name: str) -> str:
    """``busybox`` -> ``library/busybox``: the repository path the registry logs."""
    return name if "/" in name else f"library/{name}"


class RegistryLog:
    """The registry's access log from the moment this object was made on.

    Each ``docker pull`` asks once for the tag's manifest (HEAD or GET
    /v2/<name>/manifests/<tag>), then GETs by digest only what the engine lacks.
    """

    def __init__(self, path: Path = REGISTRY_LOG) -> None:
        self.path = path
        self.offset = path.stat().st_size if path.exists() else 0

    def lines(self) -> list[str]:
        with self.path.open("rb") as log:
            log.seek(self.offset)
            return log.read().decode(errors="replace").splitlines()

    def manifest_requests(self, image: str) -> int:
        """How many pulls asked for the manifest of ``image`` (``name:tag``, Hub style).

        The engine asks HEAD first; when that is a 404 it asks GET as well, for the same
        pull, so a GET that follows an unanswered HEAD is not counted again.
        """
        name, _, tag = image.rpartition(":")
        pattern = re.compile(
            rf'"(HEAD|GET) /v2/{re.escape(hub_repository(name))}/manifests/{re.escape(tag)} '
            r'HTTP/[0-9.]+" (\d{3})'
        )
        pulls = unanswered_heads = 0
        for line in self.lines():
            match = pattern.search(line)
            if match is None:
                continue
            method, status = match.groups()
            if method == "GET" and unanswered_heads:
                unanswered_heads -= 1
                continue
            pulls += 1
            if method == "HEAD" and status == "404":
                unanswered_heads += 1
        return pulls

    def blob_downloads(self, image: str) -> int:
        """How many blobs (layers, configs) of ``image``'s repository were downloaded."""
        name = image.rpartition(":")[0]
        pattern = re.compile(rf'"GET /v2/{re.escape(hub_repository(name))}/blobs/sha256:')
        return sum(1 for line in self.lines() if pattern.search(line))


def run_containers(client: docker.DockerClient, run_id: str) -> list[str]:
    """Names of the containers that carry the plugin's label for run ``run_id``."""
    # The low-level call: containers.list() inspects each one, racing with removals.
    found = client.api.containers(all=True, filters={"label": f"pytest-containers.run={run_id}"})
    return [str(container["Names"][0]).lstrip("/") for container in found]


def _busybox_tar(marker: str) -> bytes:
    """A root filesystem with a static busybox and a file that makes the image unique."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add("/bin/busybox", arcname="bin/busybox")
        for applet in ("sh", "sleep", "echo", "cat", "nc", "httpd", "true", "false", "ls"):
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type = tarfile.SYMTYPE
            link.linkname = "busybox"
            tar.addfile(link)
        for directory in ("tmp", "etc"):
            info = tarfile.TarInfo(directory)
            info.type = tarfile.DIRTYPE
            info.mode = 0o1777 if directory == "tmp" else 0o755
            tar.addfile(info)
        data = marker.encode()
        info = tarfile.TarInfo("etc/image-id")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def push_unique_image(
    client: docker.DockerClient, prefix: str = "pct", *, name: str | None = None,
    marker: str | None = None,
) -> str:  # fmt: skip
    """Push a small busybox image that no engine has seen to the registry, under a new
    Hub-style name, and leave it out of the engine. Returns the name (``pct-1a2b…:1``).

    With ``name``, push under that name instead (moving its tag ``1``); ``marker`` is the
    content of /etc/image-id in the image (default: the name), which tells images apart.
    """
    name = name or f"{prefix}-{uuid.uuid4().hex[:12]}"
    target = f"{REGISTRY}/library/{name}"
    client.api.import_image_from_data(
        _busybox_tar(marker or name), repository=target, tag="1",
        changes=['CMD ["sh"]', "ENV PATH=/bin"],
    )  # fmt: skip
    for _ in client.api.push(target, tag="1", stream=True, decode=True):
        pass
    remove_image(client, f"{target}:1")
    return f"{name}:1"


def remove_image(client: docker.DockerClient, reference: str) -> None:
    """Remove ``reference`` and every other tag of the same image, so the next pull is cold."""
    try:
        image = client.images.get(reference)
    except docker.errors.ImageNotFound:
        return
    for name in [*image.tags, str(image.id)]:
        with contextlib.suppress(docker.errors.ImageNotFound):
            client.images.remove(name, force=True)


def run_together(
    child_code: str, configs: list[dict[str, Any]], go: Path, *, timeout: float = 60
) -> list[dict[str, Any]]:
    """Run one ``python -c child_code config-json`` per config, all released at the same
    moment: each child prints "ready", waits for the file ``go`` (``config["go"]``), then
    prints one JSON line with its result. Returns the results in order."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    children = [
        subprocess.Popen(
            [sys.executable, "-c", child_code, json.dumps({**config, "go": str(go)})],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for config in configs
    ]
    try:
        for child in children:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "ready"
        go.touch()
        results = []
        for child in children:
            out, _ = child.communicate(timeout=timeout)
            assert child.returncode == 0
            results.append(json.loads(out.strip().splitlines()[-1]))
        return results
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()


#: docker-py keeps up to this many connections to the engine open for reuse, per client.
DOCKER_PY_POOL = 25


def open_descriptors() -> tuple[int, int]:
    """(sockets, other descriptors) this process has open. Sockets are counted apart:
    each docker-py client's connection pool keeps up to DOCKER_PY_POOL of them, no leak."""
    sockets = others = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # the descriptor listdir itself used, already closed
        if target.startswith("socket:"):
            sockets += 1
        else:
            others += 1
    return sockets, others
