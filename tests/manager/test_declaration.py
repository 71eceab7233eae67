"""One declaration path: every form turns into a Declaration, checked by the same code,
failing with the same error (pure: no engine)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pytest_containers import (
    ContainerError,
    DeclarationError,
    container_fixture,
    image_fixture,
    service,
)
from pytest_containers._manager.declaration import (
    FACTORY,
    FIXTURE,
    MARKER,
    SERVICE,
    BuildRequest,
    declare,
)
from pytest_containers._manager.services import parse_ini_line

#: Each form, called with the image and the keywords as its users write them.
FORMS: dict[str, Callable[..., object]] = {
    "marker": lambda image, **kw: declare(MARKER, (image,), kw, where="test_x.py::test_x"),
    "container_fixture": lambda image, **kw: container_fixture(image, **kw),
    "container_factory": lambda image, **kw: declare(FACTORY, (image,), kw),
    "service": lambda image, **kw: service(image, **kw),
}

#: The same mistakes, in every form that may make them, and what the error says.
MISTAKES: list[tuple[str, dict[str, Any], str]] = [
    ("Not An Image", {}, "Not An Image"),
    ("redis:7", {"prots": [6379]}, "unknown container option(s) 'prots'"),
    ("redis:7", {"ports": {6379: "x"}}, "port 6379 must map to None or 0"),
    ("redis:7", {"env": "A=1"}, "env must be a mapping"),
    ("redis:7", {"dockerfile": "D"}, "dockerfile"),
    ("redis:7", {"aliases": ["db"]}, "need a network the containers share"),
    ("redis:7", {"name": ""}, "name"),
]


@pytest.mark.parametrize("form", sorted(FORMS))
@pytest.mark.parametrize(("image", "keywords", "says"), MISTAKES)
def test_every_form_rejects_the_same_mistake_with_one_error_type(
    form: str, image: str, keywords: dict[str, Any], says: str
) -> None:
    with pytest.raises(DeclarationError) as caught:
        FORMS[form](image, **keywords)
    assert says in str(caught.value)
    assert isinstance(caught.value, ContainerError)
    assert isinstance(caught.value, ValueError)
    assert caught.value.image == image


@pytest.mark.parametrize(
    ("call", "says"),
    [
        (lambda: container_fixture("redis:7", reset=["true"]), "reset= only goes with scope="),
        (lambda: container_fixture("redis:7", scope="run", reuse=True), "reuse=True only goes"),
        (lambda: container_fixture("redis:7", scope="weekly"), "invalid container scope"),
        (lambda: container_fixture(), "container_fixture needs an image"),
        (lambda: container_fixture("redis:7", build="ctx"), "an image or build=, not both"),
        (lambda: image_fixture(), "image_fixture needs an image"),
        (lambda: image_fixture("redis:7", target="t"), "target only go with build="),
        (lambda: container_fixture("redis:7", dockerfile="D"), "dockerfile only go with build="),
        (lambda: service("redis:7", scope="module"), "not scope="),
        (lambda: declare(FACTORY, ("redis:7",), {"scope": "module"}), "'scope'"),
        (lambda: declare(FIXTURE, ("redis:6", "redis:7"), {}), "takes one image, got 2"),
        (lambda: parse_ini_line("cache redis:7 per=run reset=FLUSHALL"), "per='worker' only"),
    ],
)
def test_what_a_form_does_not_take_is_said_in_its_own_words(
    call: Callable[[], object], says: str
) -> None:
    with pytest.raises(DeclarationError, match=None) as caught:
        call()
    assert says in str(caught.value)


def test_the_forms_make_the_same_declaration_of_the_same_words() -> None:
    keywords = {"ports": [6379], "env": {"A": "1"}, "scope": "module", "reset": ["true"]}
    marker = declare(MARKER, ("redis:7",), keywords)
    fixture = declare(FIXTURE, ("redis:7",), keywords)
    # The marker's name is the key of the `containers` dict; the others name the
    # container too.
    assert marker.specs[0].name is None
    assert fixture.specs[0].name == "redis"
    assert (marker.name, marker.scope, marker.reset) == ("redis", "module", ("true",))
    assert (fixture.name, fixture.scope, fixture.reset) == ("redis", "module", ("true",))
    assert marker.specs[0].ports == fixture.specs[0].ports == ("6379/tcp",)
    served = service("redis:7", ports=[6379], env={"A": "1"}, reset=["true"])
    assert served.declaration.specs[0] == fixture.specs[0]
    assert served.declaration.scope == "session"
    assert service("redis:7", per="run").declaration.scope == "run"


def test_a_marker_names_several_images_and_keeps_a_spec_for_each() -> None:
    declared = declare(MARKER, ("redis:6", "redis:7"), {"ports": [6379]})
    assert declared.images == ("redis:6", "redis:7")
    assert declared.spec_for("redis:7").image == "redis:7"
    assert declared.spec_for().image == "redis:6"


def test_a_build_is_resolved_against_the_rootdir_when_it_is_started(tmp_path: Path) -> None:
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "Dockerfile.test").write_text("FROM busybox:1.35\n")
    declared = declare(
        SERVICE, (), {"build": "app", "dockerfile": "Dockerfile.test", "target": "t"}
    )
    assert declared.build == BuildRequest(context="app", dockerfile="Dockerfile.test", target="t")
    assert declared.images == ("build:app/Dockerfile.test#t",)
    assert declared.name == "app"
    built = declared.build_spec(tmp_path)
    assert built is not None
    assert built.context == tmp_path / "app"
    assert built.ref == declared.images[0]


def test_a_network_fixture_stands_in_until_the_test_gives_its_network() -> None:
    def backend() -> None: ...

    setattr(backend, "_pytest_containers_network", True)  # noqa: B010 - as network_fixture marks it
    declared = declare(MARKER, ("redis:7",), {"network": backend, "aliases": ["db"]})
    assert declared.network_fixture is backend
    assert declared.spec_for().network == "network-fixture"
    assert declared.spec_for(network="resolved").network == "resolved"
    with pytest.raises(DeclarationError, match="network must be a name"):
        service("redis:7", network=backend)
