"""The local test environment, as scripts/testenv.sh made it.

The registry's address and the seed images' names come from testenv/settings.env, the one
place that the scripts, the examples and this suite share. The helpers here count pulls in
the registry's access log and make images that no engine has seen, so that pulls are cold.
"""

from __future__ import annotations

import contextlib
import http.server
import io
import json
import os
import re
import socket
import subprocess
import sys
import tarfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import docker
import docker.errors

from pytest_containers._base.image import Image

if TYPE_CHECKING:
    import pytest

    from pytest_containers._containers.container import Container

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

    def count(self, fragment: str, expected: int, timeout: float = 5.0) -> int:
        """How many lines hold ``fragment``, waiting up to ``timeout`` for ``expected``.

        The registry writes an access-log line only once it has sent the response, so
        on a busy machine a line can land a moment after the client has moved on.
        """
        deadline = time.monotonic() + timeout
        while True:
            found = sum(fragment in line for line in self.lines())
            if found >= expected or time.monotonic() > deadline:
                return found
            time.sleep(0.1)

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


def run_networks(client: docker.DockerClient, run_id: str) -> list[str]:
    """Names of the networks that carry the plugin's label for run ``run_id``."""
    found = client.api.networks(filters={"label": f"pytest-containers.run={run_id}"}) or []
    return [str(network["Name"]) for network in found]


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


def tag_in_registry(client: docker.DockerClient, image: str, prefix: str = "pct") -> str:
    """Push the seed ``image`` (Hub style) under a new tag through ``client``'s engine,
    which reaches the registry whatever the test process reaches (tests in a container
    do not reach the host's loopback), and leave that tag out of the engine: a reference
    no engine has pulled. Returns it (``busybox:pct-1a2b…``)."""
    name, _, tag = image.rpartition(":")
    target = f"{REGISTRY}/{hub_repository(name)}"
    seed = client.images.pull(target, tag=tag)
    new_tag = f"{prefix}-{uuid.uuid4().hex[:12]}"
    seed.tag(target, new_tag)
    try:
        for _ in client.api.push(target, tag=new_tag, stream=True, decode=True):
            pass
    finally:
        client.images.remove(f"{target}:{new_tag}")  # the tag only: the seed stays
    return f"{name}:{new_tag}"


def remove_image(client: docker.DockerClient, reference: str) -> None:
    """Remove ``reference`` and every other tag of the same image, so the next pull is cold."""
    try:
        image = client.images.get(reference)
    except docker.errors.ImageNotFound:
        return
    for name in [*image.tags, str(image.id)]:
        # podman removes the image with its last tag and then says NotFound for the id.
        with contextlib.suppress(docker.errors.NotFound):
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


# -- containers started directly (the tests of _containers and wait) -------------------

#: Every container this process starts directly carries this label, so leftovers can be found.
TEST_LABEL = "pytest-containers.test"
RUN_ID = uuid.uuid4().hex
LABELS = {TEST_LABEL: RUN_ID}
CASE_LABEL = "pytest-containers.test-case"


def seed_image(client: docker.DockerClient, name: str, tag: str) -> Image:
    """Pull a seed image from the local registry and describe it as the cache would."""
    repository = f"{REGISTRY}/library/{name}"
    pulled = client.images.pull(repository, tag=tag)
    ref = f"{repository}:{tag}"
    return Image(ref=ref, resolved_ref=ref, id=str(pulled.id), source="pulled")


def leftovers(client: docker.DockerClient) -> list[str]:
    """Names of the containers this process started directly that still exist."""
    found = client.containers.list(all=True, filters={"label": f"{TEST_LABEL}={RUN_ID}"})
    return [str(c.name) for c in found]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def http_get(url: str) -> tuple[int, str]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=5) as response:
        return int(response.status), response.read().decode()


class Starter:
    """Starts containers labelled with :data:`LABELS` and a label of their own test."""

    def __init__(self, client: docker.DockerClient) -> None:
        self.client = client
        self.case = uuid.uuid4().hex
        self.made: list[Container] = []

    def __call__(self, image: Image, wait_timeout: float = 30.0, **kwargs: Any) -> Container:
        from pytest_containers._containers.container import ContainerSpec, start_container

        spec = ContainerSpec.from_kwargs(image.ref, **kwargs)
        labels = {**LABELS, CASE_LABEL: self.case}
        container = start_container(
            self.client, image, spec, labels=labels, wait_timeout=wait_timeout
        )
        self.made.append(container)
        return container

    def leftovers(self) -> list[str]:
        """Names of this starter's containers that still exist."""
        found = self.client.containers.list(
            all=True, filters={"label": f"{CASE_LABEL}={self.case}"}
        )
        return [str(c.name) for c in found]

    def remove_all(self) -> None:
        from pytest_containers._containers.container import remove_container

        for container in self.made:
            remove_container(container)


# -- a registry that misbehaves on purpose ----------------------------------------------


class MisbehavingRegistry(http.server.ThreadingHTTPServer):
    """Forwards to the test registry, except that it answers 429 to manifest requests
    (``mode="rate-limit"``), never answers blob requests (``mode="stall-blobs"``),
    answers them 2.5 s late (``mode="slow-blobs"``), or answers no manifest request
    before manifests of ``expected`` repositories were asked for (``mode="meet"``: pulls
    made together get through, pulls made one after another wait 30 s, then ``missed``)."""

    daemon_threads = True

    def __init__(self, mode: str, expected: int = 0) -> None:
        super().__init__(("127.0.0.1", 0), _MisbehavingHandler)
        self.mode = mode
        self.release = threading.Event()
        self.expected = expected
        self.asked: set[str] = set()
        self.met = threading.Condition()
        self.missed = False

    def meet(self, repository: str) -> None:
        with self.met:
            self.asked.add(repository)
            self.met.notify_all()
            if not self.met.wait_for(lambda: len(self.asked) >= self.expected, timeout=30):
                self.missed = True

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"


class _MisbehavingHandler(http.server.BaseHTTPRequestHandler):
    server: MisbehavingRegistry

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)

    def _answer(self, *, body: bool) -> None:
        if self.server.mode == "rate-limit" and "/manifests/" in self.path:
            payload = json.dumps(
                {
                    "errors": [
                        {
                            "code": "TOOMANYREQUESTS",
                            "message": "You have reached your pull rate limit.",
                        }
                    ]
                }
            ).encode()
            self.send_response(429)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if body:
                self.wfile.write(payload)
            return
        if self.server.mode == "meet" and "/manifests/" in self.path:
            self.server.meet(self.path.split("/manifests/")[0])
        if self.server.mode == "stall-blobs" and "/blobs/" in self.path:
            self.server.release.wait(60)
            return
        if self.server.mode == "slow-blobs" and "/blobs/" in self.path:
            self.server.release.wait(2.5)  # then forward: a pull that takes a few seconds
        # The engine sends one Accept line per manifest type: kept apart as a dict's keys,
        # all but the last are lost, and the registry answers a schema 1 manifest instead.
        headers: dict[str, str] = {}
        for key, value in self.headers.items():
            if key.lower() != "host":
                headers[key] = f"{headers[key]}, {value}" if key in headers else value
        request = urllib.request.Request(
            f"http://{REGISTRY}{self.path}", headers=headers, method=self.command
        )
        try:
            response = urllib.request.urlopen(request, timeout=10)
        except urllib.error.HTTPError as error:
            response = error
        with response:
            data = response.read()
            self.send_response(response.status)
            for key, value in response.headers.items():
                if key.lower() not in ("connection", "transfer-encoding"):
                    self.send_header(key, value)
            self.end_headers()
            if body:
                self.wfile.write(data)


@contextlib.contextmanager
def misbehaving_registry(mode: str, expected: int = 0) -> Iterator[MisbehavingRegistry]:
    server = MisbehavingRegistry(mode, expected)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()


def wait_until_gone(client: docker.DockerClient, run_id: str, seconds: float) -> float:
    """Wait until no container of ``run_id`` is left; how long that took."""
    started = time.monotonic()
    while run_containers(client, run_id):
        assert time.monotonic() - started < seconds, run_containers(client, run_id)
        time.sleep(0.2)
    return time.monotonic() - started


def start_pytest(pytester: pytest.Pytester, run_id: str, *args: str) -> subprocess.Popen[str]:
    """pytest on pytester's suite in a process of its own (its own session, to kill)."""
    return subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", MIRROR_OPTION,
         f"--testrunuid={run_id}", *args],
        cwd=pytester.path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip


def wait_for_files(directory: Path, count: int, seconds: float = 60) -> None:
    """Wait until the inner run's tests wrote ``count`` files into ``directory``."""
    deadline = time.monotonic() + seconds
    while len(list(directory.iterdir())) < count:
        assert time.monotonic() < deadline, "the inner run never got its containers up"
        time.sleep(0.1)
