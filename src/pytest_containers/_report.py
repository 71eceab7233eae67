"""What the run tells about its images: one line per image in the terminal summary,
merged across xdist workers, and the lock file's update at the end of the run."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from pathlib import Path

from pytest_containers._image import Image
from pytest_containers._lockfile import (
    Pin,
    merge_pins,
    pin_key,
    pins_from_images,
    read_lockfile,
    write_lockfile,
)

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


def update_lockfile(path: Path, images: Iterable[Image]) -> int:
    """Write the digests this run resolved into the lock file, keeping the other pins.
    Returns how many pins the file holds."""
    pins = merge_pins(read_lockfile(path), pins_from_images(images), prune=False)
    write_lockfile(path, pins.values())
    return len(pins)
