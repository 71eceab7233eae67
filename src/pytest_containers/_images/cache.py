"""The image cache: every image a run needs is pulled once, whoever asks for it.

Several xdist workers, several threads and even several pytest runs on one host may ask
for the same image at once. They agree through a lock file and a state file per
(engine, resolved reference, platform) in the cache directory, by the recipe builds
follow too (:class:`~pytest_containers._base.once.OncePerRun`):

* the lock (an OS ``flock``, dropped by the kernel when its holder dies) makes one of them
  pull while the others wait;
* the state file, replaced atomically, records the outcome of the last pull with the run
  id, so that the waiters of the same run reuse a success (policy ``always``) or re-raise
  a failure without asking the registry again, while a later run starts afresh.

Pins (from the lock file, :mod:`pytest_containers._images.lockfile`) replace a tag by a digest:
``redis:7`` pinned to ``sha256:…`` is resolved as ``MIRROR/library/redis:7@sha256:…``, used
if the engine has that content and otherwise pulled by digest, whatever the tag points to
today. The key of the lock and state files is then the pinned reference.

An image archive (:mod:`pytest_containers._images.archive`) keeps a tarball of each image a run
used. An image the engine lacks is loaded from there, under the same lock as a pull,
before anything asks the registry:

* ``missing`` and ``never`` load from the archive when it has the image (loading is not
  pulling, so ``never`` allows it); ``missing`` pulls only what the archive lacks.
* ``always`` pulls each tag once per run as before, and falls back to the archive only
  when the registry cannot be reached (a transient, rate-limited or stalled failure; a
  registry that answers "no such image" is believed). The image's ``note`` says so. A
  digest (written or pinned) names immutable content, so ``always`` loads it like
  ``missing`` does.
* A tarball that is not what the archive's index recorded is never used: it is deleted,
  the image pulled instead, and archived anew; if the pull fails too, the error says what
  was wrong with the archived copy.
* After a pull, and for a present image the archive lacks, the image is saved to the
  archive. A failure to save is logged and put in the image's ``note``; it fails nothing.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import CancelledError, Future
from concurrent.futures import wait as futures_wait
from pathlib import Path
from typing import Any

import docker

from pytest_containers._base.image import Image
from pytest_containers._base.locks import ensure_private_dir, exclusive, key_path, read_json
from pytest_containers._base.once import OncePerRun
from pytest_containers._base.reference import (
    Reference,
    normalize_platform,
    parse_mirror,
    parse_reference,
)
from pytest_containers._base.settings import PullPolicy
from pytest_containers._engine.connection import engine_identity
from pytest_containers._images.archive import ArchiveEntry, ArchiveError, ImageArchive
from pytest_containers._images.lockfile import Pin, UnpinnedImageError, pin_key
from pytest_containers._images.pull import (
    PullProgress,
    PullResult,
    image_target,
    inspect_image,
    pull_image,
)
from pytest_containers._images.records import (
    Key,
    Outcome,
    Target,
    copy_error,
    explain_error,
    matches_platform,
    not_present_error,
    outcome_fields,
    pull_failure_fields,
    recorded_error,
    repo_digests,
)
from pytest_containers.errors import (
    ContainerError,
    ImageNotFoundError,
    ImagePullError,
    ImageReferenceError,
)

__all__ = ["ImageCache", "PullPolicy"]

#: Seconds :meth:`ImageCache.close` gives prefetches under way to finish.
CLOSE_WAIT = 60.0

#: Background pulls at once; more rarely helps, as the engine shares one network link.
PREFETCH_WORKERS = 4

_log = logging.getLogger(__name__)


@dataclasses.dataclass
class _Pending:
    """A resolution under way in this process; others wanting the same key wait on it."""

    future: Future[Image]
    prefetched: bool


class _DaemonPool:
    """A few daemon threads running queued callables.

    Not a ThreadPoolExecutor: its threads are joined at interpreter exit, so one stuck
    pull would keep pytest from exiting.
    """

    def __init__(self, size: int, name: str) -> None:
        self._size = size
        self._name = name
        self._tasks: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._guard = threading.Lock()

    def submit(self, task: Callable[[], None]) -> None:
        with self._guard:
            if len(self._threads) < self._size:
                thread = threading.Thread(
                    target=self._work, name=f"{self._name}-{len(self._threads)}", daemon=True
                )
                self._threads.append(thread)
                thread.start()
        self._tasks.put(task)

    def _work(self) -> None:
        while (task := self._tasks.get()) is not None:
            task()

    def close(self) -> None:
        with self._guard:
            for _ in self._threads:
                self._tasks.put(None)
            self._threads = []


class ImageCache:
    """Makes images present in the engine, pulling each at most once per run.

    ``run_id`` identifies the test run (the xdist ``testrun_uid``, the same in all its
    workers). ``mirror`` (``HOST[:PORT][/PREFIX]``) replaces Docker Hub. ``lock_timeout``
    bounds the wait for another process's pull, ``stall_timeout`` a pull without progress,
    ``retry_budget`` the time spent retrying transient failures. ``on_progress`` receives
    pull progress, possibly from several threads at once when prefetching.

    ``pins`` (from :func:`~pytest_containers._images.lockfile.read_lockfile`) pin references as
    written, with their platform, to digests; with ``require_pins`` an image that has none
    (and no digest of its own) raises
    :class:`~pytest_containers._images.lockfile.UnpinnedImageError`
    before the engine is asked anything. ``archive_dir`` is an image archive to load
    missing images from and to save pulled ones to.
    """

    def __init__(
        self,
        client: docker.DockerClient,
        *,
        cache_dir: Path,
        run_id: str,
        policy: PullPolicy = PullPolicy.MISSING,
        mirror: str | None = None,
        lock_timeout: float = 900.0,
        stall_timeout: float = 120.0,
        retry_budget: float = 60.0,
        on_progress: Callable[[PullProgress], None] | None = None,
        pins: Mapping[str, Pin] | None = None,
        require_pins: bool = False,
        archive_dir: Path | None = None,
    ) -> None:
        if mirror:
            parse_mirror(mirror)  # a malformed mirror fails here, not at the first test
        self.client = client
        self.cache_dir = Path(cache_dir)
        self.run_id = run_id
        self.policy = PullPolicy(policy)
        self.mirror = mirror or None
        self.lock_timeout = lock_timeout
        self.stall_timeout = stall_timeout
        self.retry_budget = retry_budget
        self.on_progress = on_progress
        # Keyed afresh: the caller's keys are not trusted to be pin_key()'s.
        self.pins: dict[str, Pin] = {pin.key: pin for pin in (pins or {}).values()}
        self.require_pins = require_pins
        self.archive = (
            ImageArchive(Path(archive_dir), lock_timeout=lock_timeout) if archive_dir else None
        )
        self._mutex = threading.Lock()
        self._engine_lock = threading.Lock()
        self._engine_id: str | None = None
        self._dir_ready = False
        self._pending: dict[Key, _Pending] = {}
        self._resolved: dict[Key, Image] = {}
        # Images this process saw archived: not asked of the archive's index again.
        self._archived: set[tuple[Path, str, str, str | None, str]] = set()
        self._pool = _DaemonPool(PREFETCH_WORKERS, "pytest-containers-prefetch")
        self._closed = False

    @property
    def engine_id(self) -> str:
        """The engine's identity (:func:`~pytest_containers._engine.connection.engine_identity`),
        asked once; keys the cache per engine, the same in every process that talks to it."""
        # Its own lock: docker info may be slow, and must not hold up other bookkeeping.
        with self._engine_lock:
            if self._engine_id is None:
                self._engine_id = engine_identity(self.client).key
            return self._engine_id

    def get(self, image: str, *, platform: str | None = None) -> Image:
        """Return ``image`` once it is in the engine, pulling it if the policy says so.

        Thread-safe; blocks while another thread, worker or run pulls the same image.
        Raises :class:`ImageReferenceError` or
        :class:`~pytest_containers._images.lockfile.UnpinnedImageError` (before asking the engine
        anything), :class:`ImageNotFoundError` or :class:`ImagePullError`.
        """
        target = self._parse(image, platform)
        key = target.key
        while True:
            with self._mutex:
                pending = self._pending.get(key)
                owner = pending is None
                if pending is None:
                    pending = _Pending(Future(), prefetched=False)
                    pending.future.set_running_or_notify_cancel()
                    self._pending[key] = pending
            if owner:
                return self._run(pending, target)
            try:
                result = pending.future.result()
            except CancelledError:
                self._forget(key, pending)  # a prefetch dropped by close(); do it here
                continue
            except ImagePullError as error:
                raise copy_error(error) from None
            finally:
                if pending.prefetched:
                    self._forget(key, pending)  # its outcome is handed over once
            return dataclasses.replace(result, ref=image)

    def prefetch(self, images: Iterable[tuple[str, str | None]]) -> None:
        """Start pulling each distinct ``(image, platform)`` in the background.

        A later :meth:`get` of one of them waits for that pull instead of starting
        another, and raises its error if it failed; other images are unaffected. Invalid
        references are skipped here: :meth:`get` reports them.
        """
        if self._closed:
            raise ContainerError("the image cache is closed")
        for image, platform in images:
            try:
                target = self._parse(image, platform)
            except (ImageReferenceError, UnpinnedImageError):
                continue
            key = target.key
            with self._mutex:
                if key in self._pending or key in self._resolved:
                    continue
                pending = _Pending(Future(), prefetched=True)
                self._pending[key] = pending

            def task(pending: _Pending = pending, target: Target = target) -> None:
                if not pending.future.set_running_or_notify_cancel():
                    return
                try:
                    pending.future.set_result(self._resolve(target))
                except BaseException as error:
                    pending.future.set_exception(error)

            self._pool.submit(task)

    def pin_for(self, image: str, platform: str | None = None) -> Pin | None:
        """The pin that applies to ``image`` as written (with ``platform``), if any.

        A reference that carries its own digest takes no pin. Raises
        :class:`ImageReferenceError` on a malformed reference or platform.
        """
        ref = parse_reference(image)
        try:
            plat = normalize_platform(platform)
        except ValueError as error:
            raise ImageReferenceError(f"{image}: {error}", image=image) from None
        return None if ref.digest is not None else self.pins.get(pin_key(image, plat))

    def resolved(self) -> list[Image]:
        """Every image this process resolved, first resolution of each, in order.

        In the lock file's update mode these are what to pin (see
        :func:`~pytest_containers._images.lockfile.pins_from_images`); each carries its ``digest``.
        """
        with self._mutex:
            return list(self._resolved.values())

    def close(self, wait: float = CLOSE_WAIT) -> None:
        """Stop the background threads. Prefetches not started yet are dropped; those
        under way get up to ``wait`` seconds to finish, then are left to their daemon
        threads.

        The wait matters under xdist: every worker prefetches every image, and the one
        that wins the lock may have no test to run. Ending at once would kill its pull
        or load half-way and leave its outcome ("pulled", "loaded") out of the summary,
        while the worker that waited for it reports the image as merely "present".
        """
        with self._mutex:
            self._closed = True
            running = []
            for pending in self._pending.values():
                if pending.prefetched and not pending.future.cancel():
                    running.append(pending.future)  # cancel() fails once it has started
        self._pool.close()
        if running:
            futures_wait(running, timeout=wait)

    # -- internals ---------------------------------------------------------------------

    def _parse(self, image: str, platform: str | None) -> Target:
        ref = parse_reference(image)
        try:
            plat = normalize_platform(platform)
        except ValueError as error:
            raise ImageReferenceError(f"{image}: {error}", image=image) from None
        # A digest written in the test is already a pin, and it wins over the lock file.
        pin = None if ref.digest is not None else self.pins.get(pin_key(image, plat))
        if pin is not None:
            ref = ref.with_digest(pin.digest)
        elif self.require_pins and ref.digest is None:
            on = f" on {plat}" if plat else ""
            raise UnpinnedImageError(
                f"the image {image}{on} has no pin in the lock file, and pins are required; "
                "run pytest --container-lock=update to pin it",
                image=image,
            )
        return Target(image, ref, ref.with_mirror(self.mirror), plat, pin is not None)

    def _forget(self, key: Key, pending: _Pending) -> None:
        with self._mutex:
            if self._pending.get(key) is pending:
                del self._pending[key]

    def _run(self, pending: _Pending, target: Target) -> Image:
        key = target.key
        try:
            result = self._resolve(target)
        except BaseException as error:
            pending.future.set_exception(error)
            raise
        else:
            pending.future.set_result(result)
            return result
        finally:
            self._forget(key, pending)

    def _paths(self, resolved: Reference, platform: str | None) -> tuple[Path, Path]:
        """The lock file and the state file of one (engine, reference, platform)."""
        with self._mutex:
            if not self._dir_ready:
                ensure_private_dir(self.cache_dir)
                self._dir_ready = True
        parts = (self.engine_id, str(resolved), platform or "")
        return (
            key_path(self.cache_dir, *parts, suffix=".lock"),
            key_path(self.cache_dir, *parts, suffix=".json"),
        )

    def _resolve(self, target: Target) -> Image:
        started = time.monotonic()
        lock_path, state_path = self._paths(target.resolved, target.platform)
        outcome = self._obtain(target, lock_path, state_path)
        seconds = time.monotonic() - started  # getting it into the engine; archiving is extra
        attrs = outcome.attrs
        digest = (
            outcome.digest or target.resolved.digest or self._digest_of(attrs, target, state_path)
        )
        notes = [outcome.note] if outcome.note else []
        if self.archive is not None and digest is not None and outcome.source != "loaded":
            problem = self._archive_image(target, attrs, digest, lock_path)
            if problem:
                notes.append(problem)
        result = Image(
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
        with self._mutex:
            self._resolved.setdefault(target.key, result)
        return result

    def _obtain(self, target: Target, lock_path: Path, state_path: Path) -> Outcome:
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
        if self.policy is not PullPolicy.NEVER or self._archived_entry(target) is not None:
            return None
        missing = None
        if self.archive is not None:
            missing = f"the image archive {self.archive.directory} has no copy of it"
        return not_present_error(target, missing)

    def _fetch(self, target: Target, state_path: Path, *, always: bool) -> Outcome:
        """Load the image from the archive or pull it; called with its lock held."""
        archive_note, archive_failed = None, False
        if not always:
            loaded, archive_note, archive_failed = self._load(target)
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
                loaded, archive_note, archive_failed = self._load(target)
                if loaded is not None:
                    fallback = (
                        f"pulling failed ({error.kind}: {error.reason}); used the archived "
                        f"copy from {self.archive.directory if self.archive else '?'}"
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
        entry = self._archived_entry(target)
        if entry is not None and entry.digest == resolved.digest:
            return self._inspect(entry.image_id, platform)
        return None

    def _archived_entry(self, target: Target) -> ArchiveEntry | None:
        if self.archive is None:
            return None
        try:
            return self.archive.find(target.canonical, target.platform)
        except (OSError, ContainerError) as error:  # an unreadable index: as if absent
            _log.warning("cannot read the image archive %s: %s", self.archive.directory, error)
            return None

    def _load(self, target: Target) -> tuple[Outcome | None, str | None, bool]:
        """Load the image from the archive, if it has it: the outcome; else, for messages,
        what kept the archive from providing it (``None`` without an archive), and whether
        the archive had a copy that failed.

        Called with the image's lock held.
        """
        if self.archive is None:
            return None, None, False
        entry = self._archived_entry(target)
        if entry is None:
            return None, f"the image archive {self.archive.directory} has no copy of it", False
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

    def _archive_image(
        self, target: Target, attrs: dict[str, Any], digest: str, lock_path: Path
    ) -> str | None:
        """Save the image to the archive unless it has it; what went wrong, if anything."""
        archive = self.archive
        if archive is None:
            return None
        image_id = str(attrs["Id"])
        done = (archive.directory, str(target.canonical.name), digest, target.platform, image_id)
        with self._mutex:
            if done in self._archived:
                return None

        def archived() -> bool:
            entry = self._archived_entry(target)
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
        entry = self._archived_entry(target)  # loaded by another run: no RepoDigests
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
