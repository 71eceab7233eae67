"""The image cache's figures, measured through the plugin as users run it.

Generated suites run as pytest subprocesses against the local registry (``--container-
mirror``) with a fresh ``--container-cache-dir``, on images that no engine has seen (pushed
by this script, so that every pull is real). Pulls are counted as manifest requests in the
registry's access log:

* a cold ``-n 4`` run of 8 tests x 2 images: manifest fetches per image (target 1);
* ``--container-pull=always`` with ``-n 4``, two runs in a row: pulls per image per run
  (target 1 each);
* two concurrent cold runs (``-n 2`` each) on one engine: pulls in total (target 1);
* three distinct cold images of ``--size-mb`` MB of random data each: the wall time of
  pulling them together (``ImageCache.prefetch`` + ``get``, and through the plugin's
  prefetch in a 3-test suite) against the slowest single pull and the sum of the single
  pulls (target: near the slowest, well under the sum).

Everything it pushes, pulls or starts is removed at the end, even on failure (the
registry keeps the blobs of the deleted manifests until its garbage collection).

    .venv/bin/python bench/pulls.py [--rounds 3] [--size-mb 32]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import docker
import docker.errors

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pytest_containers._images.cache import ImageCache  # noqa: E402
from tests.testenv import (  # noqa: E402
    MIRROR_OPTION,
    REGISTRY,
    RegistryLog,
    push_unique_image,
    remove_image,
)

RUN_LABEL = "pytest-containers.run"


@dataclass
class Made:
    """What this script created, to remove at the end whatever happens."""

    images: list[str] = field(default_factory=list)  # Hub-style names, ``pct-…:1``
    run_ids: list[str] = field(default_factory=list)


def registry_ref(image: str) -> str:
    """``pct-1a2b:1`` -> ``127.0.0.1:5555/library/pct-1a2b:1``, what the engine holds."""
    return f"{REGISTRY}/library/{image}"


# --- images --------------------------------------------------------------------------------


def _big_tar(marker: str, size: int) -> bytes:
    """A root filesystem with a static busybox and ``size`` bytes of random data, which
    no compression shrinks, so that pulling it takes a measurable time."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add("/bin/busybox", arcname="bin/busybox")
        for applet in ("sh", "sleep", "true", "cat"):
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type = tarfile.SYMTYPE
            link.linkname = "busybox"
            tar.addfile(link)
        for name, data in (("data/random", os.urandom(size)), ("etc/image-id", marker.encode())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def push_big_image(client: docker.DockerClient, made: Made, size_mb: int) -> str:
    """Push a unique image of about ``size_mb`` MB to the registry, absent from the engine."""
    name = f"pctbench-{uuid.uuid4().hex[:12]}"
    target = registry_ref(name)
    made.images.append(f"{name}:1")
    client.api.import_image_from_data(
        _big_tar(name, size_mb << 20),
        repository=target,
        tag="1",
        changes=['CMD ["sh"]', "ENV PATH=/bin"],
    )
    for line in client.api.push(target, tag="1", stream=True, decode=True):
        if "error" in line:
            raise SystemExit(f"pushing {target} failed: {line['error']}")
    remove_image(client, f"{target}:1")
    return f"{name}:1"


def push_small_image(client: docker.DockerClient, made: Made) -> str:
    name = push_unique_image(client, prefix="pctbench")
    made.images.append(name)
    return name


def delete_from_registry(image: str) -> None:
    """Delete the manifest of ``image`` (``name:tag``) from the registry (delete is on)."""
    name, _, tag = image.rpartition(":")
    base = f"http://{REGISTRY}/v2/library/{name}/manifests"
    accept = "application/vnd.docker.distribution.manifest.v2+json"
    head = urllib.request.Request(f"{base}/{tag}", method="HEAD", headers={"Accept": accept})
    with urllib.request.urlopen(head, timeout=10) as response:
        digest = response.headers["Docker-Content-Digest"]
    delete = urllib.request.Request(f"{base}/{digest}", method="DELETE")
    with urllib.request.urlopen(delete, timeout=10):
        pass


def clean_up(client: docker.DockerClient, made: Made) -> None:
    for run_id in made.run_ids:
        found = client.api.containers(all=True, filters={"label": f"{RUN_LABEL}={run_id}"})
        for entry in found:
            with contextlib.suppress(docker.errors.NotFound):
                client.api.remove_container(entry["Id"], force=True, v=True)
    for image in made.images:
        remove_image(client, registry_ref(image))
        with contextlib.suppress(OSError):
            delete_from_registry(image)


# --- pytest runs ---------------------------------------------------------------------------


def pytest_command(cache_dir: Path, run_id: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        MIRROR_OPTION,
        f"--container-cache-dir={cache_dir}",
        f"--testrunuid={run_id}",
        *extra,
    ]


def check(result: subprocess.CompletedProcess[str], passed: int) -> str:
    output = result.stdout + result.stderr
    if result.returncode != 0 or f"{passed} passed" not in output:
        raise SystemExit(f"pytest failed ({result.returncode}):\n{output}")
    return output


def run_pytest(
    directory: Path, cache_dir: Path, made: Made, passed: int, *extra: str
) -> tuple[float, str]:
    run_id = uuid.uuid4().hex
    made.run_ids.append(run_id)
    started = time.perf_counter()
    result = subprocess.run(
        pytest_command(cache_dir, run_id, *extra),
        cwd=directory,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    return time.perf_counter() - started, check(result, passed)


@contextlib.contextmanager
def suite(source: str) -> Iterator[tuple[Path, Path]]:
    """A temporary directory with the test module ``source``; yields it and a fresh,
    empty cache directory."""
    with tempfile.TemporaryDirectory(prefix="pctbench-") as tmp:
        directory = Path(tmp) / "suite"
        directory.mkdir()
        (directory / "pytest.ini").write_text("[pytest]\n")
        (directory / "test_bench.py").write_text(source)
        yield directory, Path(tmp) / "cache"


def container_test(name: str, image: str, count: int) -> str:
    return (
        f"@pytest.mark.parametrize('n', range({count}))\n"
        f"@pytest.mark.container({image!r}, command=['sleep', '30'])\n"
        f"def test_{name}(container, n):\n"
        "    pass\n\n\n"
    )


# --- the scenarios -------------------------------------------------------------------------


def cold_run(client: docker.DockerClient, made: Made) -> list[int]:
    """A cold -n 4 run of 8 tests x 2 images: manifest fetches per image."""
    images = [push_small_image(client, made) for _ in range(2)]
    source = "import pytest\n\n\n" + "".join(
        container_test(f"image_{index}", image, 8) for index, image in enumerate(images)
    )
    with suite(source) as (directory, cache_dir):
        log = RegistryLog()
        run_pytest(directory, cache_dir, made, 16, "-n", "4")
        return [log.manifest_requests(image) for image in images]


def pull_always(client: docker.DockerClient, made: Made) -> list[int]:
    """--container-pull=always, -n 4, two runs in a row: pulls of the image in each run."""
    image = push_small_image(client, made)
    source = "import pytest\n\n\n" + container_test("always", image, 8)
    counts = []
    with suite(source) as (directory, cache_dir):
        for _ in range(2):
            log = RegistryLog()
            run_pytest(directory, cache_dir, made, 8, "-n", "4", "--container-pull=always")
            counts.append(log.manifest_requests(image))
    return counts


def concurrent_runs(client: docker.DockerClient, made: Made) -> int:
    """Two concurrent cold runs (-n 2 each), one engine and cache dir: pulls in total."""
    image = push_small_image(client, made)
    source = "import pytest\n\n\n" + container_test("shared", image, 4)
    with suite(source) as (directory, cache_dir):
        log = RegistryLog()
        run_ids = [uuid.uuid4().hex for _ in range(2)]
        made.run_ids.extend(run_ids)
        runs = [
            subprocess.Popen(
                pytest_command(cache_dir, run_id, "-n", "2"),
                cwd=directory,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for run_id in run_ids
        ]
        for run in runs:
            try:
                output, _ = run.communicate(timeout=300)
            except subprocess.TimeoutExpired:
                for other in runs:
                    other.kill()
                raise
            check(subprocess.CompletedProcess(run.args, run.returncode, output, ""), 4)
        return log.manifest_requests(image)


@dataclass
class Parallel:
    singles: list[list[float]] = field(default_factory=list)  # per round, per image
    together: list[float] = field(default_factory=list)  # ImageCache.prefetch + get
    plugin: list[float] = field(default_factory=list)  # the plugin's prefetch, per summary
    engine_cpu: list[float] = field(default_factory=list)  # dockerd's, pulling together


def _dockerd_pid() -> int | None:
    for comm in Path("/proc").glob("[0-9]*/comm"):
        with contextlib.suppress(OSError):
            if comm.read_text().strip() == "dockerd":
                return int(comm.parent.name)
    return None


def engine_cpu_seconds(pid: int | None) -> float | None:
    """CPU seconds the local dockerd (with its finished children, which unpack layers)
    has used: pulling is CPU-bound, which caps what parallel pulls can gain."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return sum(int(value) for value in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def _image_cache(cache_dir: Path) -> ImageCache:
    cache = ImageCache(
        docker.from_env(timeout=300), cache_dir=cache_dir, run_id=uuid.uuid4().hex, mirror=REGISTRY
    )
    _ = cache.engine_id  # docker info once, before the clock starts
    return cache


def single_pulls(
    client: docker.DockerClient, images: Sequence[str], cache_dir: Path
) -> list[float]:
    seconds = []
    for image in images:
        remove_image(client, registry_ref(image))
        cache = _image_cache(cache_dir)
        started = time.perf_counter()
        pulled = cache.get(image)
        seconds.append(time.perf_counter() - started)
        cache.close()
        cache.client.close()
        if pulled.source != "pulled":
            raise SystemExit(f"{image} was {pulled.source}, not pulled")
    return seconds


def pulls_together(client: docker.DockerClient, images: Sequence[str], cache_dir: Path) -> float:
    for image in images:
        remove_image(client, registry_ref(image))
    cache = _image_cache(cache_dir)
    started = time.perf_counter()
    cache.prefetch((image, None) for image in images)
    pulled = [cache.get(image) for image in images]
    seconds = time.perf_counter() - started
    cache.close()
    cache.client.close()
    if any(image.source != "pulled" for image in pulled):
        raise SystemExit(f"not all pulled: {pulled}")
    return seconds


def summary_seconds(output: str, image: str) -> float:
    """How long the plugin's summary (``containers: images``) says pulling ``image`` took."""
    found = re.search(rf"^{re.escape(image)}\s+\S+\s+(\w+)\s+([0-9.]+) s\s*$", output, re.MULTILINE)
    if found is None:
        raise SystemExit(f"the summary does not list {image}:\n{output}")
    if found.group(1) != "pulled":
        raise SystemExit(f"{image} was {found.group(1)}, not pulled:\n{output}")
    return float(found.group(2))


def pulls_by_plugin(
    client: docker.DockerClient, images: Sequence[str], directory: Path, cache_dir: Path, made: Made
) -> float:
    """The three images pulled by the plugin's prefetch (a 3-test suite, one process):
    the longest of the pull times its summary reports, all pulls having started at once."""
    for image in images:
        remove_image(client, registry_ref(image))
    _, output = run_pytest(directory, cache_dir, made, len(images), "-p", "no:randomly")
    return max(summary_seconds(output, image) for image in images)


def parallel_pulls(client: docker.DockerClient, made: Made, rounds: int, size_mb: int) -> Parallel:
    images = [push_big_image(client, made, size_mb) for _ in range(3)]
    source = "import pytest\n\n\n" + "".join(
        f"@pytest.mark.container({image!r}, command=['sleep', '30'])\n"
        f"def test_image_{index}(container):\n    pass\n\n\n"
        for index, image in enumerate(images)
    )
    result = Parallel()
    dockerd = _dockerd_pid()

    def together() -> None:
        before = engine_cpu_seconds(dockerd)
        result.together.append(pulls_together(client, images, cache_dir))
        after = engine_cpu_seconds(dockerd)
        if before is not None and after is not None:
            result.engine_cpu.append(after - before)

    with suite(source) as (directory, cache_dir):
        for round_ in range(rounds):
            # Alternate which goes first, so that neither always meets a warmer engine.
            order = images[round_ % 3 :] + images[: round_ % 3]
            if round_ % 2:
                together()
                result.plugin.append(pulls_by_plugin(client, images, directory, cache_dir, made))
                singles = single_pulls(client, order, cache_dir)
            else:
                singles = single_pulls(client, order, cache_dir)
                result.plugin.append(pulls_by_plugin(client, images, directory, cache_dir, made))
                together()
            result.singles.append([singles[order.index(image)] for image in images])
    return result


# --- main ----------------------------------------------------------------------------------


def verdict(values: Sequence[int], target: int) -> str:
    return "ok" if all(value == target for value in values) else "MISSED"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size-mb", type=int, default=32, help="random data per big image")
    args = parser.parse_args()
    client = docker.from_env(timeout=300)
    made = Made()
    try:
        print(f"image cache figures, {args.rounds} rounds, registry {REGISTRY}")
        cold = [cold_run(client, made) for _ in range(args.rounds)]
        flat = [count for counts in cold for count in counts]
        print("cold -n 4 run, 8 tests x 2 images: manifest fetches per image (target 1)")
        print(f"  per round: {cold}  [{verdict(flat, 1)}]")
        always = [pull_always(client, made) for _ in range(args.rounds)]
        flat = [count for counts in always for count in counts]
        print("--container-pull=always, -n 4: pulls of the image in run 1, run 2 (target 1, 1)")
        print(f"  per round: {always}  [{verdict(flat, 1)}]")
        together = [concurrent_runs(client, made) for _ in range(args.rounds)]
        print("two concurrent cold runs, -n 2 each: pulls of the image in total (target 1)")
        print(f"  per round: {together}  [{verdict(together, 1)}]")
        parallel = parallel_pulls(client, made, args.rounds, args.size_mb)
        slowest = statistics.median(max(singles) for singles in parallel.singles)
        total = statistics.median(sum(singles) for singles in parallel.singles)
        print(
            f"three cold {args.size_mb} MB images pulled together, median of {args.rounds} rounds"
        )
        for index in range(3):
            alone = statistics.median(singles[index] for singles in parallel.singles)
            print(f"  image {index + 1} alone (ImageCache.get):        {alone:.3f} s")
        print(f"  slowest single pull:                     {slowest:.3f} s")
        print(f"  sum of the single pulls:                 {total:.3f} s")
        for label, values in (
            ("ImageCache.prefetch + get", parallel.together),
            ("plugin prefetch (summary)", parallel.plugin),
        ):
            wall = statistics.median(values)
            print(
                f"  together, {label}: {wall:.3f} s  ratio to slowest {wall / slowest:.2f}, "
                f"to sum {wall / total:.2f}  (target: near 1 and well under 1)"
            )
        if parallel.engine_cpu:
            cpu = statistics.median(parallel.engine_cpu)
            cores = os.cpu_count() or 1
            print(
                f"  dockerd CPU while pulling the three: {cpu:.2f} s on {cores} cores, so at "
                f"least {cpu / cores:.2f} s of wall time (ratio {cpu / cores / slowest:.2f} to "
                f"the slowest); load average {os.getloadavg()[0]:.1f}"
            )
    finally:
        clean_up(client, made)
        client.close()


if __name__ == "__main__":
    main()
