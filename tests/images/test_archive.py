"""Image archives against the real engine and registry: a run fills the archive, a later
run with the registry out of reach (a mirror on a closed port; the shared registry stays
up for the other tests) loads from it, and a damaged tarball is never used silently.
"""

from __future__ import annotations

import io
import json
import logging
import socket
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from pytest_containers._base.image import Image
from pytest_containers._base.reference import parse_reference
from pytest_containers._images.archive import INDEX_NAME, ArchiveError, ImageArchive
from pytest_containers._images.cache import ImageCache, PullPolicy
from pytest_containers._images.lockfile import Pin
from pytest_containers.errors import ImageNotFoundError, ImagePullError
from tests.testenv import REGISTRY, RegistryLog, remove_image

pytestmark = pytest.mark.docker

MakeImage = Callable[[], str]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _cache(
    client: docker.DockerClient, cache_dir: Path, run_id: str = "run-1", **options: Any
) -> ImageCache:
    options.setdefault("mirror", REGISTRY)
    return ImageCache(client, cache_dir=cache_dir, run_id=run_id, **options)


def _offline_mirror() -> str:
    """A mirror nobody answers on: the registry is out of reach, quickly."""
    return f"127.0.0.1:{_closed_port()}"


@pytest.fixture
def images_made(docker_client: docker.DockerClient) -> Iterator[list[str]]:
    """Image ids to remove at the end, with every tag they got (loads add tags)."""
    ids: list[str] = []
    yield ids
    for image_id in ids:
        remove_image(docker_client, image_id)


def _fill(
    client: docker.DockerClient, image: str, tmp_path: Path, archive: Path, made: list[str]
) -> Image:
    """Pull ``image`` with an archive: the archive then holds it. Removed from the engine."""
    pulled = _cache(client, tmp_path / "cache-fill", archive_dir=archive).get(image)
    made.append(pulled.id)
    assert pulled.source == "pulled"
    assert pulled.note is None
    remove_image(client, pulled.id)
    return pulled


def _index(archive: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((archive / INDEX_NAME).read_text())
    return data


def test_pulled_image_is_archived_by_digest(
    docker_client: docker.DockerClient, unique_image: MakeImage, tmp_path: Path
) -> None:
    image = unique_image()
    archive = tmp_path / "archive"
    cache = _cache(docker_client, tmp_path / "cache", archive_dir=archive)
    try:
        pulled = cache.get(image)
        assert cache.get(image).source == "present"
    finally:
        remove_image(docker_client, f"{REGISTRY}/library/{image}")
    name = image.partition(":")[0]
    assert pulled.digest is not None
    hex_digest = pulled.digest.partition(":")[2]
    tarball = archive / f"docker.io_library_{name}@sha256-{hex_digest}.tar"
    assert sorted(p.name for p in archive.iterdir()) == sorted(
        [".index.lock", INDEX_NAME, tarball.name]
    )
    index = _index(archive)
    assert index["tags"] == {f"docker.io/library/{image}": pulled.digest}
    record = index["archives"][f"docker.io/library/{name}@{pulled.digest}"]
    assert record["file"] == tarball.name
    assert record["image_id"] == pulled.id
    # Saved with its tag, so that a plain `docker load` restores it too.
    with tarfile.open(tarball) as tar:
        member = tar.extractfile("manifest.json")
        assert member is not None
        manifest = json.loads(member.read())
    assert manifest[0]["RepoTags"] == [f"{REGISTRY}/library/{image}"]
    assert record["config"] == pulled.id  # the classic image store: id = config digest


def test_a_present_image_the_archive_lacks_is_archived(
    docker_client: docker.DockerClient, unique_image: MakeImage, tmp_path: Path
) -> None:
    image = unique_image()
    archive = tmp_path / "archive"
    pulled = _cache(docker_client, tmp_path / "cache").get(image)
    try:
        present = _cache(docker_client, tmp_path / "cache", archive_dir=archive).get(image)
    finally:
        remove_image(docker_client, pulled.id)
    assert present.source == "present"
    assert present.digest == pulled.digest
    entry = ImageArchive(archive).find(parse_reference(image), None)
    assert entry is not None
    assert entry.image_id == pulled.id


def test_offline_loads_from_the_archive_by_tag(
    docker_client: docker.DockerClient,
    unique_image: MakeImage,
    tmp_path: Path,
    images_made: list[str],
) -> None:
    image = unique_image()
    archive = tmp_path / "archive"
    filled = _fill(docker_client, image, tmp_path, archive, images_made)

    log = RegistryLog()
    mirror = _offline_mirror()
    cache = _cache(docker_client, tmp_path / "cache", "run-2", mirror=mirror, archive_dir=archive)
    loaded = cache.get(image)
    again = cache.get(image)

    assert log.manifest_requests(image) == 0
    assert loaded.source == "loaded"
    assert (loaded.id, loaded.digest) == (filled.id, filled.digest)
    assert loaded.resolved_ref == f"{mirror}/library/{image}"
    assert loaded.note is None
    # It answers to the reference the cache resolved, as a pulled image would.
    assert docker_client.images.get(loaded.resolved_ref).id == filled.id
    assert (again.source, again.id, again.digest) == ("present", filled.id, filled.digest)
    # The digest stays known to a run that did not load it (no RepoDigests after a load).
    other = _cache(docker_client, tmp_path / "cache-3", "run-3", mirror=mirror, archive_dir=archive)
    assert other.get(image).digest == filled.digest


def test_offline_loads_a_pinned_digest_from_the_archive(
    docker_client: docker.DockerClient,
    unique_image: MakeImage,
    tmp_path: Path,
    images_made: list[str],
) -> None:
    image = unique_image()
    archive = tmp_path / "archive"
    filled = _fill(docker_client, image, tmp_path, archive, images_made)
    assert filled.digest is not None
    pins = {image: Pin(image, None, filled.digest)}

    log = RegistryLog()
    mirror = _offline_mirror()
    cache = _cache(
        docker_client, tmp_path / "cache", "run-2", mirror=mirror, archive_dir=archive, pins=pins
    )
    loaded = cache.get(image)
    again = cache.get(image)

    assert log.manifest_requests(image) == 0
    assert (loaded.source, loaded.pinned) == ("loaded", True)
    assert (loaded.id, loaded.digest) == (filled.id, filled.digest)
    assert loaded.resolved_ref == f"{mirror}/library/{image}@{filled.digest}"
    # Found again by the id recorded with the digest: a loaded image has no RepoDigests.
    assert (again.source, again.id) == ("present", filled.id)
    # Tagged as the pinned reference it was loaded for, so `docker image prune` spares it.
    assert f"{mirror}/library/{image}" in docker_client.images.get(loaded.id).tags


def test_policy_never_loads_from_the_archive(
    docker_client: docker.DockerClient,
    unique_image: MakeImage,
    tmp_path: Path,
    images_made: list[str],
) -> None:
    image, absent = unique_image(), unique_image()
    archive = tmp_path / "archive"
    filled = _fill(docker_client, image, tmp_path, archive, images_made)

    log = RegistryLog()
    cache = _cache(
        docker_client, tmp_path / "cache", "run-2", policy=PullPolicy.NEVER, archive_dir=archive
    )
    loaded = cache.get(image)
    assert (loaded.source, loaded.id) == ("loaded", filled.id)
    assert log.manifest_requests(image) == 0

    with pytest.raises(ImageNotFoundError) as caught:
        cache.get(absent)
    assert caught.value.kind == "policy"
    assert f"the image archive {archive} has no copy of it" in str(caught.value)
    assert log.manifest_requests(absent) == 0


def test_always_falls_back_to_the_archive_when_the_registry_is_out_of_reach(
    docker_client: docker.DockerClient,
    unique_image: MakeImage,
    tmp_path: Path,
    images_made: list[str],
) -> None:
    image = unique_image()
    archive = tmp_path / "archive"
    filled = _fill(docker_client, image, tmp_path, archive, images_made)

    cache = _cache(
        docker_client,
        tmp_path / "cache",
        "run-2",
        mirror=_offline_mirror(),
        policy=PullPolicy.ALWAYS,
        archive_dir=archive,
        retry_budget=0,
    )
    loaded = cache.get(image)
    assert (loaded.source, loaded.id) == ("loaded", filled.id)
    assert loaded.note is not None
    assert "pulling failed (transient" in loaded.note
    assert str(archive) in loaded.note
    # The run's other gets reuse it, as they would reuse a pull.
    assert cache.get(image).source == "present"


def test_always_pulls_when_the_registry_answers(
    docker_client: docker.DockerClient,
    unique_image: MakeImage,
    tmp_path: Path,
    images_made: list[str],
) -> None:
    image = unique_image()
    archive = tmp_path / "archive"
    _fill(docker_client, image, tmp_path, archive, images_made)
    log = RegistryLog()
    cache = _cache(
        docker_client, tmp_path / "cache", "run-2", policy=PullPolicy.ALWAYS, archive_dir=archive
    )
    assert cache.get(image).source == "pulled"
    assert log.manifest_requests(image) == 1


def _truncate(tarball: Path) -> None:
    data = tarball.read_bytes()
    tarball.write_bytes(data[: len(data) // 2])


def _flip_layer_bytes(tarball: Path) -> None:
    """Bit rot inside a layer: the tar and its manifest still read fine."""
    with tarfile.open(tarball) as tar:
        layer = next(m for m in tar.getmembers() if m.name.endswith(".tar") and m.size > 1000)
    position = layer.offset_data + layer.size // 2
    with tarball.open("r+b") as stream:
        stream.seek(position)
        chunk = stream.read(16)
        stream.seek(position)
        stream.write(bytes(b ^ 0xFF for b in chunk))


def _another_image(tarball: Path) -> None:
    """A valid tarball of another image, under this one's name."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in (
            ("manifest.json", b'[{"Config": "c.json", "RepoTags": null, "Layers": []}]'),
            ("c.json", b'{"architecture": "amd64", "os": "linux"}'),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    tarball.write_bytes(buffer.getvalue())


# What was done to the tarball, and what the message then says about it.
DAMAGE = {
    "truncated": (_truncate, "not a readable tarball"),
    "layer-bit-rot": (_flip_layer_bytes, "invalid diffID"),
    "other-image": (_another_image, "holds config sha256:"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_tarball_is_not_used_but_pulled_and_archived_anew(
    docker_client: docker.DockerClient,
    unique_image: MakeImage,
    tmp_path: Path,
    images_made: list[str],
    caplog: pytest.LogCaptureFixture,
    damage: str,
) -> None:
    image = unique_image()
    archive = tmp_path / "archive"
    filled = _fill(docker_client, image, tmp_path, archive, images_made)
    (tarball,) = archive.glob("*.tar")
    spoil, symptom = DAMAGE[damage]
    spoil(tarball)

    log = RegistryLog()
    cache = _cache(docker_client, tmp_path / "cache", "run-2", archive_dir=archive)
    with caplog.at_level(logging.WARNING, logger="pytest_containers"):
        result = cache.get(image)
    assert (result.source, result.id) == ("pulled", filled.id)
    assert log.manifest_requests(image) == 1
    assert result.note is not None
    assert "archived copy could not be used" in result.note
    assert symptom in result.note
    assert any(symptom in record.getMessage() for record in caplog.records)
    # The archive holds a good copy again.
    entry = ImageArchive(archive).find(parse_reference(image), None)
    assert entry is not None
    remove_image(docker_client, filled.id)
    assert ImageArchive(archive).load(docker_client, entry)["Id"] == filled.id


def test_damaged_tarball_and_no_registry_is_a_clear_error(
    docker_client: docker.DockerClient,
    unique_image: MakeImage,
    tmp_path: Path,
    images_made: list[str],
) -> None:
    image = unique_image()
    archive = tmp_path / "archive"
    _fill(docker_client, image, tmp_path, archive, images_made)
    (tarball,) = archive.glob("*.tar")
    _flip_layer_bytes(tarball)

    cache = _cache(
        docker_client,
        tmp_path / "cache",
        "run-2",
        mirror=_offline_mirror(),
        archive_dir=archive,
        retry_budget=0,
    )
    with pytest.raises(ImagePullError) as caught:
        cache.get(image)
    message = str(caught.value)
    assert caught.value.kind == "transient"
    assert "archived copy could not be used" in message
    assert "invalid diffID" in message
    assert tarball.name in message


def test_archive_write_failing_midway_leaves_no_partial_tarball(
    docker_client: docker.DockerClient,
    unique_image: MakeImage,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    image = unique_image()
    archive = tmp_path / "archive"
    real_get_image = docker_client.api.get_image

    def failing(source: str, chunk_size: int | None = None) -> Iterator[bytes]:
        chunks = real_get_image(source, chunk_size=4096)
        yield next(chunks)
        yield next(chunks)
        raise docker.errors.APIError("the engine went away mid-save")

    monkeypatch.setattr(docker_client.api, "get_image", failing)
    cache = _cache(docker_client, tmp_path / "cache", archive_dir=archive)
    try:
        result = cache.get(image)
    finally:
        remove_image(docker_client, f"{REGISTRY}/library/{image}")
    # The test is not failed by it: the image is there, the note and the log say why.
    assert result.source == "pulled"
    assert result.note is not None
    assert "not archived" in result.note
    assert "the engine went away mid-save" in result.note
    assert list(archive.iterdir()) == []  # no tarball, no temporary file, no index


def test_save_refuses_a_tarball_it_cannot_write(
    docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    archive = ImageArchive(blocker / "archive")
    with pytest.raises(ArchiveError, match="cannot create the image archive directory"):
        archive.save(
            docker_client,
            ref=parse_reference("busybox:1"),
            digest="sha256:" + "0" * 64,
            image_id="sha256:" + "0" * 64,
            platform=None,
            source="busybox:1",
        )
