"""``pytest --container-doctor``: how the engine was found, what it is, how tests reach
containers, the cache dir; then one small container reached the way a test reaches it.

pytest-free: the plugin hands it the settings and a function that prints a line.
"""

from __future__ import annotations

import os
import socket
import stat
import time
import uuid
from collections.abc import Callable

from pytest_containers._base.locks import default_cache_dir
from pytest_containers._base.settings import Settings
from pytest_containers._engine.connection import (
    KUBEDOCK_MEANS,
    access_for,
    connect,
    engine_identity,
    engine_info,
    own_container_id,
    resolve_endpoint,
)
from pytest_containers.errors import ContainerError

#: The image of the doctor's test container: small, with a shell and nc. Pulled through
#: the plugin's cache, so --container-mirror and the pull policy apply.
DOCTOR_IMAGE = "busybox:latest"
_GREETING = "pytest-containers-doctor"


class _Failed(Exception):
    def __init__(self, step: str, reason: str) -> None:
        super().__init__(f"{step}: {reason}")
        self.step = step
        self.reason = reason


def run_doctor(settings: Settings, say: Callable[[str], None]) -> int:
    """Run every check, saying what each found; 0 when all pass, 1 naming the step that
    failed otherwise."""

    def line(text: str) -> None:
        say(f"container-doctor: {text}")

    try:
        _check(settings, line)
    except _Failed as failure:
        line(f"FAILED at step '{failure.step}': {failure.reason}")
        return 1
    line("all checks passed")
    return 0


def _check(settings: Settings, line: Callable[[str], None]) -> None:
    try:
        endpoint = resolve_endpoint()
    except ContainerError as error:
        raise _Failed("find the engine", str(error)) from None
    for tried in endpoint.tried:
        line(f"engine source skipped: {tried}")
    line(f"engine source used: {endpoint.describe()}")
    for fallback in endpoint.fallbacks:
        line(f"engine source in reserve: {fallback.describe()}")
    try:
        client = connect(endpoint)
    except ContainerError as error:
        raise _Failed("connect to the engine", str(error)) from None
    try:
        info = engine_info(client)
        line(f"engine: {info} (API {client.api.api_version})")
        if info.kind == "kubedock":
            line(
                f"kubedock mode: {KUBEDOCK_MEANS}; build= and --container-archive fail: "
                "push images to a registry the cluster can pull from, reference them by name"
            )
        line(f"engine identity: from {engine_identity(client).source}")
        own = own_container_id(client)
        if own is None:
            line("this process runs in no container of this engine")
        else:
            line(f"this process runs in container {own[:12]} of this engine")
        access = access_for(client, override=settings.host)
        line(f"tests dial: {access.describe()}")
        _check_cache_dir(settings, line)
        _check_container(settings, line)
    finally:
        client.close()


def _check_cache_dir(settings: Settings, line: Callable[[str], None]) -> None:
    directory = settings.cache_dir or default_cache_dir()
    try:
        info = directory.stat()
    except FileNotFoundError:
        line(f"cache dir: {directory} (not made yet; the first run makes it, mode 0700)")
        return
    except OSError as error:
        raise _Failed("check the cache dir", f"{directory}: {error}") from None
    mode = stat.S_IMODE(info.st_mode)
    owner = "you" if info.st_uid == os.getuid() else f"uid {info.st_uid}, not you"
    line(f"cache dir: {directory} (owner {owner}, mode {mode:04o})")


def _check_container(settings: Settings, line: Callable[[str], None]) -> None:
    from pytest_containers._containers.container import ContainerSpec
    from pytest_containers._manager.manager import ContainerManager
    from pytest_containers.wait import for_port

    manager = ContainerManager(settings, run_id=uuid.uuid4().hex, worker="doctor")
    script = f"while true; do echo {_GREETING} | nc -l -p 7777; done"
    spec = ContainerSpec.from_kwargs(
        DOCTOR_IMAGE,
        name="doctor",
        ports=[7777],
        command=["sh", "-c", script],
        wait=for_port(7777, timeout=30),
    )
    try:
        started = time.monotonic()
        try:
            container = manager.start(spec)
        except ContainerError as error:
            raise _Failed("start a test container", str(error).splitlines()[0]) from None
        try:
            host, port = container.address(7777)
            line(
                f"started {container.name} from {container.image.ref} in "
                f"{time.monotonic() - started:.1f}s; dialling {host}:{port}"
            )
            answer = _dial(host, port)
            if _GREETING not in answer:
                raise _Failed(
                    "reach the test container",
                    f"{host}:{port} answered {answer!r}, not the container's greeting; "
                    "set --container-host to an address from which this process reaches "
                    "the engine's published ports",
                )
            line(f"reached {container.name} at {host}:{port}")
        finally:
            manager.release(container)
            line(f"removed {container.name}")
    finally:
        manager.close()
        manager.guard.stop()


def _dial(host: str, port: int, *, attempts: int = 20) -> str:
    last = ""
    for _ in range(attempts):
        try:
            with socket.create_connection((host, port), timeout=3) as connection:
                connection.settimeout(3)
                data = connection.recv(256).decode(errors="replace")
            if data:
                return data
            last = "the connection closed without data"
        except OSError as error:
            last = str(error)
        time.sleep(0.25)
    raise _Failed(
        "reach the test container",
        f"{host}:{port}: {last}; set --container-host to an address from which this "
        "process reaches the engine's published ports",
    )
