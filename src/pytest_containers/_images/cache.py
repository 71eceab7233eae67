"""The image cache: every image a run needs is pulled once, whoever asks for it.

:class:`ImageCache` is what the manager and the builder ask, and it keeps the process's
side: a request already under way in this process (asked by another thread, or
prefetched in the background) is waited for, not started again, and every image
resolved is remembered for the lock file. It composes the rest, one job each:

* :class:`~pytest_containers._images.targets.Targets`: what a request resolves to, the
  lock file's pin and the mirror applied, before the engine is asked anything;
* :class:`~pytest_containers._images.obtain.ImageObtainer`: making it present once per
  run across threads, xdist workers and concurrent runs (lock and state files), found,
  loaded or pulled as the pull policy says;
* :class:`~pytest_containers._images.archive_source.ArchiveSource`: the image archive it
  loads from and saves to.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import CancelledError, Future
from concurrent.futures import wait as futures_wait
from pathlib import Path

import docker

from pytest_containers._base.image import Image
from pytest_containers._base.settings import PullPolicy
from pytest_containers._images.archive_source import ArchiveSource
from pytest_containers._images.lockfile import Pin, UnpinnedImageError
from pytest_containers._images.obtain import ImageObtainer
from pytest_containers._images.pull import PullProgress
from pytest_containers._images.records import Key, Target, copy_error
from pytest_containers._images.targets import Targets
from pytest_containers.errors import ContainerError, ImagePullError, ImageReferenceError

__all__ = ["ImageCache", "PullPolicy"]

#: Seconds :meth:`ImageCache.close` gives prefetches under way to finish.
CLOSE_WAIT = 60.0

#: Background pulls at once; more rarely helps, as the engine shares one network link.
PREFETCH_WORKERS = 4


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
        self.client = client
        self.cache_dir = Path(cache_dir)
        self.run_id = run_id
        #: What a request resolves to: the pins and the mirror, applied before the engine
        #: is asked anything.
        self.targets = Targets(pins=pins, require_pins=require_pins, mirror=mirror)
        #: Making a target present, once per run across processes.
        self.obtainer = ImageObtainer(
            client,
            cache_dir=self.cache_dir,
            run_id=run_id,
            policy=PullPolicy(policy),
            archive=ArchiveSource(client, archive_dir, lock_timeout=lock_timeout),
            lock_timeout=lock_timeout,
            stall_timeout=stall_timeout,
            retry_budget=retry_budget,
            on_progress=on_progress,
        )
        self._mutex = threading.Lock()
        self._pending: dict[Key, _Pending] = {}
        self._resolved: dict[Key, Image] = {}
        self._pool = _DaemonPool(PREFETCH_WORKERS, "pytest-containers-prefetch")
        self._closed = False

    @property
    def engine_id(self) -> str:
        """The engine's identity (:func:`~pytest_containers._engine.connection.engine_identity`),
        asked once; keys the cache per engine, the same in every process that talks to it."""
        return self.obtainer.engine_id

    def get(self, image: str, *, platform: str | None = None) -> Image:
        """Return ``image`` once it is in the engine, pulling it if the policy says so.

        Thread-safe; blocks while another thread, worker or run pulls the same image.
        Raises :class:`ImageReferenceError` or
        :class:`~pytest_containers._images.lockfile.UnpinnedImageError` (before asking the engine
        anything), :class:`ImageNotFoundError` or :class:`ImagePullError`.
        """
        target = self.targets.of(image, platform)
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
                target = self.targets.of(image, platform)
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

    def _resolve(self, target: Target) -> Image:
        result = self.obtainer.obtain(target)
        with self._mutex:
            self._resolved.setdefault(target.key, result)
        return result
