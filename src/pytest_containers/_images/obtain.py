"""Obtaining one image, once per run across processes: found in the engine as the pull
policy allows, else loaded from the image archive or pulled, under a lock.

Several xdist workers, several threads and even several pytest runs on one host may ask
for the same image at once. They agree through a lock file and a state file per
(engine, resolved reference, platform) in the cache directory, by the recipe builds
follow too (:class:`~pytest_containers._base.once.OncePerRun`):

* the lock (an OS ``flock``, dropped by the kernel when its holder dies) makes one of them
  pull while the others wait;
* the state file, replaced atomically, records the outcome of the last pull with the run
  id, so that the waiters of the same run reuse a success (policy ``always``) or re-raise
  a failure without asking the registry again, while a later run starts afresh.

An image the engine lacks is loaded from the archive
(:class:`~pytest_containers._images.archive_source.ArchiveSource`), under the same lock
as a pull, before anything asks the registry:

* ``missing`` and ``never`` load from the archive when it has the image (loading is not
  pulling, so ``never`` allows it); ``missing`` pulls only what the archive lacks.
* ``always`` pulls each tag once per run as before, and falls back to the archive only
  when the registry cannot be reached (a transient, rate-limited or stalled failure; a
  registry that answers "no such image" is believed). The image's ``note`` says so. A
  digest (written or pinned) names immutable content, so ``always`` loads it like
  ``missing`` does.
* A bad archived copy is pulled instead, and archived anew; if the pull fails too, the
  error says what was wrong with the archived copy.
* After a pull, and for a present image the archive lacks, the image is saved to the
  archive.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker

from pytest_containers._base.image import Image
from pytest_containers._base.locks import ensure_private_dir, key_path, read_json
from pytest_containers._base.once import OncePerRun
from pytest_containers._base.settings import PullPolicy
from pytest_containers._engine.connection import engine_identity
from pytest_containers._images.archive_source import ArchiveSource
from pytest_containers._images.pull import (
    PullProgress,
    PullResult,
    image_target,
    inspect_image,
    pull_image,
)
from pytest_containers._images.records import (
    Outcome,
    Target,
    explain_error,
    matches_platform,
    not_present_error,
    outcome_fields,
    pull_failure_fields,
    recorded_error,
    repo_digests,
)
from pytest_containers.errors import ContainerError, ImageNotFoundError, ImagePullError

__all__ = ["ImageObtainer"]

_log = logging.getLogger(__name__)


class ImageObtainer:
    """Makes one :class:`~pytest_containers._images.records.Target` present in the engine
    at a time, each at most once per run (see the module's docstring).

    ``cache_dir`` holds the lock and state files, ``run_id`` identifies the test run (the
    xdist ``testrun_uid``, the same in all its workers). ``lock_timeout`` bounds the wait
    for another process's pull, ``stall_timeout`` a pull without progress,
    ``retry_budget`` the time spent retrying transient failures. ``on_progress`` receives
    pull progress, possibly from several threads at once.
    """

    def __init__(
        self,
        client: docker.DockerClient,
        *,
        cache_dir: Path,
        run_id: str,
        policy: PullPolicy,
        archive: ArchiveSource,
        lock_timeout: float,
        stall_timeout: float,
        retry_budget: float,
        on_progress: Callable[[PullProgress], None] | None,
    ) -> None:
        self.client = client
        self.cache_dir = cache_dir
        self.run_id = run_id
        self.policy = policy
        self.archive = archive
        self.lock_timeout = lock_timeout
        self.stall_timeout = stall_timeout
        self.retry_budget = retry_budget
        self.on_progress = on_progress
        self._engine_lock = threading.Lock()
        self._engine_id: str | None = None
        self._dir_lock = threading.Lock()
        self._dir_ready = False

    @property
    def engine_id(self) -> str:
        """The engine's identity (:func:`~pytest_containers._engine.connection.engine_identity`),
        asked once; keys the cache per engine, the same in every process that talks to it."""
        # Its own lock: docker info may be slow, and must not hold up other bookkeeping.
        with self._engine_lock:
            if self._engine_id is None:
                self._engine_id = engine_identity(self.client).key
            return self._engine_id

    def files(self, target: Target) -> tuple[Path, Path]:
        """The lock file and the state file of ``target``'s (engine, reference, platform)."""
        with self._dir_lock:
            if not self._dir_ready:
                ensure_private_dir(self.cache_dir)
                self._dir_ready = True
        parts = (self.engine_id, str(target.resolved), target.platform or "")
        return (
            key_path(self.cache_dir, *parts, suffix=".lock"),
            key_path(self.cache_dir, *parts, suffix=".json"),
        )

    def obtain(self, target: Target) -> Image:
        """``target``'s image, present in the engine, pulled if the policy says so.

        Blocks while another thread, worker or run pulls the same image. Raises
        :class:`ImageNotFoundError` or :class:`ImagePullError`.
        """
        started = time.monotonic()
        lock_path, state_path = self.files(target)
        outcome = self._once(target, lock_path, state_path)
        seconds = time.monotonic() - started  # getting it into the engine; archiving is extra
        attrs = outcome.attrs
        digest = (
            outcome.digest or target.resolved.digest or self._digest_of(attrs, target, state_path)
        )
        notes = [outcome.note] if outcome.note else []
        if digest is not None and outcome.source != "loaded":
            problem = self.archive.save(target, attrs, digest, lock_path)
            if problem:
                notes.append(problem)
        return Image(
            ref=target.image,
            resolved_ref=str(target.resolved),
            id=str(attrs["Id"]),
            digest=digest,
            platform=target.platform,
            source=outcome.source,
            seconds=seconds,
            pinned=target.pinned,
            note="; ".join(notes) or None,
        )

    def _once(self, target: Target, lock_path: Path, state_path: Path) -> Outcome:
        """Make the image present, once per run: find it, else load it from the archive
        or pull it (:class:`~pytest_containers._base.once.OncePerRun` says how the
        processes agree)."""
        # A digest names immutable content: "always" has nothing to refresh.
        always = self.policy is PullPolicy.ALWAYS and target.resolved.digest is None
        once = OncePerRun(
            lock_path,
            state_path,
            run_id=self.run_id,
            timeout=self.lock_timeout,
            what=f"the image {target.image}",
            about={"reference": str(target.resolved)},
        )
        outcome, _ = once.get(
            find=lambda: self._usable(target, once, always=always),
            refuse=lambda: self._refusal(target),
            make=lambda: self._fetch(target, state_path, always=always),
            describe=outcome_fields,
            failure=pull_failure_fields,
            replay=lambda fields: recorded_error(fields, target.image),
        )
        return outcome

    def _refusal(self, target: Target) -> ImageNotFoundError | None:
        """Under the policy ``never``, with nothing archived, the image cannot be had:
        the error, at once, rather than after a wait for the lock."""
        if self.policy is not PullPolicy.NEVER or self.archive.entry(target) is not None:
            return None
        return not_present_error(target, self.archive.lacks())

    def _fetch(self, target: Target, state_path: Path, *, always: bool) -> Outcome:
        """Load the image from the archive or pull it; called with its lock held."""
        archive_note, archive_failed = None, False
        if not always:
            loaded, archive_note, archive_failed = self.archive.load(target)
            if loaded is not None:
                return loaded
            if self.policy is PullPolicy.NEVER:
                raise not_present_error(target, archive_note)
        try:
            pulled = pull_image(
                self.client,
                target.resolved,
                platform=target.platform,
                stall_timeout=self.stall_timeout,
                retry_budget=self.retry_budget,
                on_progress=self.on_progress,
                declared=target.image,
            )
        except ImagePullError as error:
            if always and error.kind != "permanent":
                # The registry is out of reach: the archived copy beats no image.
                loaded, archive_note, archive_failed = self.archive.load(target)
                if loaded is not None:
                    fallback = (
                        f"pulling failed ({error.kind}: {error.reason}); used the archived "
                        f"copy from {self.archive.directory}"
                    )
                    _log.warning("%s: %s", target.image, fallback)
                    return dataclasses.replace(loaded, note=fallback)
            raise explain_error(error, target, archive_note) from None
        # A bad archived copy was replaced by this pull: say so, it is worth a look.
        replaced = f"pulled instead: {archive_note}" if archive_failed else None
        return self._pulled(target, pulled, state_path, replaced)

    def _pulled(
        self, target: Target, pulled: PullResult, state_path: Path, note: str | None
    ) -> Outcome:
        attrs = inspect_image(self.client, pulled.image_id)
        if attrs is None:
            raise ContainerError(f"the image {target.image} vanished right after its pull")
        # The engine's "Digest:" line names what the tag points to; by digest, it is it.
        digest = target.resolved.digest or pulled.digest
        if digest is None:
            digest = self._digest_of(attrs, target, state_path)
        return Outcome(attrs, "pulled", digest, note)

    def _usable(self, target: Target, once: OncePerRun, *, always: bool) -> Outcome | None:
        """The image as present, if it may be used without pulling."""
        attrs = self._present(target)
        if attrs is None:
            return None
        if always:
            # "always" reuses only what this run pulled, and only if the engine still has it.
            record = once.recorded()
            if (
                record is None
                or record.get("reference") != str(target.resolved)
                or record.get("error") is not None
                or record.get("image_id") != attrs["Id"]
            ):
                return None
        return Outcome(attrs, "present")

    def _present(self, target: Target) -> dict[str, Any] | None:
        """The engine's record of the image, if the engine has it."""
        resolved, platform = target.resolved, target.platform
        attrs = self._inspect(image_target(resolved), platform)
        if attrs is not None or resolved.digest is None:
            return attrs
        # A digest is found by the image's RepoDigests, which an image loaded from an
        # archive lacks; the id the archive's index recorded with the digest (it checked
        # the tarball it loaded) finds it instead. Never the state file's id: that file
        # is no proof of content, and must not decide which image a pin runs.
        entry = self.archive.entry(target)
        if entry is not None and entry.digest == resolved.digest:
            return self._inspect(entry.image_id, platform)
        return None

    def _digest_of(self, attrs: dict[str, Any], target: Target, state_path: Path) -> str | None:
        """The registry digest of a present image of ``target``'s tag."""
        candidates = repo_digests(attrs, target.resolved)
        record = read_json(state_path)
        recorded = None
        if (
            record is not None
            and record.get("reference") == str(target.resolved)
            and record.get("image_id") == attrs["Id"]
            and isinstance(record.get("digest"), str)
        ):
            recorded = str(record["digest"])
        # RepoDigests may list several digests of the repository; the state file knows
        # which one this tag was pulled (or loaded) as.
        if recorded is not None and (not candidates or recorded in candidates):
            return recorded
        if candidates:
            return candidates[0]
        entry = self.archive.entry(target)  # loaded by another run: no RepoDigests
        if entry is not None and entry.image_id == attrs["Id"]:
            return entry.digest
        return None

    def _inspect(self, target: str, platform: str | None) -> dict[str, Any] | None:
        attrs = inspect_image(self.client, target)
        if attrs is None:
            return None
        if platform is not None and not matches_platform(attrs, platform):
            return None  # present, but for another platform: pull the right one
        return attrs
