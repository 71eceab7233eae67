"""The image cache against the real engine and registry: pulls are counted in the
registry's access log, so "pulled once" means one manifest request, not one log line of
ours. Concurrency is real too: OS processes, each with its own cache, like xdist workers.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
import pytest

from pytest_containers._base.image import Image
from pytest_containers._engine.connection import engine_identity
from pytest_containers._images.cache import ImageCache, PullPolicy
from pytest_containers._images.lockfile import Pin, UnpinnedImageError
from pytest_containers._images.pull import PullProgress
from pytest_containers.errors import (
    ContainerError,
    ImageNotFoundError,
    ImagePullError,
    ImageReferenceError,
)
from tests.testenv import (
    REGISTRY,
    ROOT,
    RegistryLog,
    _busybox_tar,
    misbehaving_registry,
    remove_image,
    run_together,
)

pytestmark = pytest.mark.docker

MakeImage = Callable[[], str]


def _cache(
    client: docker.DockerClient, cache_dir: Path, run_id: str = "run-1", **options: Any
) -> ImageCache:
    options.setdefault("mirror", REGISTRY)
    return ImageCache(client, cache_dir=cache_dir, run_id=run_id, **options)


def _registry_digest(name: str) -> str:
    """The digest the registry serves for ``name`` (``library/<repo>:<tag>``), asked with
    GET so that it does not look like a pull (HEAD) in the log's manifest counts."""
    repository, _, tag = name.rpartition(":")
    request = urllib.request.Request(
        f"http://{REGISTRY}/v2/{repository}/manifests/{tag}",
        headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
        method="GET",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return str(response.headers["Docker-Content-Digest"])


def _failed_pulls(log: RegistryLog, image: str) -> int:
    """Pulls of ``image`` that the registry answered "manifest unknown". The engine asks
    HEAD first and, on a 404, GET again, so each such pull logs two manifest requests;
    the HEADs count the pulls."""
    name, _, tag = image.rpartition(":")
    needle = f'"HEAD /v2/library/{name}/manifests/{tag} '
    return sum(1 for line in log.lines() if needle in line)


# -- several processes ------------------------------------------------------------------

# Each child is an xdist worker in miniature: its own client and cache, the shared
# cache directory. They all wait for a "go" file so that their get() calls coincide.
_CHILD = """
import json, sys, time
from pathlib import Path
import docker
from pytest_containers._images.cache import ImageCache
from pytest_containers.errors import ImagePullError

cfg = json.loads(sys.argv[1])
cache = ImageCache(
    docker.from_env(timeout=120), cache_dir=Path(cfg["cache_dir"]), run_id=cfg["run_id"],
    policy=cfg["policy"], mirror=cfg["mirror"], retry_budget=cfg["retry_budget"],
)
cache.engine_id
print("ready", flush=True)
go = Path(cfg["go"])
while not go.exists():
    time.sleep(0.002)
try:
    image = cache.get(cfg["image"])
    out = {"id": image.id, "source": image.source, "digest": image.digest}
except ImagePullError as error:
    out = {"error": type(error).__name__, "kind": error.kind, "message": error.message}
print(json.dumps(out), flush=True)
"""


def _in_processes(
    tmp_path: Path,
    image: str,
    run_ids: list[str],
    *,
    policy: str = "missing",
    retry_budget: float = 5.0,
) -> list[dict[str, Any]]:
    """Run one child per run id, all calling get(image) at the same moment."""
    configs = [
        {
            "cache_dir": str(tmp_path / "cache"),
            "run_id": run_id,
            "policy": policy,
            "mirror": REGISTRY,
            "retry_budget": retry_budget,
            "image": image,
        }
        for run_id in run_ids
    ]
    return run_together(_CHILD, configs, tmp_path / f"go-{uuid.uuid4().hex[:8]}")


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- one process -----------------------------------------------------------------------


def test_cold_get_pulls_once_then_finds_it_present(
    docker_client: docker.DockerClient, unique_image: MakeImage, tmp_path: Path
) -> None:
    image = unique_image()
    log = RegistryLog()
    progress: list[PullProgress] = []
    cache = _cache(docker_client, tmp_path, on_progress=progress.append)

    first = cache.get(image)
    assert log.manifest_requests(image) == 1
    second = cache.get(image)
    assert log.manifest_requests(image) == 1

    assert (first.source, second.source) == ("pulled", "present")
    assert first.ref == image
    assert first.resolved_ref == f"{REGISTRY}/library/{image}"
    assert first.id == second.id == docker_client.images.get(first.resolved_ref).id
    assert first.digest == second.digest == _registry_digest(f"library/{image}")
    assert progress
    assert progress[-1].done
    assert cache.resolved() == [first]
    state = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert state["run_id"] == "run-1"
    assert state["image_id"] == first.id
    assert state["digest"] == first.digest
    assert state["error"] is None


def test_threads_asking_at_once_cause_one_pull(
    docker_client: docker.DockerClient, unique_image: MakeImage, tmp_path: Path
) -> None:
    image = unique_image()
    log = RegistryLog()
    cache = _cache(docker_client, tmp_path)
    barrier = threading.Barrier(8)
    results: list[Image] = []

    def get() -> None:
        barrier.wait()
        results.append(cache.get(image))

    threads = [threading.Thread(target=get) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert len(results) == 8
    assert log.manifest_requests(image) == 1
    assert len({result.id for result in results}) == 1
    assert sorted(result.source for result in results).count("pulled") >= 1


def test_invalid_reference_fails_before_any_docker_call(tmp_path: Path) -> None:
    class NoEngine:
        def __getattr__(self, name: str) -> Any:
            raise AssertionError(f"the engine was asked for {name}")

    cache = ImageCache(NoEngine(), cache_dir=tmp_path, run_id="r")  # type: ignore[arg-type]
    for bad in ("Redis:7", "redis:", "redis@sha256:123", "a b"):
        with pytest.raises(ImageReferenceError):
            cache.get(bad)
    with pytest.raises(ImageReferenceError):
        cache.get("redis:7", platform="linux")


def test_never_policy_fails_fast_on_a_missing_image(
    docker_client: docker.DockerClient, unique_image: MakeImage, tmp_path: Path
) -> None:
    image = unique_image()
    log = RegistryLog()
    cache = _cache(docker_client, tmp_path, policy=PullPolicy.NEVER)
    started = time.monotonic()
    with pytest.raises(ImageNotFoundError) as caught:
        cache.get(image)
    assert time.monotonic() - started < 2
    assert log.manifest_requests(image) == 0
    assert caught.value.kind == "policy"
    assert image in str(caught.value)
    assert "--container-pull=missing" in str(caught.value)

    # Once present it is used as is, still without asking the registry.
    _cache(docker_client, tmp_path).get(image)
    log = RegistryLog()
    assert cache.get(image).source == "present"
    assert log.manifest_requests(image) == 0


def test_never_policy_names_a_reference_no_mirror_rewrote_once(
    docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    reference = f"{REGISTRY}/qa/absent-{uuid.uuid4().hex[:8]}:1"
    cache = _cache(docker_client, tmp_path, policy=PullPolicy.NEVER)
    with pytest.raises(ImageNotFoundError) as caught:
        cache.get(reference)
    assert str(caught.value).count(reference) == 2  # the image, and `docker pull` of it
    assert f"({reference})" not in str(caught.value)


def test_digest_reference_pulls_by_digest_and_only_once(
    docker_client: docker.DockerClient, unique_image: MakeImage, tmp_path: Path
) -> None:
    image = unique_image()
    name = image.partition(":")[0]
    digest = _registry_digest(f"library/{image}")
    pinned = f"{name}@{digest}"
    log = RegistryLog()
    cache = _cache(docker_client, tmp_path, policy="always")
    try:
        first = cache.get(pinned)
        second = cache.get(pinned)
    finally:
        remove_image(docker_client, f"{REGISTRY}/library/{pinned}")
    by_digest = [line for line in log.lines() if f"/library/{name}/manifests/{digest} " in line]
    assert len(by_digest) == 1  # "always" has nothing to refresh in a digest
    assert log.manifest_requests(image) == 0  # never by tag
    assert (first.source, second.source) == ("pulled", "present")
    assert first.digest == digest
    assert first.resolved_ref == f"{REGISTRY}/library/{pinned}"


@pytest.mark.parametrize("what", ["tag", "repository"])
def test_unknown_image_is_a_permanent_error(
    docker_client: docker.DockerClient, tmp_path: Path, what: str
) -> None:
    image = "busybox:no-such-tag" if what == "tag" else f"nope-{uuid.uuid4().hex[:8]}:1"
    log = RegistryLog()
    cache = _cache(docker_client, tmp_path, retry_budget=30)
    started = time.monotonic()
    with pytest.raises(ImagePullError) as caught:
        cache.get(image)
    assert time.monotonic() - started < 5  # not retried
    assert _failed_pulls(log, image) == 1
    error = caught.value
    assert isinstance(error, ImageNotFoundError)
    assert error.kind == "permanent"
    assert error.image == image
    assert error.registry == REGISTRY
    assert "manifest unknown" in error.reason
    for part in (image, REGISTRY, error.reason):
        assert part in str(error)


def test_registry_down_is_transient_and_retried_within_the_budget(
    docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    port = _closed_port()
    cache = _cache(docker_client, tmp_path, mirror=f"127.0.0.1:{port}", retry_budget=2)
    started = time.monotonic()
    with pytest.raises(ImagePullError) as caught:
        cache.get("busybox:1.35")
    elapsed = time.monotonic() - started
    assert 0.5 < elapsed < 5
    error = caught.value
    assert error.kind == "transient"
    assert error.registry == f"127.0.0.1:{port}"
    assert "connection refused" in error.reason
    assert "busybox:1.35" in str(error)
    assert "attempts" in str(error)


def test_rate_limit_says_to_log_in_or_use_a_mirror(
    docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    with misbehaving_registry("rate-limit") as registry:
        cache = _cache(docker_client, tmp_path, mirror=registry.address, retry_budget=0)
        with pytest.raises(ImagePullError) as caught:
            cache.get("busybox:1.35")
    assert caught.value.kind == "rate-limited"
    assert "toomanyrequests" in caught.value.reason
    assert "docker login" in str(caught.value)
    assert "--container-mirror" in str(caught.value)


def test_stalled_pull_is_aborted(
    docker_client: docker.DockerClient, unique_image: MakeImage, tmp_path: Path
) -> None:
    image = unique_image()
    with misbehaving_registry("stall-blobs") as registry:
        cache = _cache(
            docker_client, tmp_path, mirror=registry.address, stall_timeout=1, retry_budget=0
        )
        started = time.monotonic()
        with pytest.raises(ImagePullError) as caught:
            cache.get(image)
        assert time.monotonic() - started < 5
        # The pull's connection was cut: the thread reading it is gone.
        for _ in range(50):
            readers = [
                t for t in threading.enumerate() if t.name.startswith("pytest-containers-pull")
            ]
            if not readers:
                break
            time.sleep(0.1)
        assert not readers
    assert caught.value.kind == "stalled"
    assert registry.address in str(caught.value)
    assert "last event from the engine" in caught.value.reason


def test_corrupted_state_file_counts_as_no_record(
    docker_client: docker.DockerClient, unique_image: MakeImage, tmp_path: Path
) -> None:
    image = unique_image()
    log = RegistryLog()
    _cache(docker_client, tmp_path, policy="always").get(image)
    (state,) = tmp_path.glob("*.json")
    # The same run finds its record: no second pull.
    assert _cache(docker_client, tmp_path, policy="always").get(image).source == "present"
    assert log.manifest_requests(image) == 1

    state.write_text('{"run_id": "run-1", "image_')
    again = _cache(docker_client, tmp_path, policy="always").get(image)
    assert again.source == "pulled"  # no usable record: pulled anew, no crash
    assert log.manifest_requests(image) == 2
    assert json.loads(state.read_text())["image_id"] == again.id


def test_killed_lock_holder_does_not_block(
    docker_client: docker.DockerClient, unique_image: MakeImage, tmp_path: Path
) -> None:
    image = unique_image()
    cache = _cache(docker_client, tmp_path, lock_timeout=10)
    lock_path, _ = cache.obtainer.files(cache.targets.of(image))
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from pathlib import Path\n"
            "from pytest_containers._base.locks import exclusive\n"
            "with exclusive(Path(sys.argv[1]), timeout=10, what='test'):\n"
            "    print('locked', flush=True)\n"
            "    time.sleep(60)\n",
            str(lock_path),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT / "src")),
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ContainerError, match="timed out"):
            _cache(docker_client, tmp_path, lock_timeout=0.3).get(image)
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(10)
        started = time.monotonic()
        assert cache.get(image).source == "pulled"
        assert time.monotonic() - started < 3
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


# -- several processes -----------------------------------------------------------------


def test_workers_of_one_run_pull_once(
    docker_client: docker.DockerClient, unique_image: MakeImage, tmp_path: Path
) -> None:
    image = unique_image()
    log = RegistryLog()
    results = _in_processes(tmp_path, image, ["run-1"] * 4)
    assert log.manifest_requests(image) == 1
    assert len({result["id"] for result in results}) == 1
    assert sorted(result["source"] for result in results) == ["present"] * 3 + ["pulled"]


def test_two_runs_at_once_pull_once_with_policy_missing(
    docker_client: docker.DockerClient, unique_image: MakeImage, tmp_path: Path
) -> None:
    image = unique_image()
    log = RegistryLog()
    results = _in_processes(tmp_path, image, ["run-a", "run-b", "run-a", "run-b"])
    assert log.manifest_requests(image) == 1
    assert len({result["id"] for result in results}) == 1


def test_always_pulls_once_per_run(
    docker_client: docker.DockerClient, unique_image: MakeImage, tmp_path: Path
) -> None:
    image = unique_image()
    log = RegistryLog()
    results = _in_processes(tmp_path, image, ["run-1"] * 4, policy="always")
    assert log.manifest_requests(image) == 1
    assert sorted(result["source"] for result in results) == ["present"] * 3 + ["pulled"]

    # The image is present now, but a new run with "always" pulls it again, once.
    results = _in_processes(tmp_path, image, ["run-2"] * 4, policy="always")
    assert log.manifest_requests(image) == 2
    assert sorted(result["source"] for result in results) == ["present"] * 3 + ["pulled"]


def test_failure_is_shared_by_the_run_and_retried_by_the_next(
    docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    image = f"nope-{uuid.uuid4().hex[:8]}:1"
    log = RegistryLog()
    results = _in_processes(tmp_path, image, ["run-1"] * 4)
    assert _failed_pulls(log, image) == 1
    assert [result["kind"] for result in results] == ["permanent"] * 4
    assert {result["error"] for result in results} == {"ImageNotFoundError"}
    assert len({result["message"] for result in results}) == 1

    # The same run asks again later (another test): the record answers.
    with pytest.raises(ImageNotFoundError):
        _cache(docker_client, tmp_path / "cache").get(image)
    assert _failed_pulls(log, image) == 1
    # Another run tries again.
    with pytest.raises(ImageNotFoundError):
        _cache(docker_client, tmp_path / "cache", run_id="run-2").get(image)
    assert _failed_pulls(log, image) == 2


# -- prefetch ---------------------------------------------------------------------------


def test_prefetch_pulls_in_parallel(
    docker_client: docker.DockerClient, unique_image: MakeImage, tmp_path: Path
) -> None:
    images = [unique_image() for _ in range(3)]
    log = RegistryLog()
    # No pull gets its manifest before all three asked for theirs: pulls made one after
    # another would wait out the stand-in's timeout. No clock is read, so a busy machine
    # cannot fail this; how much time parallel pulls save is bench/pulls.py's to say.
    with misbehaving_registry("meet", expected=3) as registry:
        cache = _cache(docker_client, tmp_path, mirror=registry.address)
        cache.prefetch((image, None) for image in images)
        try:
            results = [cache.get(image) for image in images]
            # Later gets find them present.
            again = [cache.get(image).source for image in images]
        finally:
            cache.close()
            # Pulled under the stand-in's address, which unique_image does not remove.
            for image in images:
                remove_image(docker_client, f"{registry.address}/library/{image}")

    assert not registry.missed, f"the pulls were not under way together: {registry.asked}"
    assert [result.ref for result in results] == images
    assert all(result.source == "pulled" for result in results)
    assert all(log.manifest_requests(image) == 1 for image in images)
    assert again == ["present"] * 3
    assert {image.ref for image in cache.resolved()} == set(images)


def test_prefetch_error_belongs_to_its_image_only(
    docker_client: docker.DockerClient, unique_image: MakeImage, tmp_path: Path
) -> None:
    good = unique_image()
    bad = f"nope-{uuid.uuid4().hex[:8]}:1"
    log = RegistryLog()
    cache = _cache(docker_client, tmp_path)
    cache.prefetch([(bad, None), (good, None), (bad, None)])
    assert cache.get(good).source == "pulled"
    with pytest.raises(ImageNotFoundError) as caught:
        cache.get(bad)
    assert caught.value.image == bad
    with pytest.raises(ImageNotFoundError):
        cache.get(bad)  # still failing, from the run's record, without a new pull
    assert _failed_pulls(log, bad) == 1
    assert log.manifest_requests(good) == 1
    cache.close()


def test_close_lets_a_prefetch_under_way_finish_and_report_it(
    docker_client: docker.DockerClient, unique_image: MakeImage, tmp_path: Path
) -> None:
    # An xdist worker with no test to run closes right after prefetching; the pull it
    # won the lock for must not die half-way, and the summary needs its outcome.
    image = unique_image()
    started = threading.Event()
    cache = _cache(docker_client, tmp_path, on_progress=lambda progress: started.set())
    cache.prefetch([(image, None)])
    assert started.wait(30)
    cache.close()
    assert [(found.ref, found.source) for found in cache.resolved()] == [(image, "pulled")]
    assert docker_client.images.get(f"{REGISTRY}/library/{image}").id == cache.resolved()[0].id


def test_engine_id_is_asked_once(docker_client: docker.DockerClient, tmp_path: Path) -> None:
    cache = _cache(docker_client, tmp_path)
    assert cache.engine_id == engine_identity(docker_client).key
    assert cache.engine_id is cache.engine_id


# -- pins -------------------------------------------------------------------------------


def _push_again(client: docker.DockerClient, image: str, marker: str) -> str:
    """Push another image under ``image``'s tag (the tag moves); its digest."""
    name, _, tag = image.partition(":")
    target = f"{REGISTRY}/library/{name}"
    client.api.import_image_from_data(
        _busybox_tar(marker), repository=target, tag=tag, changes=['CMD ["sh"]', "ENV PATH=/bin"]
    )
    for _ in client.api.push(target, tag=tag, stream=True, decode=True):
        pass
    remove_image(client, f"{target}:{tag}")
    return _registry_digest(f"library/{image}")


def _marker(client: docker.DockerClient, image_id: str) -> str:
    """The marker file of an image made by tests.testenv: which image it really is."""
    container = client.containers.create(image_id, ["cat", "/etc/image-id"])
    try:
        container.start()
        assert container.wait(timeout=30)["StatusCode"] == 0
        return bytes(container.logs(stdout=True, stderr=False)).decode()
    finally:
        container.remove(force=True)


def test_pin_resolves_the_pinned_digest_after_the_tag_moved(
    docker_client: docker.DockerClient, unique_image: MakeImage, tmp_path: Path
) -> None:
    image = unique_image()
    name = image.partition(":")[0]
    made: list[str] = []
    try:
        first = _cache(docker_client, tmp_path).get(image)
        made.append(first.id)
        digest_a = first.digest
        assert digest_a == _registry_digest(f"library/{image}")
        remove_image(docker_client, first.id)
        digest_b = _push_again(docker_client, image, "image B")
        assert digest_b != digest_a

        log = RegistryLog()
        pins = {"whatever": Pin(image, None, digest_a)}
        cache = _cache(docker_client, tmp_path, "run-2", pins=pins)
        assert cache.targets.of(image).pin == pins["whatever"]  # keyed afresh by pin_key
        pinned = cache.get(image)
        made.append(pinned.id)
        assert (pinned.source, pinned.pinned) == ("pulled", True)
        assert pinned.resolved_ref == f"{REGISTRY}/library/{image}@{digest_a}"
        assert (pinned.id, pinned.digest) == (first.id, digest_a)
        assert _marker(docker_client, pinned.id) == name  # A's content, not B's
        # Pulled by digest: the tag was never asked for, and A's config came again (the
        # engine may take A's manifest from its own content store, which keeps manifests
        # fetched by digest, so that GET is not always in the log).
        assert log.manifest_requests(image) == 0
        config_a = f"GET /v2/library/{name}/blobs/{first.id} "
        assert log.count(config_a, 1) == 1, "\n".join(log.lines())
        again = cache.get(image)
        assert (again.source, again.id, again.pinned) == ("present", first.id, True)

        # Without the pin, the tag: B.
        unpinned = _cache(docker_client, tmp_path, "run-3").get(image)
        made.append(unpinned.id)
        assert (unpinned.source, unpinned.pinned) == ("pulled", False)
        assert unpinned.digest == digest_b
        assert unpinned.id != first.id
        assert _marker(docker_client, unpinned.id) == "image B"
        # With the pin again, A is found in the engine although the tag now names B.
        assert _cache(docker_client, tmp_path, "run-4", pins=pins).get(image).id == first.id
    finally:
        for image_id in made:
            remove_image(docker_client, image_id)


def test_pin_applies_to_the_reference_as_written_and_its_platform(
    docker_client: docker.DockerClient, unique_image: MakeImage, tmp_path: Path
) -> None:
    image = unique_image()
    digest = _registry_digest(f"library/{image}")
    pin = Pin(image, "linux/amd64", digest)
    cache = _cache(docker_client, tmp_path, pins={pin.key: pin})
    assert cache.targets.of(image, "Linux/x86_64").pin == pin
    assert cache.targets.of(image).pin is None
    assert cache.targets.of(f"docker.io/library/{image}", "linux/amd64").pin is None
    try:
        on_platform = cache.get(image, platform="linux/amd64")
        plain = cache.get(image)
    finally:
        remove_image(docker_client, f"{REGISTRY}/library/{image}")
    assert on_platform.pinned
    assert on_platform.resolved_ref.endswith(f"@{digest}")
    assert not plain.pinned
    assert plain.resolved_ref == f"{REGISTRY}/library/{image}"
    assert plain.digest == digest


def test_a_written_digest_takes_no_pin(tmp_path: Path) -> None:
    digest = "sha256:" + "1" * 64
    written = f"redis@{'sha256:' + '2' * 64}"
    cache = ImageCache(
        _NoEngine(),  # type: ignore[arg-type]
        cache_dir=tmp_path,
        run_id="r",
        pins={"x": Pin(written, None, digest)},
    )
    target = cache.targets.of(written)
    assert target.pin is None
    assert target.resolved.digest == "sha256:" + "2" * 64


class _NoEngine:
    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the engine was asked for {name}")


def test_required_pins_fail_before_any_docker_call(tmp_path: Path) -> None:
    digest = "sha256:" + "1" * 64
    cache = ImageCache(
        _NoEngine(),  # type: ignore[arg-type]
        cache_dir=tmp_path,
        run_id="r",
        pins={"x": Pin("redis:7", None, digest)},
        require_pins=True,
    )
    with pytest.raises(UnpinnedImageError) as caught:
        cache.get("redis:6")
    assert caught.value.image == "redis:6"
    assert "pytest --container-lock=update" in str(caught.value)
    with pytest.raises(UnpinnedImageError, match="on linux/arm64"):
        cache.get("redis:7", platform="linux/arm64")
    cache.prefetch([("redis:6", None)])  # skipped: get() reports it
    cache.close()
    assert cache.resolved() == []


def test_pinned_digest_the_registry_lacks_says_to_update_the_lock(
    docker_client: docker.DockerClient, unique_image: MakeImage, tmp_path: Path
) -> None:
    image = unique_image()
    gone = "sha256:" + "0" * 64
    cache = _cache(docker_client, tmp_path, pins={image: Pin(image, None, gone)})
    with pytest.raises(ImageNotFoundError) as caught:
        cache.get(image)
    assert gone in str(caught.value)
    assert "pytest --container-lock=update" in str(caught.value)
