"""Hooks that pytest-containers adds; implement them in a ``conftest.py``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pytest_containers._manager.services import Service


def pytest_containers_services(config: pytest.Config) -> list[Service]:  # type: ignore[empty-body]
    """Return the services (``pytest_containers.service(...)``) to start before the
    session: before any ``conftest.py`` ``pytest_sessionstart`` and before collection, in
    every process that runs tests. Implement it in the rootdir's ``conftest.py`` (or one
    pytest loads before the session starts); the lists of every implementation and the
    ``container_services`` ini key are started together."""
