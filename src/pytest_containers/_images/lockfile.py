"""The ``containers.lock`` file: the content digest each image reference of a suite runs on.

A tag moves; a digest does not. With a lock file, the image cache asks the engine and the
registry for the pinned digest instead of the tag, so every run on every machine gets the
same bytes, and a tag pushed anew only changes what runs once someone updates the lock
(``pytest --container-lock=update``) and the change shows up in review.

The format is one pin per line, the image reference as the tests write it, the platform in
brackets when a test gives one, then the digest::

    # containers.lock ... (header comment)
    busybox:1.35  sha256:8f1d9af9a7e18d437f5ccd2dfbe9ae1416f3634143ad14bfdd7c2ed053ef4c44
    redis:7  sha256:5c1f0b0ae6e2c48d1a62c3b4d1a3c2b7e0f3f1e4c0a3d2e1f0b9c8d7e6f5a4b3c
    redis:7 [linux/arm64]  sha256:0d3c5e4f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1d2e3f4a5b6c7d8e9f0a1b2c3

Why lines rather than TOML or JSON: a pin is one line, so adding, bumping or dropping an
image is a one-line diff with nothing else moving (no brackets, no trailing commas, no
column alignment to re-indent); it reads without a parser, greps and seds well, and needs
no TOML writer (``tomllib`` only reads, and only from Python 3.11). References and platforms
never contain whitespace (Docker rejects it), so splitting on whitespace is unambiguous,
which makes a strict parser a few lines long. Lines are sorted by their key (reference,
then platform) and end in a newline, so the same pins always render to the same bytes.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pytest_containers._base.reference import normalize_platform, parse_reference
from pytest_containers.errors import ImageReferenceError, LockFileError, UnpinnedImageError

if TYPE_CHECKING:
    from pytest_containers._base.image import Image

__all__ = [
    "DEFAULT_LOCKFILE",
    "LockFileError",
    "Pin",
    "UnpinnedImageError",
    "merge_pins",
    "pin_key",
    "pins_from_images",
    "read_lockfile",
    "render_lockfile",
    "write_lockfile",
]

#: The lock file's name, next to the rootdir (the plugin decides where exactly).
DEFAULT_LOCKFILE = "containers.lock"

_UPDATE_HINT = "pytest --container-lock=update"

HEADER = (
    "# containers.lock: the content digest each container image of this test suite runs on.\n"
    "# pytest-containers pulls these digests instead of the tags, so every run and every\n"
    "# machine gets the same images. To refresh the digests and add new images, run:\n"
    f"#     {_UPDATE_HINT}\n"
    "# Format: IMAGE [PLATFORM]  DIGEST, one image per line, sorted.\n"
)

# IMAGE, optionally " [PLATFORM]", whitespace, DIGEST. What each part may contain is
# checked afterwards, by the same functions the cache uses, so the messages can be precise.
_LINE = re.compile(r"(?P<image>\S+)(?: \[(?P<platform>[^\]\s]*)\])?[ \t]+(?P<digest>\S+)")


@dataclass(frozen=True)
class Pin:
    """One line of the lock file: ``image`` as the tests write it (``redis:7``), the
    ``platform`` a test asked for (``None`` when none) and the content ``digest``."""

    image: str
    platform: str | None
    digest: str

    @property
    def key(self) -> str:
        """The key the lock file and the cache look this pin up by (see :func:`pin_key`)."""
        return pin_key(self.image, self.platform)


def pin_key(image: str, platform: str | None) -> str:
    """The key of ``image`` as written, with its platform: ``redis:7`` or
    ``redis:7 [linux/arm64]`` (the platform normalized, so ``Linux/AARCH64`` is the same
    key). It is also how the line starts in the lock file. Raises :class:`ValueError` on a
    malformed platform."""
    plat = normalize_platform(platform)
    return image if plat is None else f"{image} [{plat}]"


def pins_from_images(images: Iterable[Image]) -> list[Pin]:
    """The pins to record for the images a run resolved, for the update mode.

    Images without a digest (built locally) and references the tests already pin with
    ``@sha256:…`` have nothing to record and are left out.
    """
    pins = []
    for image in images:
        if image.digest is None or "@" in image.ref:
            continue
        pins.append(Pin(image.ref, image.platform, image.digest))
    return pins


def read_lockfile(path: Path) -> dict[str, Pin]:
    """The pins of the lock file at ``path``, by :func:`pin_key`; ``{}`` when it does not exist.

    Blank lines and lines starting with ``#`` are skipped; any other line must be
    ``IMAGE [PLATFORM]  DIGEST``. Raises :class:`LockFileError` naming the file, the line
    and what to do, on a malformed line, a key listed twice or an unreadable file.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        return {}
    except UnicodeDecodeError:
        raise LockFileError(
            f"{path} is not a UTF-8 text file; restore it from version control or delete "
            f"it and run {_UPDATE_HINT}",
            path=path,
        ) from None
    except OSError as error:
        raise LockFileError(
            f"cannot read the lock file {path}: {error.strerror or error}", path=path
        ) from error

    pins: dict[str, Pin] = {}
    lines_of: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pin = _parse_line(line, path, number)
        if pin.key in pins:
            raise LockFileError(
                f"{path}:{number}: {pin.key} is pinned twice (lines {lines_of[pin.key]} and "
                f"{number}); keep one line, or run {_UPDATE_HINT}",
                path=path,
                line=number,
            )
        pins[pin.key] = pin
        lines_of[pin.key] = number
    return pins


def _parse_line(line: str, path: Path, number: int) -> Pin:
    def fail(problem: str) -> LockFileError:
        return LockFileError(
            f"{path}:{number}: {problem}: {line!r}; each line is 'IMAGE  DIGEST' or "
            f"'IMAGE [PLATFORM]  DIGEST' (e.g. 'redis:7  sha256:<64 hex digits>'). Fix the "
            f"line, or run {_UPDATE_HINT} to rewrite the file",
            path=path,
            line=number,
        )

    match = _LINE.fullmatch(line)
    if match is None:
        raise fail("malformed line")
    image, platform, digest = match.group("image", "platform", "digest")
    try:
        ref = parse_reference(image)
        if ref.digest is not None:
            raise fail("the image reference already has a digest, so it needs no pin")
        ref.with_digest(digest)  # validates the digest as Docker would
        plat = normalize_platform(platform)
    except ImageReferenceError as error:
        raise fail(error.message) from None
    except ValueError as error:
        raise fail(str(error)) from None
    return Pin(image, plat, digest)


def render_lockfile(pins: Iterable[Pin]) -> str:
    """The lock file's text for ``pins``: the header, then one line per pin sorted by key.

    The same set of pins renders to the same text whatever their order. Raises
    :class:`LockFileError` when two pins share a key with different digests.
    """
    by_key: dict[str, Pin] = {}
    for pin in pins:
        _check_pin(pin)
        known = by_key.get(pin.key)
        if known is not None and known.digest != pin.digest:
            raise LockFileError(
                f"{pin.key} has two digests, {known.digest} and {pin.digest}; the lock file "
                "can pin only one"
            )
        by_key[pin.key] = pin
    lines = [f"{key}  {by_key[key].digest}\n" for key in sorted(by_key)]
    return HEADER + "\n" + "".join(lines)


def _check_pin(pin: Pin) -> None:
    # A pin that would not read back would break the next run: refuse to write it.
    if not _LINE.fullmatch(f"{pin.key}  {pin.digest}") or pin.image.startswith("#"):
        raise LockFileError(f"cannot write a pin for {pin.image!r} -> {pin.digest!r}")
    try:
        parse_reference(pin.image).with_digest(pin.digest)
    except ImageReferenceError as error:
        raise LockFileError(f"cannot write a pin for {pin.image!r}: {error.message}") from None


def write_lockfile(path: Path, pins: Iterable[Pin]) -> None:
    """Write ``pins`` to ``path`` as :func:`render_lockfile` renders them.

    A file that already has exactly this content is left alone (its modification time
    too, so build tools see no change). Otherwise the text goes to a temporary file in the
    same directory that then replaces ``path`` atomically: a reader, or a run killed
    midway, sees the old file or the new one, never half of one.
    """
    text = render_lockfile(pins)
    try:
        if path.read_text(encoding="utf-8") == text:
            return
    except (OSError, UnicodeDecodeError):
        pass  # missing or unreadable: write it
    try:
        mode: int | None = path.stat().st_mode & 0o777
    except OSError:
        mode = None
    # Created with 0666 so that the umask applies as to any new file (mkstemp's 0600 would
    # make a file meant for version control private); an existing file keeps its mode.
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def merge_pins(existing: Mapping[str, Pin], seen: Iterable[Pin], *, prune: bool) -> dict[str, Pin]:
    """The pins of the lock file after an update run.

    What the run ``seen`` wins over ``existing``. With ``prune`` the pins the run did not
    see are dropped: only right when the whole suite ran, which the caller knows. Raises
    :class:`LockFileError` when the run saw two digests for one key (e.g. workers on
    different engines that disagree about a tag).
    """
    merged: dict[str, Pin] = {} if prune else {pin.key: pin for pin in existing.values()}
    fresh: dict[str, Pin] = {}
    for pin in seen:
        known = fresh.get(pin.key)
        if known is not None and known.digest != pin.digest:
            raise LockFileError(
                f"this run saw two digests for {pin.key}: {known.digest} and {pin.digest} "
                "(did the tag move during the run?); the lock file was not updated, run "
                f"{_UPDATE_HINT} again"
            )
        fresh[pin.key] = pin
    merged.update(fresh)
    return merged
