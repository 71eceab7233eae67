"""What a request for an image resolves to, before the engine is asked anything: the
reference as written, normalised; its platform; the lock file's pin; the mirror. Pure.

Pins (from the lock file, :mod:`pytest_containers._images.lockfile`) replace a tag by a
digest: ``redis:7`` pinned to ``sha256:…`` is resolved as
``MIRROR/library/redis:7@sha256:…``, used if the engine has that content and otherwise
pulled by digest, whatever the tag points to today. The image cache keys its lock and
state files by the resolved reference, so by the pinned one.
"""

from __future__ import annotations

from collections.abc import Mapping

from pytest_containers._base.reference import normalize_platform, parse_mirror, parse_reference
from pytest_containers._images.lockfile import Pin, UnpinnedImageError, pin_key
from pytest_containers._images.records import Target
from pytest_containers.errors import ImageReferenceError

__all__ = ["Targets"]


class Targets:
    """Turns ``(image, platform)`` into the :class:`~pytest_containers._images.records.Target`
    the image cache obtains.

    ``pins`` (from :func:`~pytest_containers._images.lockfile.read_lockfile`) pin
    references as written, with their platform, to digests; with ``require_pins`` an
    image that has none (and no digest of its own) is refused. ``mirror``
    (``HOST[:PORT][/PREFIX]``) replaces Docker Hub; a malformed one fails here.
    """

    def __init__(
        self,
        *,
        pins: Mapping[str, Pin] | None = None,
        require_pins: bool = False,
        mirror: str | None = None,
    ) -> None:
        if mirror:
            parse_mirror(mirror)  # a malformed mirror fails here, not at the first test
        self.mirror = mirror or None
        # Keyed afresh: the caller's keys are not trusted to be pin_key()'s.
        self.pins: dict[str, Pin] = {pin.key: pin for pin in (pins or {}).values()}
        self.require_pins = require_pins

    def of(self, image: str, platform: str | None = None) -> Target:
        """The target of ``image`` as written, on ``platform``; its ``pin`` is the pin that
        applied, if any (a reference that carries its own digest takes none).

        Raises :class:`ImageReferenceError` on a malformed reference or platform, and
        :class:`~pytest_containers._images.lockfile.UnpinnedImageError` when pins are
        required and none applies.
        """
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
        return Target(image, ref, ref.with_mirror(self.mirror), plat, pin)
