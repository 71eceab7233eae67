"""pytest-containers: pull each image once, run ready containers, prove what ran."""

from __future__ import annotations

from pytest_containers._image import Image
from pytest_containers.errors import (
    ContainerError,
    ContainerStartupError,
    EngineUnavailableError,
    ImageBuildError,
    ImageNotFoundError,
    ImagePullError,
    ImageReferenceError,
    PortNotPublishedError,
)

__all__ = [
    "ContainerError",
    "ContainerStartupError",
    "EngineUnavailableError",
    "Image",
    "ImageBuildError",
    "ImageNotFoundError",
    "ImagePullError",
    "ImageReferenceError",
    "PortNotPublishedError",
]
