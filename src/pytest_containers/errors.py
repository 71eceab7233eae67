"""The exceptions pytest-containers raises.

Every error derives from :class:`ContainerError` and carries what it concerns (the image,
the container, the test) so that a message can say what went wrong and what to do next.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = [
    "ArchiveError",
    "CacheDirError",
    "ContainerError",
    "ContainerStartupError",
    "DeclarationError",
    "EngineUnavailableError",
    "ImageBuildError",
    "ImageNotFoundError",
    "ImagePullError",
    "ImageReferenceError",
    "LockFileError",
    "NetworkError",
    "PortNotPublishedError",
    "ServiceStartError",
    "SettingError",
    "UnpinnedImageError",
    "WaitFailed",
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
        if self.test and not self.message.startswith(f"{self.test}: "):
            return f"{self.test}: {self.message}"
        return self.message

    def for_test(self, test: str, *, image: str | None = None) -> Self:
        """A copy that names ``test`` (and ``image``, when this error names none): one
        error object may reach several tests (a missing engine is found once), and each
        must name itself. A plain copy would call ``__init__`` again, whose keywords
        differ from class to class."""
        clone = type(self).__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone.args = self.args
        clone.test = test
        if clone.image is None:
            clone.image = image
        return clone

    def __reduce__(self) -> tuple[Any, ...]:
        # Exception's own reduce calls the class with ``args`` only, which fails for the
        # errors with keyword-only data (``path=``): rebuild without calling __init__,
        # then restore every attribute. copy.copy and pickle both go through here.
        return (_rebuild, (type(self), self.args), self.__dict__)


def _rebuild(cls: type[ContainerError], args: tuple[Any, ...]) -> ContainerError:
    error = cls.__new__(cls)
    error.args = args
    return error


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


class NetworkError(ContainerError):
    """A network could not be created or removed, or a container is not on the network
    asked about; ``network`` is its name as the test declared it."""

    def __init__(self, message: str, *, network: str | None = None, **context: str | None) -> None:
        super().__init__(message, **context)
        self.network = network


class LockFileError(ContainerError):
    """The lock file cannot be read, or a line of it is malformed.

    ``path`` is the file and ``line`` the 1-based line number, when the problem is on one.
    """

    def __init__(self, message: str, *, path: Path | None = None, line: int | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.line = line


class UnpinnedImageError(ContainerError):
    """An image has no pin in the lock file while pins are required (the strict lock mode)."""


class CacheDirError(ContainerError):
    """The cache directory, or a file in it, cannot be trusted or used.

    ``path`` is the directory or file concerned.
    """

    def __init__(self, message: str, *, path: Path) -> None:
        super().__init__(message)
        self.path = path


class ArchiveError(ContainerError):
    """An image archive could not be written, or a tarball in it cannot be used.

    ``path`` is the tarball (or the directory) concerned; ``corrupt`` is true when the
    tarball itself is at fault (unreadable, another image, refused by the engine), false
    when something else failed (the engine's connection, a file system error).
    """

    def __init__(
        self, message: str, *, path: Path, image: str | None = None, corrupt: bool = False
    ) -> None:
        super().__init__(message, image=image)
        self.path = path
        self.corrupt = corrupt


class DeclarationError(ContainerError, ValueError):
    """A declaration that cannot be used, in any form: a ``container`` marker (a
    collection error), ``container_fixture``, ``container_factory``, ``service()`` or a
    line of the ini key ``container_services``. The message names where it was written
    (the test, the service) and says what to write instead; ``image`` is the image and
    ``name`` the declared name, when the declaration got that far.

    Also a :class:`ValueError`, for callers that catch a bad argument as one."""

    def __init__(
        self,
        message: str,
        *,
        image: str | None = None,
        test: str | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(message, image=image, test=test)
        self.name = name


class SettingError(ContainerError, ValueError):
    """A setting's value is invalid (a ``--container-*`` option, a ``container_*`` ini
    key or a ``PYTEST_CONTAINERS_*`` variable); the message names the setting and the valid
    values. ``setting`` is the option's name (``timeout`` for ``--container-timeout``),
    when one setting is at fault.

    Also a :class:`ValueError`, for callers that catch a bad argument as one."""

    def __init__(self, message: str, *, setting: str | None = None) -> None:
        super().__init__(message)
        self.setting = setting


class WaitFailed(ContainerError):
    """A wait strategy cannot be satisfied (``pytest_containers.wait.WaitFailed`` too).

    ``reason`` says why in a few words. ``exited`` is true when the container stopped
    running while being waited for, ``timed_out`` when the deadline passed first;
    ``timeout`` then names the seconds that ran out when they were a nested strategy's own
    rather than the whole wait's. ``container`` is the container waited for, once
    :func:`~pytest_containers.wait.wait_until_ready` has seen it fail. The plugin turns it
    into a :class:`ContainerStartupError` with the container's state and logs.
    """

    def __init__(
        self,
        reason: str,
        *,
        exited: bool = False,
        timed_out: bool = False,
        timeout: float | None = None,
        container: str | None = None,
        image: str | None = None,
    ) -> None:
        super().__init__(reason, container=container, image=image)
        self.reason = reason
        self.exited = exited
        self.timed_out = timed_out
        self.timeout = timeout


class ServiceStartError(ContainerError):
    """A service did not start: its name, image, the wait that failed and the last lines
    of its logs are in the message."""

    def __init__(self, message: str, *, service: str, image: str | None = None) -> None:
        super().__init__(message, image=image)
        self.service = service
