"""Presets as data: versions, overrides, the declarations they make, their URL
templates (pure: no engine; the servers themselves are tried in test_presets_docker.py)."""

from __future__ import annotations

import re
from types import SimpleNamespace
from typing import Any, cast

import pytest

from pytest_containers import DeclarationError, container_fixture, presets, service
from pytest_containers._containers.addresses import fill_url
from pytest_containers._containers.spec import ContainerSpec
from pytest_containers._manager.declaration import FIXTURE, MARKER, declare
from pytest_containers._manager.services import parse_ini_line
from pytest_containers.presets import BY_NAME, Preset


def test_a_preset_names_its_official_image_and_takes_another_version() -> None:
    assert presets.postgres().image == "postgres:15"
    assert presets.postgres("16").image == "postgres:16"
    assert presets.postgres("16", image="registry.example:5000/pg:16").image == (
        "registry.example:5000/pg:16"
    )
    assert Preset("x", "registry.example:5000/team/x:1")("2").image == (
        "registry.example:5000/team/x:2"
    )
    assert sorted(BY_NAME) == ["mariadb", "memcached", "nats", "postgres", "rabbitmq", "redis"]


def test_the_fast_settings_are_on_by_default_and_easy_to_turn_off() -> None:
    fast = presets.postgres().container_keywords()
    assert fast["tmpfs"] == {"/var/lib/postgresql/data": ""}
    assert "fsync=off" in fast["command"]
    slow = presets.postgres(fast=False).container_keywords()
    assert "tmpfs" not in slow
    assert "command" not in slow


def test_keywords_given_where_it_is_used_win_and_env_is_merged_key_by_key() -> None:
    declared = declare(
        MARKER,
        (presets.postgres(),),
        {"env": {"POSTGRES_DB": "app"}, "command": ["postgres"], "scope": "module"},
    )
    spec = declared.spec_for()
    assert dict(spec.env) == {
        "POSTGRES_USER": "test",
        "POSTGRES_PASSWORD": "test",
        "POSTGRES_DB": "app",
    }
    assert spec.command == ("postgres",)
    assert spec.tmpfs == (("/var/lib/postgresql/data", ""),)
    assert (declared.name, declared.scope, spec.ports) == ("postgres", "module", ("5432/tcp",))
    assert dict(spec.urls)[""].startswith("postgresql://")


def test_reset_true_is_the_presets_own_reset() -> None:
    declared = declare(FIXTURE, (presets.redis(),), {"scope": "module", "reset": True})
    assert declared.reset == ("redis-cli", "FLUSHALL")
    assert declared.specs[0].name == "redis"
    with pytest.raises(DeclarationError, match="the nats preset has nothing to reset"):
        container_fixture(presets.nats(), scope="module", reset=True)
    with pytest.raises(DeclarationError, match="reset=True runs a preset's reset"):
        container_fixture("redis:7", scope="module", reset=True)
    with pytest.raises(DeclarationError, match="reset= only goes with scope="):
        container_fixture(presets.redis(), reset=True)


def test_a_service_and_an_ini_line_take_a_preset() -> None:
    declared = service(presets.postgres("16"), expose={"DATABASE_URL": "{url}"})
    assert (declared.name, declared.display) == ("postgres", "postgres:16")
    line = parse_ini_line("db preset=postgres version=16 expose=DATABASE_URL={url} reset=preset")
    assert (line.name, line.display, line.expose) == (
        "db",
        "postgres:16",
        (("DATABASE_URL", "{url}"),),
    )
    assert line.reset == tuple(cast(list[str], presets.POSTGRES.reset))
    with pytest.raises(DeclarationError, match="unknown preset 'postgress'; the presets are"):
        parse_ini_line("db preset=postgress")
    with pytest.raises(DeclarationError, match=re.escape("uses {url} but the service has no URL")):
        service("redis:7", ports=[6379], expose={"URL": "{url}"})


def _reached(spec: ContainerSpec) -> Any:
    """What fill_url reads of a container, published on 127.0.0.1:4915x."""
    published = {port: 49150 + index for index, port in enumerate(spec.ports)}
    return SimpleNamespace(
        spec=spec,
        address=lambda port: ("127.0.0.1", published[f"{port}/tcp".replace("/tcp/tcp", "/tcp")]),
        internal_address=lambda port: ("db", int(str(port).partition("/")[0])),
    )


@pytest.mark.parametrize(
    ("preset", "driver", "url"),
    [
        (presets.postgres(), "", "postgresql://test:test@127.0.0.1:49150/test"),
        (presets.postgres(), "asyncpg", "postgresql+asyncpg://test:test@127.0.0.1:49150/test"),
        (presets.mariadb(), "pymysql", "mysql+pymysql://test:test@127.0.0.1:49150/test"),
        (presets.redis(), "", "redis://127.0.0.1:49150/0"),
        (presets.rabbitmq(), "", "amqp://test:test@127.0.0.1:49150/%2F"),
        (presets.nats(), "", "nats://127.0.0.1:49150"),
        (presets.memcached(), "", "memcached://127.0.0.1:49150"),
    ],
)
def test_a_presets_url_is_filled_from_where_the_test_reaches_it(
    preset: Preset, driver: str, url: str
) -> None:
    spec = declare(MARKER, (preset,), {}).spec_for()
    assert fill_url(dict(spec.urls)[driver], _reached(spec)) == url


def test_urls_quote_credentials_and_serve_peers_on_the_network() -> None:
    spec = declare(
        MARKER, (presets.postgres(),), {"env": {"POSTGRES_PASSWORD": "p@ss/word"}}
    ).spec_for()
    template = dict(spec.urls)[""]
    assert fill_url(template, _reached(spec)) == (
        "postgresql://test:p%40ss%2Fword@127.0.0.1:49150/test"
    )
    assert fill_url(template, _reached(spec), internal=True) == (
        "postgresql://test:p%40ss%2Fword@db:5432/test"
    )


def test_a_url_template_is_checked_where_it_is_declared() -> None:
    with pytest.raises(TypeError, match="urls must be a dict"):
        ContainerSpec.from_kwargs("x:1", urls="http://{host}")
    with pytest.raises(ValueError, match=re.escape("uses {hots}; the fields are")):
        ContainerSpec.from_kwargs("x:1", urls={"": "http://{hots}"})
    spec = ContainerSpec.from_kwargs("x:1", ports=[80], urls={"": "http://{host}:{port[80]}/"})
    assert fill_url(dict(spec.urls)[""], _reached(spec)) == "http://127.0.0.1:49150/"
