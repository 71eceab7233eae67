"""pytest-containers: pull each image once, run ready containers, prove what ran.

The names that need docker-py (``Container``, ``ExecResult``, ``Network``, ``wait``) are imported on
first use, so that the plugin costs nothing to a run that starts no container; so are the
fixture helpers (``ContainerFactory``, ``container_fixture``, ``image_fixture``,
``network_fixture``), so that importing a core module (``pytest_containers._base.reference``)
does not import pytest.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from pytest_containers._base.image import Image
from pytest_containers._manager.services import Service, service
from pytest_containers.errors import (
    ArchiveError,
    CacheDirError,
    ContainerError,
    ContainerStartupError,
    DeclarationError,
    EngineUnavailableError,
    ImageBuildError,
    ImageNotFoundError,
    ImagePullError,
    ImageReferenceError,
    LockFileError,
    NetworkError,
    PortNotPublishedError,
    ServiceStartError,
    SettingError,
    UnpinnedImageError,
    WaitFailed,
)

if TYPE_CHECKING:
    from pytest_containers import presets, wait
    from pytest_containers._containers.container import Container, ExecResult
    from pytest_containers._containers.networks import Network
    from pytest_containers._suite.fixtures import (
        ContainerFactory,
        container_fixture,
        image_fixture,
        network_fixture,
    )

__all__ = [
    "ArchiveError",
    "CacheDirError",
    "Container",
    "ContainerError",
    "ContainerFactory",
    "ContainerStartupError",
    "DeclarationError",
    "EngineUnavailableError",
    "ExecResult",
    "Image",
    "ImageBuildError",
    "ImageNotFoundError",
    "ImagePullError",
    "ImageReferenceError",
    "LockFileError",
    "Network",
    "NetworkError",
    "PortNotPublishedError",
    "Service",
    "ServiceStartError",
    "SettingError",
    "UnpinnedImageError",
    "WaitFailed",
    "container_fixture",
    "image_fixture",
    "network_fixture",
    "presets",
    "service",
    "wait",
]

_LAZY = {
    "ContainerFactory": "pytest_containers._suite.fixtures",
    "container_fixture": "pytest_containers._suite.fixtures",
    "image_fixture": "pytest_containers._suite.fixtures",
    "network_fixture": "pytest_containers._suite.fixtures",
    "Container": "pytest_containers._containers.container",
    "ExecResult": "pytest_containers._containers.container",
    "Network": "pytest_containers._containers.networks",
    "wait": "pytest_containers.wait",
    "presets": "pytest_containers.presets",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pytest_containers' has no attribute {name!r}")
    loaded = importlib.import_module(module)
    value = loaded if name in ("wait", "presets") else getattr(loaded, name)
    globals()[name] = value
    return value
