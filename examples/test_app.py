"""Your own image: built from examples/app/Dockerfile once per content, then reused."""

from __future__ import annotations

import pytest

from pytest_containers import Container, Image, container_fixture, image_fixture, wait

app = container_fixture(build="app", wait=wait.for_log("app ready"), scope="module")
app_image = image_fixture(build="app")


@pytest.mark.container(build="app", wait=wait.for_log("app ready"))
def test_built_from_the_marker(container: Container) -> None:
    assert container.exec(["cat", "/app/version"]).stdout == "1\n"


def test_built_from_a_fixture(app: Container, app_image: Image) -> None:
    assert app.image.id == app_image.id
    assert app_image.resolved_ref.startswith("pytest-containers/app:")
