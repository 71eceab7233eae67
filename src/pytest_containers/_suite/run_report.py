"""What the run tells: one line per image in the terminal summary, merged across xdist
workers, the lock file's update at the end of the run, and a failed test's section with
the end of each container's log."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from pytest_containers._base.image import Image
from pytest_containers._containers.logs import MAX_LOG_BYTES, read_log_tail
from pytest_containers._engine.connection import docker_time
from pytest_containers._images.lockfile import (
    Pin,
    merge_pins,
    pin_key,
    pins_from_images,
    read_lockfile,
    write_lockfile,
)

if TYPE_CHECKING:
    from pytest_containers._containers.container import Container

#: How an image got into the engine, most telling first: one line per image keeps that.
_SOURCE_RANK = {"built": 0, "pulled": 1, "loaded": 2, "present": 3}


def image_record(image: Image) -> dict[str, object]:
    """A plain form of ``image`` that xdist can send from a worker to the controller."""
    return dataclasses.asdict(image)


def image_from_record(record: Mapping[str, object]) -> Image:
    fields = {field.name for field in dataclasses.fields(Image)}
    return Image(**{key: value for key, value in record.items() if key in fields})  # type: ignore[arg-type]


def merge_images(images: Iterable[Image]) -> list[Image]:
    """One image per (reference, platform), the most telling of what every process saw."""
    merged: dict[tuple[str, str | None], Image] = {}
    for image in images:
        key = (image.ref, image.platform)
        known = merged.get(key)
        if known is None or _SOURCE_RANK.get(image.source, 9) < _SOURCE_RANK.get(known.source, 9):
            merged[key] = image
    return [merged[key] for key in sorted(merged, key=lambda k: (k[0], k[1] or ""))]


def _short(digest: str) -> str:
    algorithm, _, value = digest.partition(":")
    return f"{algorithm}:{value[:12]}" if value else digest[:19]


def summary_lines(images: list[Image]) -> list[str]:
    """``redis:7  sha256:1f0e4c7a9b2d  pulled  0.41 s  pinned`` and any notes."""
    names = [image.ref + (f" [{image.platform}]" if image.platform else "") for image in images]
    width = max(len(name) for name in names)
    lines = []
    for name, image in zip(names, images, strict=True):
        digest = _short(image.digest or image.id)
        pinned = "  pinned" if image.pinned else ""
        lines.append(
            f"{name:<{width}}  {digest}  {image.source:<7}  {image.seconds:5.2f} s{pinned}"
        )
        if image.note:
            lines.append(f"{'':<{width}}  note: {image.note}")
    return lines


def unpinned(images: Iterable[Image], pins: Mapping[str, Pin]) -> list[str]:
    """References that ran on a registry tag, not on a pin of the lock file."""
    return sorted(
        image.ref
        for image in images
        if image.digest is not None
        and "@" not in image.ref
        and pin_key(image.ref, image.platform) not in pins
    )


@dataclasses.dataclass(frozen=True)
class LockUpdate:
    """What an update run did to the lock file: how many pins it holds now, and the keys
    of pins of images the run did not use, dropped (whole suite) or kept (a selection)."""

    pins: int
    dropped: tuple[str, ...] = ()
    kept_unused: tuple[str, ...] = ()

    def describe(self) -> str:
        text = f"updated, {self.pins} pins"
        if self.dropped:
            text += (
                f"; dropped {len(self.dropped)} pin(s) of images the suite no longer uses: "
                + _some(self.dropped)
            )
        if self.kept_unused:
            text += (
                f"; kept {len(self.kept_unused)} pin(s) of images this run did not use, as "
                "only part of the suite ran (a whole-suite update drops unused ones): "
                + _some(self.kept_unused)
            )
        return text


def _some(keys: tuple[str, ...], shown: int = 5) -> str:
    more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
    return ", ".join(keys[:shown]) + more


def update_lockfile(
    path: Path,
    images: Iterable[Image],
    *,
    whole_suite: bool = False,
    declared: Iterable[tuple[str, str | None]] = (),
) -> LockUpdate:
    """Write the digests this run resolved into the lock file. The other pins are kept,
    unless ``whole_suite`` ran: then pins of images no test uses any more are dropped
    (those of ``declared`` images, which collected tests name but which did not run,
    e.g. skipped ones, are kept)."""
    existing = read_lockfile(path)
    pins = merge_pins(existing, pins_from_images(images), prune=False)
    wanted = {pin_key(image.ref, image.platform) for image in images}
    for image, platform in declared:
        try:
            wanted.add(pin_key(image, platform))
        except ValueError:
            continue  # a malformed platform: its test reported it
    unused = tuple(sorted(key for key in pins if key not in wanted))
    if whole_suite:
        for key in unused:
            del pins[key]
    write_lockfile(path, pins.values())
    if whole_suite:
        return LockUpdate(len(pins), dropped=unused)
    return LockUpdate(len(pins), kept_unused=unused)


def report_section(
    container: Container, *, lines: int, test_started: float | None, kept: bool
) -> tuple[str, str]:
    """The title and text of a failed test's section for ``container``: the end of its log,
    only the part written since ``test_started`` when the container is older than the test
    (a module-, session- or run-scoped one), and where the whole log is when cut."""
    created = docker_time(container.attrs.get("Created"))
    since = test_started if created is not None and test_started is not None else None
    if since is not None and created is not None and created >= since:
        since = None  # made for this test: all of its log is the test's
    title = f"container logs: {container.name} ({container.image.ref})"
    if since is not None:
        title += ", written during this test"
    try:
        client = container.raw.client
        if client is None:
            raise RuntimeError("no engine client")
        tail = read_log_tail(
            client.api,
            container.id,
            lines=lines,
            # Room for the note, so that the section stays within the cap.
            max_bytes=MAX_LOG_BYTES - 1024,
            since=since,
        )
    except Exception as error:  # the container may be gone; say so, don't crash
        return title, f"(logs unavailable: {error})"
    if not tail.truncated:
        return title, tail.text or "(no output)"
    where = (
        f"docker logs {container.name} (the container is kept)"
        if kept
        else f"docker logs {container.name} while the container exists; "
        "--container-keep=failed keeps it after the test"
    )
    note = (
        f"[earlier output left out: the last {lines} lines, at most "
        f"{MAX_LOG_BYTES // 1024} KiB, are shown; the whole log: {where}]\n"
    )
    return title, note + tail.text
