"""What the image cache keeps and says: the target of one request, the outcome of
obtaining it, what the state file records of a pull for the other processes of a run
(:class:`~pytest_containers._base.once.OncePerRun` writes it), and the errors built from
records, pins and the archive. Pure.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from pytest_containers._base.reference import Reference, parse_reference
from pytest_containers._images.lockfile import Pin
from pytest_containers._images.pull import make_pull_error
from pytest_containers.errors import (
    ContainerError,
    ImageNotFoundError,
    ImagePullError,
    ImageReferenceError,
)

__all__ = [
    "Key",
    "Outcome",
    "Target",
    "copy_error",
    "explain_error",
    "matches_platform",
    "not_present_error",
    "outcome_fields",
    "pull_failure_fields",
    "recorded_error",
    "repo_digests",
]


Key = tuple[str, str]  # (resolved reference, platform or "")


@dataclasses.dataclass(frozen=True)
class Target:
    """What one get() resolves: ``image`` as written; ``canonical`` that reference
    normalized, before any mirror, with the pin's digest when pinned (what the archive is
    keyed by, so that it serves whatever mirror a later run uses); ``resolved`` the same
    after the mirror (what the engine and the registry are asked for); ``pin`` the lock
    file's pin that gave the digest, if one did."""

    image: str
    canonical: Reference
    resolved: Reference
    platform: str | None
    pin: Pin | None

    @property
    def pinned(self) -> bool:
        return self.pin is not None

    @property
    def key(self) -> Key:
        return (str(self.resolved), self.platform or "")


@dataclasses.dataclass(frozen=True)
class Outcome:
    attrs: dict[str, Any]
    source: str
    digest: str | None = None
    note: str | None = None


def not_present_error(target: Target, archive_note: str | None) -> ImageNotFoundError:
    """The error for an image the engine lacks under the pull policy ``never``."""
    image, resolved = target.image, target.resolved
    pinned = f", pinned to {resolved.digest} by the lock file," if target.pinned else ""
    # The resolved reference only when a mirror or a pin made it differ.
    shown = f"{image} ({resolved})" if str(resolved) != image else image
    message = (
        f"the image {shown}{pinned} is not in the Docker engine and the pull "
        f"policy is 'never'; pull it first (docker pull {resolved}), or run with "
        "--container-pull=missing"
    )
    if archive_note is not None:
        message += f"; {archive_note}"
    return ImageNotFoundError(
        message,
        image=image,
        registry=resolved.registry,
        reason="not present in the engine",
        kind="policy",
    )


def explain_error(
    error: ImagePullError, target: Target, archive_note: str | None
) -> ImagePullError:
    """``error`` with what the pin and the archive add to it."""
    extra = ""
    if target.pinned and isinstance(error, ImageNotFoundError):
        extra += (
            f"; the lock file pins {target.image} to {target.resolved.digest}, which the "
            "registry may have deleted: run pytest --container-lock=update to pin what "
            "the tag points to now"
        )
    if archive_note is not None:
        extra += f"; {archive_note}"
    if not extra:
        return error
    return type(error)(
        error.message + extra,
        image=error.image,
        registry=error.registry,
        reason=error.reason,
        kind=error.kind,
        test=error.test,
    )


def outcome_fields(outcome: Outcome) -> dict[str, object]:
    """What the state file keeps of an image obtained (pulled or loaded) for the rest of
    the run: which image, as which digest, from where."""
    return {
        "image_id": str(outcome.attrs["Id"]),
        "digest": outcome.digest,
        "source": outcome.source,
    }


def pull_failure_fields(error: ContainerError) -> dict[str, object] | None:
    """What the state file keeps of a failed pull, for the rest of the run to raise again
    (:func:`recorded_error`); ``None`` for an error that is no failed pull (a policy that
    forbids pulling, an image that vanished): the next asker tries again."""
    if not isinstance(error, ImagePullError) or error.kind == "policy":
        return None
    return {
        "kind": error.kind,
        "message": error.message,
        "reason": error.reason,
        "registry": error.registry,
    }


def repo_digests(attrs: dict[str, Any], resolved: Reference) -> list[str]:
    """The registry digests of the image in ``resolved``'s repository, from RepoDigests."""
    digests = []
    for entry in attrs.get("RepoDigests") or ():
        name, _, digest = str(entry).partition("@")
        try:
            if parse_reference(name).name == resolved.name and digest not in digests:
                digests.append(digest)
        except ImageReferenceError:
            continue
    return digests


def matches_platform(attrs: dict[str, Any], platform: str) -> bool:
    wanted = platform.split("/")
    have = [str(attrs.get("Os") or ""), str(attrs.get("Architecture") or "")]
    if len(wanted) > 2 and attrs.get("Variant"):
        have.append(str(attrs["Variant"]))
    return wanted[: len(have)] == have


def recorded_error(error: Mapping[str, object], image: str) -> ImagePullError:
    """The failure another process of this run recorded (:func:`pull_failure_fields`),
    as an exception."""
    registry = error.get("registry")
    return make_pull_error(
        str(error.get("kind") or "permanent"),
        str(error.get("message") or f"pulling {image} failed earlier in this run"),
        image=image,
        registry=str(registry) if registry is not None else "",
        reason=str(error.get("reason") or ""),
    )


def copy_error(error: ImagePullError) -> ImagePullError:
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
