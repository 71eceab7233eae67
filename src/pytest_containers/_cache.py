"""The image cache: every image a run needs is pulled once, whoever asks for it.

Several xdist workers, several threads and even several pytest runs on one host may ask
for the same image at once. They agree through a lock file and a state file per
(engine, resolved reference, platform) in the cache directory:

* the lock (an OS ``flock``, dropped by the kernel when its holder dies) makes one of them
  pull while the others wait;
* the state file, replaced atomically, records the outcome of the last pull with the run
  id, so that the waiters of the same run reuse a success (policy ``always``) or re-raise
  a failure without asking the registry again, while a later run starts afresh.
"""

from __future__ import annotations

import dataclasses
import datetime
import queue
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import CancelledError, Future
from enum import Enum
from pathlib import Path
from typing import Any

import docker

from pytest_containers._image import Image
from pytest_containers._locks import (
    ensure_private_dir,
    exclusive,
    key_path,
    read_json,
    write_json_atomic,
)
from pytest_containers._pull import (
    PullProgress,
    image_target,
    inspect_image,
    make_pull_error,
    pull_image,
)
from pytest_containers._reference import (
    Reference,
    normalize_platform,
    parse_mirror,
    parse_reference,
)
from pytest_containers.errors import (
    ContainerError,
    ImageNotFoundError,
    ImagePullError,
    ImageReferenceError,
)

__all__ = ["ImageCache", "PullPolicy"]

#: Background pulls at once; more rarely helps, as the engine shares one network link.
PREFETCH_WORKERS = 4

_Key = tuple[str, str]  # (resolved reference, platform or "")


class PullPolicy(str, Enum):
    """When to pull: ``missing`` (only images the engine lacks), ``always`` (once per
    run, shared by all its workers) or ``never`` (fail if the engine lacks the image)."""

    MISSING = "missing"
    ALWAYS = "always"
    NEVER = "never"


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
        self._mutex = threading.Lock()
        self._engine_lock = threading.Lock()
        self._engine_id: str | None = None
        self._dir_ready = False
        self._pending: dict[_Key, _Pending] = {}
        self._resolved: dict[_Key, Image] = {}
        self._pool = _DaemonPool(PREFETCH_WORKERS, "pytest-containers-prefetch")
        self._closed = False

    @property
    def engine_id(self) -> str:
        """The engine's id (``docker info``), asked once; keys the cache per engine."""
        # Its own lock: docker info may be slow, and must not hold up other bookkeeping.
        with self._engine_lock:
            if self._engine_id is None:
                info: dict[str, Any] = self.client.info()
                # Engines without an ID (some Docker-compatible ones) fall back to the URL.
                self._engine_id = str(info.get("ID") or self.client.api.base_url)
            return self._engine_id

    def get(self, image: str, *, platform: str | None = None) -> Image:
        """Return ``image`` once it is in the engine, pulling it if the policy says so.

        Thread-safe; blocks while another thread, worker or run pulls the same image.
        Raises :class:`ImageReferenceError` (before asking the engine anything),
        :class:`ImageNotFoundError` or :class:`ImagePullError`.
        """
        resolved, plat = self._parse(image, platform)
        key = (str(resolved), plat or "")
        while True:
            with self._mutex:
                pending = self._pending.get(key)
                owner = pending is None
                if pending is None:
                    pending = _Pending(Future(), prefetched=False)
                    pending.future.set_running_or_notify_cancel()
                    self._pending[key] = pending
            if owner:
                return self._run(pending, key, image, resolved, plat)
            try:
                result = pending.future.result()
            except CancelledError:
                self._forget(key, pending)  # a prefetch dropped by close(); do it here
                continue
            except ImagePullError as error:
                raise _copy(error) from None
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
                resolved, plat = self._parse(image, platform)
            except ImageReferenceError:
                continue
            key = (str(resolved), plat or "")
            with self._mutex:
                if key in self._pending or key in self._resolved:
                    continue
                pending = _Pending(Future(), prefetched=True)
                self._pending[key] = pending

            def task(
                pending: _Pending = pending,
                image: str = image,
                resolved: Reference = resolved,
                plat: str | None = plat,
            ) -> None:
                if not pending.future.set_running_or_notify_cancel():
                    return
                try:
                    pending.future.set_result(self._resolve(image, resolved, plat))
                except BaseException as error:
                    pending.future.set_exception(error)

            self._pool.submit(task)

    def resolved(self) -> list[Image]:
        """Every image this process resolved, first resolution of each, in order."""
        with self._mutex:
            return list(self._resolved.values())

    def close(self) -> None:
        """Stop the background threads; prefetches not started yet are dropped (a pull
        under way is left to finish in its daemon thread)."""
        with self._mutex:
            self._closed = True
            for pending in self._pending.values():
                if pending.prefetched:
                    pending.future.cancel()  # only succeeds for those not started
        self._pool.close()

    # -- internals ---------------------------------------------------------------------

    def _parse(self, image: str, platform: str | None) -> tuple[Reference, str | None]:
        ref = parse_reference(image)
        try:
            plat = normalize_platform(platform)
        except ValueError as error:
            raise ImageReferenceError(f"{image}: {error}", image=image) from None
        return ref.with_mirror(self.mirror), plat

    def _forget(self, key: _Key, pending: _Pending) -> None:
        with self._mutex:
            if self._pending.get(key) is pending:
                del self._pending[key]

    def _run(
        self,
        pending: _Pending,
        key: _Key,
        image: str,
        resolved: Reference,
        platform: str | None,
    ) -> Image:
        try:
            result = self._resolve(image, resolved, platform)
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

    def _resolve(self, image: str, resolved: Reference, platform: str | None) -> Image:
        started = time.monotonic()

        def found(attrs: dict[str, Any], source: str) -> Image:
            result = Image(
                ref=image,
                resolved_ref=str(resolved),
                id=str(attrs["Id"]),
                digest=resolved.digest or _repo_digest(attrs, resolved),
                platform=platform,
                source=source,
                seconds=time.monotonic() - started,
            )
            with self._mutex:
                self._resolved.setdefault((str(resolved), platform or ""), result)
            return result

        if self.policy is PullPolicy.NEVER:
            attrs = self._inspect(image_target(resolved), platform)
            if attrs is None:
                raise ImageNotFoundError(
                    f"the image {image} ({resolved}) is not in the Docker engine and the pull "
                    f"policy is 'never'; pull it first (docker pull {resolved}), or run with "
                    "--container-pull=missing",
                    image=image,
                    registry=resolved.registry,
                    reason="not present in the engine",
                    kind="policy",
                )
            return found(attrs, "present")

        # A digest names immutable content: "always" has nothing to refresh.
        always = self.policy is PullPolicy.ALWAYS and resolved.digest is None
        lock_path, state_path = self._paths(resolved, platform)

        # Without the lock first: the common case, an image already there, needs no wait.
        attrs = self._usable(resolved, platform, state_path, always=always)
        if attrs is not None:
            return found(attrs, "present")
        with exclusive(lock_path, timeout=self.lock_timeout, what=f"the image {image}"):
            # Whoever held the lock before may have pulled it, or failed, meanwhile.
            attrs = self._usable(resolved, platform, state_path, always=always)
            if attrs is not None:
                return found(attrs, "present")
            record = read_json(state_path)
            if record is not None and record.get("run_id") == self.run_id:
                error = _recorded_error(record, image)
                if error is not None:
                    raise error
            try:
                image_id = pull_image(
                    self.client,
                    resolved,
                    platform=platform,
                    stall_timeout=self.stall_timeout,
                    retry_budget=self.retry_budget,
                    on_progress=self.on_progress,
                    declared=image,
                )
            except ImagePullError as error:
                self._record(state_path, resolved, error=error)
                raise
            attrs = inspect_image(self.client, image_id)
            if attrs is None:
                raise ContainerError(f"the image {image} vanished right after its pull")
            result = found(attrs, "pulled")
            self._record(state_path, resolved, image_id=image_id, digest=result.digest)
            return result

    def _usable(
        self, resolved: Reference, platform: str | None, state_path: Path, *, always: bool
    ) -> dict[str, Any] | None:
        """The engine's record of the image if it may be used without pulling."""
        attrs = self._inspect(image_target(resolved), platform)
        if attrs is None or not always:
            return attrs
        # "always" reuses only what this run pulled, and only if the engine still has it.
        record = read_json(state_path)
        if (
            record is not None
            and record.get("run_id") == self.run_id
            and record.get("reference") == str(resolved)
            and record.get("error") is None
            and record.get("image_id") == attrs["Id"]
        ):
            return attrs
        return None

    def _inspect(self, target: str, platform: str | None) -> dict[str, Any] | None:
        attrs = inspect_image(self.client, target)
        if attrs is None:
            return None
        if platform is not None and not _matches_platform(attrs, platform):
            return None  # present, but for another platform: pull the right one
        return attrs

    def _record(
        self,
        state_path: Path,
        resolved: Reference,
        *,
        image_id: str | None = None,
        digest: str | None = None,
        error: ImagePullError | None = None,
    ) -> None:
        write_json_atomic(
            state_path,
            {
                "run_id": self.run_id,
                "reference": str(resolved),
                "image_id": image_id,
                "digest": digest,
                "time": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                "error": None
                if error is None
                else {
                    "kind": error.kind,
                    "message": error.message,
                    "reason": error.reason,
                    "registry": error.registry,
                },
            },
        )


def _repo_digest(attrs: dict[str, Any], resolved: Reference) -> str | None:
    """The registry digest of the image in ``resolved``'s repository, from RepoDigests."""
    for entry in attrs.get("RepoDigests") or ():
        name, _, digest = str(entry).partition("@")
        try:
            if parse_reference(name).name == resolved.name:
                return digest
        except ImageReferenceError:
            continue
    return None


def _matches_platform(attrs: dict[str, Any], platform: str) -> bool:
    wanted = platform.split("/")
    have = [str(attrs.get("Os") or ""), str(attrs.get("Architecture") or "")]
    if len(wanted) > 2 and attrs.get("Variant"):
        have.append(str(attrs["Variant"]))
    return wanted[: len(have)] == have


def _recorded_error(record: dict[str, object], image: str) -> ImagePullError | None:
    """The failure another process of this run recorded, as an exception, if any."""
    error = record.get("error")
    if not isinstance(error, dict):
        return None
    registry = error.get("registry")
    return make_pull_error(
        str(error.get("kind") or "permanent"),
        str(error.get("message") or f"pulling {image} failed earlier in this run"),
        image=image,
        registry=str(registry) if registry is not None else "",
        reason=str(error.get("reason") or ""),
    )


def _copy(error: ImagePullError) -> ImagePullError:
    # Each waiting thread raises its own instance: one shared instance would pile up
    # every thread's traceback on itself.
    return type(error)(
        error.message,
        image=error.image,
        registry=error.registry,
        reason=error.reason,
        kind=error.kind,
        test=error.test,
    )
