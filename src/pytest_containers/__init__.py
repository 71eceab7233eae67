"""pytest-containers: pull each image once, run ready containers, prove what ran.

The names that need docker-py (``Container``, ``ExecResult``, ``wait``) are imported on
first use, so that the plugin costs nothing to a run that starts no container.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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
from pytest_containers.fixtures import ContainerFactory, container_fixture, image_fixture

if TYPE_CHECKING:
    from pytest_containers import wait
    from pytest_containers._containers import Container, ExecResult

__all__ = [
    "Container",
    "ContainerError",
    "ContainerFactory",
    "ContainerStartupError",
    "EngineUnavailableError",
    "ExecResult",
    "Image",
    "ImageBuildError",
    "ImageNotFoundError",
    "ImagePullError",
    "ImageReferenceError",
    "PortNotPublishedError",
    "container_fixture",
    "image_fixture",
    "wait",
]

_LAZY = {
    "Container": "pytest_containers._containers",
    "ExecResult": "pytest_containers._containers",
    "wait": "pytest_containers.wait",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pytest_containers' has no attribute {name!r}")
    loaded = importlib.import_module(module)
    value = loaded if name == "wait" else getattr(loaded, name)
    globals()[name] = value
    return value
