"""What the plugin adds to starting a container and waiting until it is ready.

Two figures, each against a hand-written docker-py equivalent doing the same work, measured
side by side (alternating) in one run:

* start-to-ready of ``--containers`` containers per image, one after the other, waiting
  for a log line: busybox ``sh -c "echo ready; exec sleep 60"`` and redis ("Ready to
  accept connections"). The plugin side is ``_containers.start_container`` and
  ``remove_container`` (the container start path), and ``ContainerManager.start`` and
  ``release`` (what the fixtures call: the image cache's lookup, labels, names, too); the
  hand-written side creates from the image id, starts, streams the logs until the line
  and removes. Prints per-container medians (ready, and ready + removal) and the ratios.
  Target: plugin <= 1.15x hand-written.
* an 8-test suite, each test pinging its own redis container (TCP PING -> +PONG), run as
  a pytest subprocess with ``-n 2``: the plugin's marker with ``wait.for_log`` against a
  hand-written fixture (create, start, stream the logs, remove; the port published on
  127.0.0.1) run with ``-p no:containers``. Median wall time of ``--rounds`` rounds, and
  the ratio; also the CPU time of the pytest processes, steadier than wall time on a
  shared machine. Target <= 1.15x. Both suites cache byte-code in a temporary directory
  (``PYTHONPYCACHEPREFIX``) even under ``PYTHONDONTWRITEBYTECODE``, as an installed plugin
  has its byte-code compiled; otherwise the editable plugin's modules are compiled anew in
  each of the three processes of a run (~0.15 s of CPU each).

Every container it starts is removed at the end, even on failure.

    .venv/bin/python bench/startup.py [--rounds 5] [--containers 20] [--images busybox redis]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import docker
import docker.errors

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pytest_containers import wait  # noqa: E402
from pytest_containers._base.image import Image  # noqa: E402
from pytest_containers._base.settings import Settings  # noqa: E402
from pytest_containers._containers.container import (  # noqa: E402
    ContainerSpec,
    remove_container,
    start_container,
)
from pytest_containers._manager.manager import ContainerManager  # noqa: E402
from tests.testenv import BUSYBOX, MIRROR_OPTION, REDIS, REGISTRY  # noqa: E402

BENCH_LABEL = "pytest-containers-bench"
RUN_LABEL = "pytest-containers.run"
REDIS_READY = "Ready to accept connections"


@dataclass(frozen=True)
class Workload:
    """An image as a test declares it, the command to run and the log line of readiness."""

    name: str
    image: str  # Hub style, as a test writes it
    command: tuple[str, ...] | None
    line: str

    @property
    def resolved(self) -> str:
        """What the engine holds: the image through the mirror."""
        return f"{REGISTRY}/library/{self.image}"


WORKLOADS = {
    "busybox": Workload("busybox", BUSYBOX, ("sh", "-c", "echo ready; exec sleep 60"), "ready"),
    "redis": Workload("redis", REDIS, None, REDIS_READY),
}


@dataclass
class Cleanup:
    """What to remove at the end whatever happens: containers by label."""

    bench_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    run_ids: list[str] = field(default_factory=list)

    def remove(self, client: docker.DockerClient) -> int:
        labels = [f"{BENCH_LABEL}={self.bench_id}"]
        labels += [f"{RUN_LABEL}={run_id}" for run_id in self.run_ids]
        removed = 0
        for label in labels:
            for entry in client.api.containers(all=True, filters={"label": label}):
                with contextlib.suppress(docker.errors.NotFound):
                    client.api.remove_container(entry["Id"], force=True, v=True)
                    removed += 1
        return removed


# --- start-to-ready, in this process --------------------------------------------------------

Timing = tuple[float, float]  # (create -> ready, create -> removed)
Starter = Callable[[], Timing]


def ensure_image(client: docker.DockerClient, reference: str) -> str:
    try:
        return str(client.images.get(reference).id)
    except docker.errors.ImageNotFound:
        return str(client.images.pull(reference).id)


def hand_written(client: docker.DockerClient, image_id: str, load: Workload, label: str) -> Starter:
    needle = load.line.encode()

    def run() -> Timing:
        started = time.perf_counter()
        command = list(load.command) if load.command else None
        container = client.containers.create(image_id, command=command, labels={BENCH_LABEL: label})
        try:
            container.start()
            seen = b""
            for chunk in container.logs(stream=True, follow=True):
                seen += chunk
                if needle in seen:
                    break
            else:
                raise SystemExit(f"{load.name}: the log stream ended without {load.line!r}")
            ready = time.perf_counter()
        finally:
            container.remove(force=True, v=True)
        return ready - started, time.perf_counter() - started

    return run


def plugin_start_path(
    client: docker.DockerClient, image_id: str, load: Workload, label: str
) -> Starter:
    image = Image(ref=load.image, resolved_ref=load.resolved, id=image_id)
    spec = ContainerSpec.from_kwargs(load.image, command=load.command, wait=wait.for_log(load.line))

    def run() -> Timing:
        started = time.perf_counter()
        container = start_container(
            client,
            image,
            spec,
            labels={BENCH_LABEL: label},
            name=f"pctbench-{uuid.uuid4().hex[:12]}",
        )
        ready = time.perf_counter()
        remove_container(container)
        return ready - started, time.perf_counter() - started

    return run


def plugin_manager(manager: ContainerManager, load: Workload) -> Starter:
    spec = ContainerSpec.from_kwargs(load.image, command=load.command, wait=wait.for_log(load.line))

    def run() -> Timing:
        started = time.perf_counter()
        container = manager.start(spec)
        ready = time.perf_counter()
        manager.release(container)
        return ready - started, time.perf_counter() - started

    return run


def start_to_ready(
    client: docker.DockerClient, load: Workload, count: int, cache_dir: Path, cleanup: Cleanup
) -> dict[str, list[Timing]]:
    run_id = uuid.uuid4().hex
    cleanup.run_ids.append(run_id)
    manager = ContainerManager(
        Settings(mirror=REGISTRY, cache_dir=cache_dir, prefetch=False), run_id=run_id, worker="main"
    )
    try:
        image_id = ensure_image(client, load.resolved)
        starters = {
            "start_container": plugin_start_path(client, image_id, load, cleanup.bench_id),
            "ContainerManager": plugin_manager(manager, load),
            "hand-written": hand_written(client, image_id, load, cleanup.bench_id),
        }
        names = list(starters)
        for name in names:  # warm up: connections, the watchdog, the image cache
            starters[name]()
        timings: dict[str, list[Timing]] = {name: [] for name in names}
        for index in range(count):
            for name in names[index % 3 :] + names[: index % 3]:  # rotate the order
                timings[name].append(starters[name]())
        return timings
    finally:
        manager.close()
        with contextlib.suppress(Exception):
            manager.remove_run_containers()
        manager.guard.stop()
        manager.client.close()


def report_start_to_ready(timings: dict[str, list[Timing]]) -> None:
    hand = timings["hand-written"]
    hand_ready = statistics.median(ready for ready, _ in hand)
    hand_total = statistics.median(total for _, total in hand)
    for side, values in timings.items():
        ready = statistics.median(ready for ready, _ in values)
        total = statistics.median(total for _, total in values)
        line = f"  {side:<17} to ready {ready * 1000:6.1f} ms, with removal {total * 1000:6.1f} ms"
        if side != "hand-written":
            paired = statistics.median(
                mine[0] / theirs[0] for mine, theirs in zip(values, hand, strict=True)
            )
            line += (
                f"  ratio {ready / hand_ready:.3f} / {total / hand_total:.3f}, paired {paired:.3f}"
            )
        print(line)


# --- the 8-test redis suite -----------------------------------------------------------------

PLUGIN_SUITE = f"""\
import socket

import pytest

from pytest_containers import wait


@pytest.mark.parametrize("n", range(8))
@pytest.mark.container({REDIS!r}, ports=[6379], wait=wait.for_log({REDIS_READY!r}))
def test_ping(container, n):
    with socket.create_connection(container.address(6379), timeout=5) as connection:
        connection.sendall(b"PING\\r\\n")
        assert connection.recv(64) == b"+PONG\\r\\n"
"""

#: The hand-written suites' redis: docker-py by hand, one container per test, ready when
#: its log says so (shared with bench/speed.py).
HAND_REDIS_FIXTURES = f"""
@pytest.fixture(scope="session")
def client():
    client = docker.from_env()
    yield client
    client.close()


@pytest.fixture(scope="session")
def image_id(client):
    try:
        return client.images.get(IMAGE).id
    except docker.errors.ImageNotFound:
        return client.images.pull(IMAGE).id


@pytest.fixture
def redis(client, image_id):
    container = client.containers.create(
        image_id, ports={{"6379/tcp": ("127.0.0.1", None)}}, labels=LABELS
    )
    try:
        container.start()
        seen = b""
        for chunk in container.logs(stream=True, follow=True):
            seen += chunk
            if {REDIS_READY.encode()!r} in seen:
                break
        container.reload()
        port = container.attrs["NetworkSettings"]["Ports"]["6379/tcp"][0]["HostPort"]
        yield "127.0.0.1", int(port)
    finally:
        container.remove(force=True, v=True)
"""

HAND_SUITE = f"""\
import os
import socket

import docker
import docker.errors
import pytest

IMAGE = {f"{REGISTRY}/library/{REDIS}"!r}
LABELS = {{{BENCH_LABEL!r}: os.environ["PCTBENCH_ID"]}}


{HAND_REDIS_FIXTURES}

@pytest.mark.parametrize("n", range(8))
def test_ping(redis, n):
    with socket.create_connection(redis, timeout=5) as connection:
        connection.sendall(b"PING\\r\\n")
        assert connection.recv(64) == b"+PONG\\r\\n"
"""


@contextlib.contextmanager
def suites() -> Iterator[tuple[Path, Path, Path]]:
    """Directories with the plugin suite and the hand-written one, and a cache directory."""
    with tempfile.TemporaryDirectory(prefix="pctbench-") as tmp:
        base = Path(tmp)
        for name, source in (("plugin", PLUGIN_SUITE), ("hand", HAND_SUITE)):
            (base / name).mkdir()
            (base / name / "pytest.ini").write_text("[pytest]\n")
            (base / name / "test_redis.py").write_text(source)
        yield base / "plugin", base / "hand", base / "cache"


def suite_environment(bench_id: str, pycache: Path) -> dict[str, str]:
    """The environment of the suites' pytest processes.

    Byte-code is cached (in ``pycache``, not in the source tree) even where
    PYTHONDONTWRITEBYTECODE is set: an editable install without cached byte-code would
    compile the plugin's modules in every process, which an installed plugin never does.
    """
    env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(pycache)
    env["PCTBENCH_ID"] = bench_id
    return env


Run = tuple[float, float]  # (wall seconds, CPU seconds of the pytest processes)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_suite(directory: Path, command: list[str], env: dict[str, str]) -> Run:
    cpu = _children_cpu()
    started = time.perf_counter()
    result = subprocess.run(
        command,
        cwd=directory,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
        env=env,
    )
    elapsed = time.perf_counter() - started
    if result.returncode != 0 or "8 passed" not in result.stdout:
        raise SystemExit(f"pytest failed ({result.returncode}):\n{result.stdout}{result.stderr}")
    return elapsed, _children_cpu() - cpu


def redis_suites(rounds: int, cleanup: Cleanup) -> tuple[list[Run], list[Run]]:
    base = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2"]
    plugin_times: list[Run] = []
    hand_times: list[Run] = []
    with suites() as (plugin_dir, hand_dir, cache_dir):
        env = suite_environment(cleanup.bench_id, cache_dir.parent / "pycache")

        def plugin() -> Run:
            run_id = uuid.uuid4().hex
            cleanup.run_ids.append(run_id)
            options = [MIRROR_OPTION, f"--container-cache-dir={cache_dir}"]
            return run_suite(plugin_dir, [*base, *options, f"--testrunuid={run_id}"], env)

        def hand() -> Run:
            return run_suite(hand_dir, [*base, "-p", "no:containers"], env)

        plugin()  # warm up: byte-code, the image cache's state
        hand()
        for index in range(rounds):
            if index % 2:
                hand_times.append(hand())
                plugin_times.append(plugin())
            else:
                plugin_times.append(plugin())
                hand_times.append(hand())
    return plugin_times, hand_times


# --- main ------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=5, help="runs of each redis suite")
    parser.add_argument("--containers", type=int, default=20, help="per image and side")
    parser.add_argument(
        "--images", nargs="+", choices=sorted(WORKLOADS), default=["busybox", "redis"]
    )
    args = parser.parse_args()
    client = docker.from_env(timeout=120)
    cleanup = Cleanup()
    try:
        with tempfile.TemporaryDirectory(prefix="pctbench-cache-") as cache_dir:
            for name in args.images:
                load = WORKLOADS[name]
                timings = start_to_ready(client, load, args.containers, Path(cache_dir), cleanup)
                print(
                    f"{name}: {args.containers} containers per side, one at a time, waiting "
                    f"for {load.line!r}; per-container medians"
                )
                report_start_to_ready(timings)
                print(
                    "  (ratio: of the medians, to ready / with removal; paired: median of the "
                    "ratios of containers started back to back; target <= 1.15)"
                )
        plugin_times, hand_times = redis_suites(args.rounds, cleanup)
        plugin = statistics.median(wall for wall, _ in plugin_times)
        hand = statistics.median(wall for wall, _ in hand_times)
        plugin_cpu = statistics.median(cpu for _, cpu in plugin_times)
        hand_cpu = statistics.median(cpu for _, cpu in hand_times)
        print(f"8 tests x own redis container, -n 2, median of {args.rounds} rounds")
        print(
            f"  plugin (marker, wait.for_log):  {plugin:.3f} s  (CPU of pytest {plugin_cpu:.2f} s)"
        )
        print(f"  hand-written docker-py fixture: {hand:.3f} s  (CPU of pytest {hand_cpu:.2f} s)")
        print(
            f"  ratio: {plugin / hand:.3f} (target <= 1.15); load average {os.getloadavg()[0]:.1f}"
        )
    finally:
        left = cleanup.remove(client)
        if left:
            print(f"removed {left} containers left behind")
        client.close()


if __name__ == "__main__":
    main()
