"""The exceptions pytest-containers raises.

Every error derives from :class:`ContainerError` and carries what it concerns (the image,
the container, the test) so that a message can say what went wrong and what to do next.
"""

from __future__ import annotations

__all__ = [
    "ContainerError",
    "ContainerStartupError",
    "EngineUnavailableError",
    "ImageBuildError",
    "ImageNotFoundError",
    "ImagePullError",
    "ImageReferenceError",
    "PortNotPublishedError",
]


class ContainerError(Exception):
    """Base class of every error raised by pytest-containers.

    ``image`` is the image reference as the test declared it, ``container`` the
    container's name or id, ``test`` the node id of the test, each when known.
    """

    def __init__(
        self,
        message: str,
        *,
        image: str | None = None,
        container: str | None = None,
        test: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.image = image
        self.container = container
        self.test = test

    def __str__(self) -> str:
        if self.test:
            return f"{self.test}: {self.message}"
        return self.message


class ImageReferenceError(ContainerError, ValueError):
    """An image reference that Docker would reject; raised before any Docker call."""


class EngineUnavailableError(ContainerError):
    """No Docker engine answered where the plugin looked for one."""


class ImagePullError(ContainerError):
    """Pulling (or resolving) an image failed.

    ``kind`` classifies the failure: ``"permanent"`` (not found, unauthorized; retrying
    will not help), ``"rate-limited"``, ``"transient"`` (network, 5xx; retried within a
    budget), ``"stalled"`` (no progress for too long) or ``"policy"`` (the pull policy
    forbids pulling a missing image). ``registry`` is the registry host asked, and
    ``reason`` the registry's or engine's own words.
    """

    def __init__(
        self,
        message: str,
        *,
        image: str | None = None,
        registry: str | None = None,
        reason: str = "",
        kind: str = "permanent",
        test: str | None = None,
    ) -> None:
        super().__init__(message, image=image, test=test)
        self.registry = registry
        self.reason = reason
        self.kind = kind


class ImageNotFoundError(ImagePullError):
    """The image is missing from the engine and the pull policy forbids pulling it,
    or the registry does not know the repository or tag."""


class ImageBuildError(ContainerError):
    """Building an image from a Dockerfile failed; ``step`` and ``log_tail`` say where."""

    def __init__(
        self,
        message: str,
        *,
        image: str | None = None,
        step: str | None = None,
        log_tail: str = "",
        test: str | None = None,
    ) -> None:
        super().__init__(message, image=image, test=test)
        self.step = step
        self.log_tail = log_tail


class ContainerStartupError(ContainerError):
    """A container exited, was killed or did not become ready in time.

    Carries the container's ``state`` (e.g. ``"exited"``), its ``exit_code``, the wait
    that failed (``wait``) and the last lines of its logs (``logs``).
    """

    def __init__(
        self,
        message: str,
        *,
        image: str | None = None,
        container: str | None = None,
        state: str | None = None,
        exit_code: int | None = None,
        wait: str | None = None,
        logs: str = "",
        test: str | None = None,
    ) -> None:
        super().__init__(message, image=image, container=container, test=test)
        self.state = state
        self.exit_code = exit_code
        self.wait = wait
        self.logs = logs

    def __str__(self) -> str:
        text = super().__str__()
        if self.logs:
            text += "\n--- last lines of the container's logs ---\n" + self.logs.rstrip()
        return text


class PortNotPublishedError(ContainerError, LookupError):
    """A port was asked of a container that does not publish it."""
