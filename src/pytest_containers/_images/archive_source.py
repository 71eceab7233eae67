"""The image archive (:mod:`pytest_containers._images.archive`) as the image cache uses
it: a source to load an image the engine lacks from, and a keeper of every image a run
used.

* A tarball that is not what the archive's index recorded is never used: it is deleted
  (so that the pull that follows archives it anew), and what was wrong with it is given
  back for the messages.
* A loaded image is tagged as a pulled one would be, and must be for the platform asked.
* An image pulled, or present but not archived yet, is saved, under the image's lock and
  once per process. A failure to save is logged and given back for the image's ``note``;
  it fails nothing.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import docker

from pytest_containers._base.locks import exclusive
from pytest_containers._images.archive import ArchiveEntry, ArchiveError, ImageArchive
from pytest_containers._images.pull import inspect_image
from pytest_containers._images.records import Outcome, Target, matches_platform
from pytest_containers.errors import ContainerError

__all__ = ["ArchiveSource"]

_log = logging.getLogger(__name__)


class ArchiveSource:
    """The archive at ``directory`` for the cache's images; with no ``directory`` there is
    no archive: it has nothing, loads nothing and saves nothing. ``lock_timeout`` bounds
    the wait for the archive's and an image's lock."""

    def __init__(
        self, client: docker.DockerClient, directory: Path | None, *, lock_timeout: float
    ) -> None:
        self.client = client
        self.archive = (
            ImageArchive(Path(directory), lock_timeout=lock_timeout) if directory else None
        )
        self.lock_timeout = lock_timeout
        self._mutex = threading.Lock()
        # Images this process saw archived: not asked of the archive's index again.
        self._archived: set[tuple[Path, str, str, str | None, str]] = set()

    @property
    def directory(self) -> Path | None:
        """The archive's directory; ``None`` with no archive."""
        return None if self.archive is None else self.archive.directory

    def lacks(self) -> str | None:
        """What to say of an image the archive has no copy of; ``None`` with no archive."""
        if self.archive is None:
            return None
        return f"the image archive {self.archive.directory} has no copy of it"

    def entry(self, target: Target) -> ArchiveEntry | None:
        """The archive's entry for ``target``; an unreadable index is as if it had none."""
        if self.archive is None:
            return None
        try:
            return self.archive.find(target.canonical, target.platform)
        except (OSError, ContainerError) as error:
            _log.warning("cannot read the image archive %s: %s", self.archive.directory, error)
            return None

    def load(self, target: Target) -> tuple[Outcome | None, str | None, bool]:
        """Load the image from the archive, if it has it: the outcome; else, for messages,
        what kept the archive from providing it (``None`` without an archive), and whether
        the archive had a copy that failed.

        Called with the image's lock held.
        """
        if self.archive is None:
            return None, None, False
        entry = self.entry(target)
        if entry is None:
            return None, self.lacks(), False
        try:
            attrs = self.archive.load(self.client, entry)
            if target.platform is not None and not matches_platform(attrs, target.platform):
                raise ArchiveError(
                    f"the archived image {entry.key} ({entry.path}) is for "
                    f"{attrs.get('Os')}/{attrs.get('Architecture')}, not {target.platform}",
                    path=entry.path,
                    corrupt=True,
                )
            self._tag_loaded(target, attrs, entry)
        except ArchiveError as error:
            _log.warning("%s: %s", target.image, error.message)
            if error.corrupt:
                self.archive.discard(entry)  # so that the pull that follows re-archives it
            return None, f"its archived copy could not be used: {error.message}", True
        return Outcome(attrs, "loaded", entry.digest), None, False

    def _tag_loaded(self, target: Target, attrs: dict[str, Any], entry: ArchiveEntry) -> None:
        """Make a loaded image answer to the resolved tag, as a pulled one would.

        The tarball restores the tag it was saved with, which names another mirror when
        the run that saved it used one, or none when it was saved by id. A pinned tag
        (``redis:7@sha256:…``) is tagged too: an untagged image is what ``docker image
        prune`` deletes. A bare digest has no tag to give; it is found by its id.
        """
        resolved = target.resolved
        if resolved.digest is not None and resolved.tag is None:
            return
        tag = resolved.tag or "latest"
        current = inspect_image(self.client, f"{resolved.name}:{tag}")
        if current is not None and current["Id"] == attrs["Id"]:
            return
        try:
            self.client.api.tag(str(attrs["Id"]), resolved.name, tag, force=True)
        except docker.errors.APIError as error:
            raise ArchiveError(
                f"loaded the archived image {entry.key} but could not tag it "
                f"{resolved.name}:{tag}: {error.explanation or error}",
                path=entry.path,
            ) from error

    def save(
        self, target: Target, attrs: dict[str, Any], digest: str, lock_path: Path
    ) -> str | None:
        """Save the image to the archive unless it has it; what went wrong, if anything.
        ``lock_path`` is the image's lock."""
        archive = self.archive
        if archive is None:
            return None
        image_id = str(attrs["Id"])
        done = (archive.directory, str(target.canonical.name), digest, target.platform, image_id)
        with self._mutex:
            if done in self._archived:
                return None

        def archived() -> bool:
            entry = self.entry(target)
            return entry is not None and entry.digest == digest and entry.image_id == image_id

        try:
            if not archived():
                # The image's own lock: another worker that found it present too would
                # otherwise save the same tarball at the same time.
                with exclusive(
                    lock_path, timeout=self.lock_timeout, what=f"the image {target.image}"
                ):
                    if not archived():
                        archive.save(
                            self.client,
                            ref=target.canonical,
                            digest=digest,
                            image_id=image_id,
                            platform=target.platform,
                            source=self._save_source(target, image_id),
                        )
        except ContainerError as error:  # ArchiveError, or a lock timeout
            message = f"not archived: {error.message}"
            _log.warning("%s: %s", target.image, message)
            return message
        with self._mutex:
            self._archived.add(done)
        return None

    def _save_source(self, target: Target, image_id: str) -> str:
        """What to save: the resolved tag if it names this image (``docker load`` then
        restores it), else the id."""
        resolved = target.resolved
        if resolved.tag is None:
            return image_id
        tagged = f"{resolved.name}:{resolved.tag}"
        attrs = inspect_image(self.client, tagged)
        return tagged if attrs is not None and attrs["Id"] == image_id else image_id
