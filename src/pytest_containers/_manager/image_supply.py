"""The images one process's containers are made from: the image cache made on first use
(pulls, pins, mirror, archive), prefetches, and builds once per process.

The lock is the manager's: what it guards here it guarded before the manager was split.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from pytest_containers._base.image import Image
from pytest_containers._base.locks import ensure_private_dir
from pytest_containers._containers.spec import ContainerSpec
from pytest_containers._engine.connection import is_kubedock, kubedock_refusal
from pytest_containers._images.cache import ImageCache, PullPolicy
from pytest_containers._images.lockfile import Pin
from pytest_containers._images.pull import PullProgress
from pytest_containers._manager.engine_link import EngineLink
from pytest_containers.errors import ArchiveError, ContainerError, ImageBuildError

if TYPE_CHECKING:
    from pytest_containers._images.build import BuildProgress, BuildSpec


class ImageSupply:
    """Pulled and built images for one process (a worker, or the only process)."""

    def __init__(
        self,
        link: EngineLink,
        lock: threading.RLock,
        *,
        cache_dir: Path,
        run_id: str,
        pins: Mapping[str, Pin] | None,
        on_progress: Callable[[PullProgress], None] | None,
        on_build_progress: Callable[[BuildProgress], None] | None,
    ) -> None:
        self._link = link
        self.settings = link.settings
        self._lock = lock
        self.cache_dir = cache_dir
        self.run_id = run_id
        self._pins = pins
        self._on_progress = on_progress
        self._on_build_progress = on_build_progress
        self._cache: ImageCache | None = None
        self._built: dict[BuildSpec, Image] = {}
        self._build_locks: dict[BuildSpec, threading.Lock] = {}

    @property
    def cache(self) -> ImageCache:
        """The image cache, made on first use (an archive on kubedock fails here)."""
        with self._lock:
            if self._cache is None:
                archive = self.settings.archive
                if archive is not None and is_kubedock(self._link.client):
                    # kubedock answers 501 to an image load, and its image "export" is
                    # made up: fail before any of it, with what to do instead.
                    raise ArchiveError(
                        kubedock_refusal(f"load images from the archive {archive}"),
                        path=archive,
                    )
                self._cache = ImageCache(
                    self._link.client,
                    cache_dir=ensure_private_dir(self.cache_dir),
                    run_id=self.run_id,
                    policy=PullPolicy(self.settings.pull),
                    mirror=self.settings.mirror,
                    stall_timeout=self.settings.stall_timeout,
                    # A test waits on this: retry what may pass, but not for a minute.
                    retry_budget=10.0,
                    pins=self._pins,
                    require_pins=self.settings.lock == "strict",
                    archive_dir=self.settings.archive,
                    on_progress=self._on_progress,
                )
            return self._cache

    def image(self, image: str, *, platform: str | None = None) -> Image:
        """The image in the engine, pulled under the cache's locks if the policy says so."""
        return self.cache.get(image, platform=platform)

    def prefetch(self, images: Iterable[tuple[str, str | None]]) -> None:
        """Start pulling these images in the background; errors wait for their tests."""
        wanted = list(images)
        if not wanted:
            return
        # No engine, or no cache directory: each test reports that for itself.
        with contextlib.suppress(ContainerError):
            self.cache.prefetch(wanted)

    def build(self, spec: BuildSpec) -> Image:
        """The image built from ``spec``: once per process (hashing a context is not
        free), and once per content key across workers and runs (build_image's lock)."""
        from pytest_containers._images.build import build_image

        client = self._link.client
        if is_kubedock(client):
            # kubedock answers 501 to POST /build: say so before hashing any context.
            raise ImageBuildError(
                kubedock_refusal(f"build images (build={spec.display or str(spec.context)!r})"),
                image=spec.display or str(spec.context),
            )
        with self._lock:
            lock = self._build_locks.setdefault(spec, threading.Lock())
        with lock:
            if spec not in self._built:
                self._built[spec] = build_image(
                    client,
                    self.cache,
                    spec,
                    cache_dir=ensure_private_dir(self.cache_dir),
                    on_progress=self._on_build_progress,
                )
            return self._built[spec]

    def image_of(self, spec: ContainerSpec, build: BuildSpec | None) -> Image:
        """The image a container of ``spec`` is made from: built, else pulled."""
        if build is not None:
            return self.build(build)
        return self.image(spec.image, platform=spec.platform)

    def resolved(self) -> list[Image]:
        """Every image this process pulled, found or built."""
        pulled = self._cache.resolved() if self._cache is not None else []
        return pulled + list(self._built.values())

    def close(self) -> None:
        """Stop background pulls."""
        if self._cache is not None:
            self._cache.close()
