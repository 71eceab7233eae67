"""pytest hooks and options of pytest-containers."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "container(image, *more_images, **options): run a container")
