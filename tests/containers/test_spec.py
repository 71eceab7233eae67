"""What a container declaration accepts, and what it says about what it does not: pure,
no engine (tests/containers/test_container.py has the specs' happy paths)."""

from __future__ import annotations

from typing import Any

import pytest

from pytest_containers._containers.spec import ContainerSpec


@pytest.mark.parametrize(
    ("keywords", "error", "says"),
    [
        ({"image": ""}, TypeError, "image must be a non-empty str"),
        ({"network": " "}, ValueError, "network must be a non-empty name"),
        ({"user": 1000}, TypeError, "user must be a str"),
        ({"ports": 6379.0}, TypeError, "ports must be a port"),
        ({"ports": {6379: (1, 6379)}}, TypeError, "host address of port"),
        ({"env": "A=1"}, TypeError, "env must be a mapping or a list"),
        ({"env": {"": "1"}}, ValueError, "env keys must be non-empty str"),
        ({"env": {"A": object()}}, TypeError, r"env\['A'\] must be a str"),
        ({"command": 7}, TypeError, "command must be a str or a list of str"),
        ({"volumes": {"/src": {"mode": "ro"}}}, ValueError, "must map to a path"),
        ({"volumes": ["/src"]}, ValueError, "volumes entries must look like"),
        ({"volumes": "/src:/dst"}, TypeError, "volumes must be a list or a mapping"),
        ({"tmpfs": 5}, TypeError, "tmpfs must be a list of paths"),
        ({"tmpfs": ["relative"]}, ValueError, "tmpfs paths must be absolute"),
        ({"healthcheck": ["CMD", "true"]}, TypeError, "healthcheck must be a dict"),
        ({"healthcheck": {"colour": 1}}, TypeError, "healthcheck"),
        ({"options": ["init"]}, TypeError, "options must be a dict"),
        ({"options": {"detach": False}}, TypeError, "always created detached"),
        ({"options": {"x": {"y": {1, 2}, "z": [bytearray()]}}}, TypeError, "plain data"),
    ],
)
def test_a_bad_keyword_says_what_it_takes(
    keywords: dict[str, Any], error: type[Exception], says: str
) -> None:
    image = keywords.pop("image", "redis:7")
    with pytest.raises(error, match=says):
        ContainerSpec.from_kwargs(image, **keywords)


def test_every_keyword_reaches_dockers_create_arguments() -> None:
    spec = ContainerSpec.from_kwargs(
        "redis:7",
        env={"A": "1"},
        user="redis",
        platform="linux/amd64",
        ports={"6379": "16379"},
        volumes={"/data": {"bind": "/data"}},
        options={"cap_add": ["NET_ADMIN"], "sysctls": {"a": "1"}, "dns": ("1.1.1.1",)},
    )
    kwargs = spec.create_kwargs()
    assert kwargs["environment"] == {"A": "1"}
    assert (kwargs["user"], kwargs["platform"]) == ("redis", "linux/amd64")
    assert kwargs["volumes"] == ["/data:/data:rw"]
    # Frozen to stay hashable, given back to docker-py in the form they were written.
    assert kwargs["cap_add"] == ["NET_ADMIN"]
    assert kwargs["sysctls"] == {"a": "1"}
    assert kwargs["dns"] == ("1.1.1.1",)
    assert spec.port_bindings == (("6379/tcp", None, 16379),)
    hash(spec)


def test_sets_in_options_stay_sets() -> None:
    spec = ContainerSpec.from_kwargs("redis:7", options={"group_add": frozenset({"audio"})})
    assert spec.create_kwargs()["group_add"] == {"audio"}
