"""Image archives: the images a run used, saved as tarballs, so that a later run needs no
registry at all.

A CI job that caches the archive directory between runs (``actions/cache``, a GitLab
cache) restores it, and the image cache loads each image it lacks from there instead of
pulling it. The directory holds one ``docker save`` tarball per image and an
``index.json`` that says what each tarball is::

    ARCHIVE/
      index.json
      docker.io_library_redis@sha256-5c1f….tar
      docker.io_library_redis@sha256-0d3c…_linux-arm64.tar

* Tarballs are keyed by content digest (and platform), so a tag that moves adds a tarball
  rather than changing one, and a pinned digest finds its tarball directly. They are
  saved with their tag when the engine has one, so ``docker load`` restores it.
* ``index.json`` maps each archived image (``NAME@DIGEST``) to its tarball, the engine's
  image id and the digest of its config blob, and each tag (``NAME:TAG``) to the digest it
  had when it was archived. Names are the references as Docker Hub knows them, before any
  mirror: a job that restores the directory finds its images whatever mirror, if any, it
  uses.
* The index records what the images should be: a tarball whose config blob is not the
  recorded one, that the engine refuses, or that loads as another image id is corrupt, and
  is never used (the caller falls back to pulling).

Tarballs and the index are written to a temporary name and renamed: a job killed midway
leaves the previous state, never half a tarball under a real name. Concurrent writers of
the index (several runs sharing the directory) take a lock file in the directory.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import re
import secrets
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

import docker
import docker.errors
import requests

from pytest_containers._base.locks import exclusive, fsync_directory, read_json, write_json_atomic
from pytest_containers._base.reference import Reference
from pytest_containers._images.pull import inspect_image, redact
from pytest_containers.errors import ArchiveError, ContainerError

__all__ = ["INDEX_NAME", "ArchiveEntry", "ArchiveError", "ImageArchive"]

#: The index file in the archive directory.
INDEX_NAME = "index.json"
_INDEX_LOCK = ".index.lock"
_INDEX_VERSION = 1
_CHUNK = 1 << 20
_SLUG_UNSAFE = re.compile(r"[^A-Za-z0-9.-]+")
_SLUG_MAX = 80


@dataclass(frozen=True)
class ArchiveEntry:
    """One archived image.

    ``key`` is ``NAME@DIGEST`` (plus `` [PLATFORM]``), ``path`` the tarball, ``digest`` the
    registry's content digest, ``image_id`` the engine's id of the image and ``config`` the
    digest of the config blob inside the tarball (``None`` when the engine's tarball format
    was not one this module can read; the image id is still checked after loading).
    """

    key: str
    path: Path
    digest: str
    platform: str | None
    image_id: str
    config: str | None


def _suffix(platform: str | None) -> str:
    return f" [{platform}]" if platform else ""


def _archive_key(name: str, digest: str, platform: str | None) -> str:
    return f"{name}@{digest}{_suffix(platform)}"


def _tag_key(name: str, tag: str, platform: str | None) -> str:
    return f"{name}:{tag}{_suffix(platform)}"


def _file_name(name: str, digest: str, platform: str | None) -> str:
    slug = _SLUG_UNSAFE.sub("_", name)[:_SLUG_MAX].strip("._-") or "image"
    plat = "_" + platform.replace("/", "-") if platform else ""
    return f"{slug}@{digest.replace(':', '-')}{plat}.tar"


class ImageArchive:
    """The archive directory ``directory``; created (``0700``) on the first save.

    ``lock_timeout`` bounds the wait for another process updating the index. Reading
    needs no lock and no write access: a read-only restored directory can be loaded from.
    """

    def __init__(self, directory: Path, *, lock_timeout: float = 900.0) -> None:
        self.directory = Path(directory)
        self.lock_timeout = lock_timeout

    @property
    def index_path(self) -> Path:
        """The index file, ``DIRECTORY/index.json``."""
        return self.directory / INDEX_NAME

    # -- lookup --------------------------------------------------------------------------

    def find(self, ref: Reference, platform: str | None) -> ArchiveEntry | None:
        """The archived image for ``ref`` (as Docker Hub knows it, before any mirror): by
        its digest when it has one, else by the digest its tag had when it was archived.
        ``None`` when the archive has no such image or its tarball is gone."""
        index = self._read_index()
        digest = ref.digest
        if digest is None:
            tags = index.get("tags")
            value = tags.get(_tag_key(ref.name, ref.tag or "latest", platform)) if tags else None
            if not isinstance(value, str):
                return None
            digest = value
        return self._entry(index, _archive_key(ref.name, digest, platform))

    def has(self, name: str, digest: str, platform: str | None) -> bool:
        """Whether the image ``name@digest`` for ``platform`` is archived."""
        return self._entry(self._read_index(), _archive_key(name, digest, platform)) is not None

    def _read_index(self) -> dict[str, dict[str, Any]]:
        data = read_json(self.index_path)  # a damaged index reads as empty: re-archived
        if data is None or data.get("version") != _INDEX_VERSION:
            return {}
        index: dict[str, dict[str, Any]] = {}
        for part in ("archives", "tags"):
            value = data.get(part)
            index[part] = value if isinstance(value, dict) else {}
        return index

    def _entry(self, index: dict[str, dict[str, Any]], key: str) -> ArchiveEntry | None:
        record = index.get("archives", {}).get(key)
        if not isinstance(record, dict):
            return None
        file, image_id = record.get("file"), record.get("image_id")
        digest, config = record.get("digest"), record.get("config")
        if not (isinstance(file, str) and isinstance(image_id, str) and isinstance(digest, str)):
            return None
        # Only a plain file name: an index must not point a load outside the directory.
        if file != Path(file).name or file.startswith("."):
            return None
        path = self.directory / file
        if not path.is_file():
            return None
        platform = record.get("platform")
        return ArchiveEntry(
            key=key,
            path=path,
            digest=digest,
            platform=platform if isinstance(platform, str) else None,
            image_id=image_id,
            config=config if isinstance(config, str) else None,
        )

    # -- saving --------------------------------------------------------------------------

    def save(
        self,
        client: docker.DockerClient,
        *,
        ref: Reference,
        digest: str,
        image_id: str,
        platform: str | None,
        source: str,
    ) -> ArchiveEntry:
        """Archive the engine's image ``image_id``, known to the registry as ``ref``
        (before any mirror) with content ``digest``, unless the archive already has it.

        ``source`` is what the engine is asked to save: a tag of the image, which
        ``docker load`` then restores, or its id. When ``ref`` is a tag (no digest), the
        index also records that the tag stood for ``digest``. Raises
        :class:`ArchiveError`; the tarball is then left as it was, or absent.
        """
        key = _archive_key(ref.name, digest, platform)
        entry = self._entry(self._read_index(), key)
        if entry is None or entry.image_id != image_id:
            self._ensure_directory()
            path = self.directory / _file_name(ref.name, digest, platform)
            config = self._write_tarball(client, source, path)
            entry = ArchiveEntry(key, path, digest, platform, image_id, config)
            record: dict[str, Any] | None = {
                "file": path.name,
                "digest": digest,
                "platform": platform,
                "image_id": image_id,
                "config": config,
                "saved_as": source if source != image_id else None,
                "time": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            }
        else:
            record = None
        tag = None if ref.digest is not None else _tag_key(ref.name, ref.tag or "latest", platform)
        if record is None and (
            tag is None or self._read_index().get("tags", {}).get(tag) == digest
        ):
            return entry  # archived already, tag and all: no need for the index lock
        self._update_index(lambda index: _set(index, key, record, tag, digest))
        return entry

    def _ensure_directory(self) -> None:
        existed = self.directory.is_dir()
        try:
            # 0700: a tarball of a private image is as private as the registry's credentials.
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            if not existed:
                self.directory.chmod(0o700)
        except OSError as error:
            raise ArchiveError(
                f"cannot create the image archive directory {self.directory}: "
                f"{error.strerror or error}",
                path=self.directory,
            ) from error

    def _write_tarball(self, client: docker.DockerClient, source: str, path: Path) -> str | None:
        """Save ``source`` to ``path`` via a temporary file; the config blob's digest."""
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as stream:
                    chunks = client.api.get_image(source, chunk_size=_CHUNK)
                    for chunk in cast("Iterator[bytes]", chunks):
                        stream.write(chunk)
                    stream.flush()
                    os.fsync(stream.fileno())
                config = _config_digest(tmp)
                os.replace(tmp, path)
            except BaseException:
                # Whatever stopped it (even a KeyboardInterrupt), no partial file stays.
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except ArchiveError as error:
            raise ArchiveError(
                f"cannot archive {source} to {path}: {error.message}", path=path
            ) from None
        except (OSError, docker.errors.DockerException, requests.exceptions.RequestException) as e:
            raise ArchiveError(
                f"cannot archive {source} to {path}: {_describe(e)}", path=path
            ) from e
        fsync_directory(self.directory)
        return config

    def _update_index(self, change: Callable[[dict[str, dict[str, Any]]], bool]) -> None:
        """Apply ``change`` to the index under the index lock; write it if it changed."""
        self._ensure_directory()
        try:
            with exclusive(
                self.directory / _INDEX_LOCK,
                timeout=self.lock_timeout,
                what=f"the image archive index {self.index_path}",
            ):
                index = self._read_index()
                index.setdefault("archives", {})
                index.setdefault("tags", {})
                if change(index):
                    write_json_atomic(self.index_path, {"version": _INDEX_VERSION, **index})
        except OSError as error:
            raise ArchiveError(
                f"cannot update the image archive index {self.index_path}: "
                f"{error.strerror or error}",
                path=self.index_path,
            ) from error

    # -- loading -------------------------------------------------------------------------

    def load(self, client: docker.DockerClient, entry: ArchiveEntry) -> dict[str, Any]:
        """Load ``entry``'s tarball into the engine and return the engine's record of the
        image, having checked that it is the archived image.

        Raises :class:`ArchiveError` when the tarball is unreadable, holds another image
        (its config blob is not the recorded one), the engine refuses it, or the engine
        then has no image with the recorded id.
        """
        if entry.config is not None:
            try:
                actual = _config_digest(entry.path)
            except ArchiveError as error:
                raise ArchiveError(
                    f"the archived image {entry.key} is unreadable ({entry.path}): {error.message}",
                    path=entry.path,
                    corrupt=error.corrupt,
                ) from None
            if actual != entry.config:
                raise ArchiveError(
                    f"the archived image {entry.key} is corrupt: {entry.path} holds config "
                    f"{actual}, not the recorded {entry.config}",
                    path=entry.path,
                    corrupt=True,
                )
        try:
            with entry.path.open("rb") as stream:
                load = cast(
                    "Callable[[IO[bytes]], Iterator[dict[str, Any]] | None]",
                    client.api.load_image,
                )
                for line in load(stream) or ():
                    failure = line.get("error") or (line.get("errorDetail") or {}).get("message")
                    if failure:
                        raise ArchiveError(
                            f"the Docker engine refused the archived image {entry.key} "
                            f"({entry.path}): {redact(str(failure))}",
                            path=entry.path,
                            corrupt=True,
                        )
        except (OSError, docker.errors.DockerException, requests.exceptions.RequestException) as e:
            raise ArchiveError(
                f"cannot load the archived image {entry.key} ({entry.path}): {_describe(e)}",
                path=entry.path,
            ) from e
        attrs = inspect_image(client, entry.image_id)
        if attrs is None:
            raise ArchiveError(
                f"the archived image {entry.key} ({entry.path}) loaded, but not as the recorded "
                f"image {entry.image_id}: the tarball holds another image",
                path=entry.path,
                corrupt=True,
            )
        return attrs

    def discard(self, entry: ArchiveEntry) -> None:
        """Forget a tarball that proved unusable and delete it, so that the next save
        writes a good one. Best effort: a read-only directory keeps it (and it is
        rejected again next time)."""
        with contextlib.suppress(ArchiveError, ContainerError, OSError):
            self._update_index(lambda index: index["archives"].pop(entry.key, None) is not None)
        with contextlib.suppress(OSError):
            entry.path.unlink()


def _set(
    index: dict[str, dict[str, Any]],
    key: str,
    record: dict[str, Any] | None,
    tag: str | None,
    digest: str,
) -> bool:
    changed = False
    if record is not None:
        index["archives"][key] = record
        changed = True
    if tag is not None and index["tags"].get(tag) != digest:
        index["tags"][tag] = digest
        changed = True
    return changed


def _config_digest(path: Path) -> str | None:
    """The digest of the image config blob inside the ``docker save`` tarball at ``path``.

    ``None`` when the tarball has no ``manifest.json`` naming one config (a format this
    module does not know); raises :class:`ArchiveError` when it is not a readable tarball
    or its manifest names a config that is not in it.
    """
    try:
        with tarfile.open(path, mode="r:") as tar:
            try:
                member = tar.extractfile("manifest.json")
            except KeyError:
                raise ArchiveError(
                    "no manifest.json in the tarball (truncated or damaged)",
                    path=path,
                    corrupt=True,
                ) from None
            if member is None:
                return None
            manifest = json.loads(member.read().decode("utf-8"))
            if not (isinstance(manifest, list) and len(manifest) == 1):
                return None
            name = manifest[0].get("Config") if isinstance(manifest[0], dict) else None
            if not isinstance(name, str):
                return None
            try:
                blob = tar.extractfile(name)
            except KeyError:
                raise ArchiveError(
                    f"the config {name} named by manifest.json is missing", path=path, corrupt=True
                ) from None
            if blob is None:
                raise ArchiveError(f"the config {name} is not a file", path=path, corrupt=True)
            digest = hashlib.sha256()
            while chunk := blob.read(_CHUNK):
                digest.update(chunk)
            return f"sha256:{digest.hexdigest()}"
    except (tarfile.TarError, ValueError, EOFError) as error:
        raise ArchiveError(
            f"not a readable tarball: {_describe(error)}", path=path, corrupt=True
        ) from error
    except OSError as error:
        raise ArchiveError(f"cannot read it: {_describe(error)}", path=path) from error


def _describe(error: BaseException) -> str:
    if isinstance(error, docker.errors.APIError):
        return redact(str(error.explanation or error))
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return redact(f"{type(error).__name__}: {error}")
