"""Reuse across runs, the parts without an engine: the key says what a container is, a
slot is leased by one holder at a time, the settings and markers say when reuse applies,
and the summary marks what was reused."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import docker.models.networks
import pytest

from pytest_containers import DeclarationError, SettingError
from pytest_containers._base.image import Image
from pytest_containers._base.settings import (
    format_duration,
    parse_duration,
    resolve_settings,
)
from pytest_containers._containers.container import ContainerSpec
from pytest_containers._containers.networks import Network
from pytest_containers._engine.connection import Access
from pytest_containers._manager.declaration import FIXTURE, declare
from pytest_containers._manager.reuse import (
    ReusePool,
    reusable_network,
    reuse_key,
    reuse_summary,
)
from pytest_containers.wait import for_exec, for_log

IMAGE = Image(ref="redis:7", resolved_ref="redis:7", id="sha256:" + "a" * 64, digest="sha256:1")
SPEC = ContainerSpec.from_kwargs("redis:7", ports=[6379], env={"A": "1"}, command="redis-server")
LOCAL = Access(mode="published", host="127.0.0.1", bind_ip="127.0.0.1", reason="local")


def network(name: str, labels: dict[str, str] | None = None) -> Network:
    """A handle of a network as the engine would describe it (no engine asked)."""
    raw = docker.models.networks.Network(attrs={"Id": name * 2, "Name": name, "Labels": labels})
    return Network(raw)


def test_the_same_declaration_on_the_same_image_has_the_same_key() -> None:
    again = ContainerSpec.from_kwargs("redis:7", env=["A=1"], command="redis-server", ports=6379)
    assert reuse_key(SPEC, IMAGE, LOCAL) == reuse_key(again, IMAGE, LOCAL)
    assert len(reuse_key(SPEC, IMAGE, LOCAL)) == 20


@pytest.mark.parametrize(
    "changed",
    [
        {"env": {"A": "2"}},
        {"command": "redis-server --save ''"},
        {"ports": [6379, 6380]},
        {"ports": {6379: 16379}},
        {"volumes": ["data:/data"]},
        {"labels": {"team": "x"}},
        {"user": "nobody"},
        {"options": {"mem_limit": "64m"}},
        {"network": "host"},
    ],
    ids=lambda changed: next(iter(changed)),
)
def test_a_changed_declaration_has_another_key(changed: dict[str, object]) -> None:
    kwargs: dict[str, object] = {"ports": [6379], "env": {"A": "1"}, "command": "redis-server"}
    other = ContainerSpec.from_kwargs("redis:7", **{**kwargs, **changed})
    assert reuse_key(other, IMAGE, LOCAL) != reuse_key(SPEC, IMAGE, LOCAL)


def test_a_moved_tag_or_a_new_build_is_another_image_and_another_key() -> None:
    moved = dataclasses.replace(IMAGE, id="sha256:" + "b" * 64, digest="sha256:2")
    rebuilt = dataclasses.replace(IMAGE, id="sha256:" + "c" * 64)
    keys = {reuse_key(SPEC, image, LOCAL) for image in (IMAGE, moved, rebuilt)}
    assert len(keys) == 3


def test_the_wait_is_not_part_of_the_key_waiting_changes_nothing() -> None:
    waited = dataclasses.replace(SPEC, wait=for_log("Ready"))
    other = dataclasses.replace(SPEC, wait=for_exec(["true"]))
    assert reuse_key(waited, IMAGE, LOCAL) == reuse_key(other, IMAGE, LOCAL)


def test_networks_and_aliases_are_part_of_the_key() -> None:
    on_a = ContainerSpec.from_kwargs("redis:7", network=network("shared-a"), aliases=["cache"])
    a_again = ContainerSpec.from_kwargs("redis:7", network=network("shared-a"), aliases=["cache"])
    on_b = ContainerSpec.from_kwargs("redis:7", network=network("shared-b"), aliases=["cache"])
    aliased = ContainerSpec.from_kwargs("redis:7", network=network("shared-a"), aliases=["db"])
    keys = [reuse_key(spec, IMAGE, LOCAL) for spec in (on_a, a_again, on_b, aliased)]
    assert keys[0] == keys[1]
    assert len(set(keys)) == 3


def test_how_tests_reach_the_container_is_part_of_the_key() -> None:
    everywhere = dataclasses.replace(LOCAL, bind_ip="")
    assert reuse_key(SPEC, IMAGE, LOCAL) != reuse_key(SPEC, IMAGE, everywhere)


def test_only_networks_that_outlive_the_run_can_carry_a_reused_container() -> None:
    assert reusable_network(SPEC)
    assert reusable_network(ContainerSpec.from_kwargs("redis:7", network="host"))
    assert reusable_network(ContainerSpec.from_kwargs("redis:7", network=network("made-by-hand")))
    # A private network of a scope, and a network_fixture's (labelled with its run).
    assert not reusable_network(ContainerSpec.from_kwargs("redis:7", network="backend"))
    of_run = network("pytest-containers-x", {"pytest-containers.run": "abc"})
    assert not reusable_network(ContainerSpec.from_kwargs("redis:7", network=of_run))


def test_a_slot_is_leased_by_one_holder_at_a_time_and_free_again_when_given_up(
    tmp_path: Path,
) -> None:
    pool = ReusePool(tmp_path)
    first = pool.lease("0123456789abcdef0123")
    second = pool.lease("0123456789abcdef0123")
    assert first is not None
    assert second is not None
    assert (first.slot, second.slot) == (0, 1)
    assert pool.lease("fedcba98765432100000") is not None  # another key: its own slot 0
    os.close(first.fd)  # as when its holder dies: the kernel drops the lock
    again = pool.lease("0123456789abcdef0123")
    assert again is not None
    assert again.slot == 0
    assert again.lock == tmp_path / "reuse" / "0123456789abcdef0123-0.lock"


def test_reuse_is_a_flag_with_an_ini_key_and_an_environment_variable() -> None:
    assert resolve_settings({}, {}, {}).reuse is False
    assert resolve_settings({}, {"reuse": "true"}, {}).reuse is True
    assert resolve_settings({}, {}, {"PYTEST_CONTAINERS_REUSE": "1"}).reuse is True
    assert resolve_settings({"reuse": False}, {}, {"PYTEST_CONTAINERS_REUSE": "1"}).reuse is False


def test_the_reuse_ttl_takes_seconds_or_a_unit_and_defaults_to_an_hour() -> None:
    assert resolve_settings({}, {}, {}).reuse_ttl == 3600
    assert resolve_settings({}, {"reuse_ttl": "30m"}, {}).reuse_ttl == 1800
    assert resolve_settings({"reuse_ttl": "90"}, {}, {}).reuse_ttl == 90
    assert resolve_settings({}, {}, {"PYTEST_CONTAINERS_REUSE_TTL": "2d"}).reuse_ttl == 172800
    with pytest.raises(SettingError, match=r"container_reuse_ttl.*positive duration.*soon"):
        resolve_settings({}, {"reuse_ttl": "soon"}, {})
    with pytest.raises(ValueError, match="positive"):
        parse_duration("0")
    assert [format_duration(s) for s in (3600, 90, 0.5, 1800, 86400)] == [
        "1h",
        "90s",
        "0.5s",
        "30m",
        "1d",
    ]


@pytest.mark.parametrize("scope", ["function", "run"])
def test_reuse_goes_only_with_a_scope_shared_by_the_tests_of_one_process(scope: str) -> None:
    def reuse(value: object, scope: str) -> bool:
        return declare(FIXTURE, ("redis:7",), {"reuse": value, "scope": scope}).reuse

    with pytest.raises(DeclarationError, match="reuse=True only goes with scope='class'"):
        reuse(True, scope)
    assert reuse(False, scope) is False
    assert reuse(True, "session") is True
    with pytest.raises(DeclarationError, match="reuse= takes True or False, not 'yes'"):
        reuse("yes", "session")


def test_the_summary_counts_reused_and_started_containers_once_each_and_marks_them() -> None:
    records: list[dict[str, object]] = [
        {"id": "1", "name": "pc-reuse-redis", "image": "redis:7", "state": "reused"},
        {"id": "2", "name": "pc-reuse-busybox", "image": "busybox", "state": "started"},
        # Leased again later in the run (another module): still the one started.
        {"id": "2", "name": "pc-reuse-busybox", "image": "busybox", "state": "reused"},
    ]
    lines = reuse_summary(records, ["old-one"], enabled=True, ttl=3600)
    assert lines == [
        "containers: reuse: 1 reused, 1 started; kept for the next run (removed after 1h idle)",
        "  reused   pc-reuse-redis  (redis:7)",
        "  started  pc-reuse-busybox  (busybox)",
        "containers: removed 1 reused container(s) idle longer than 1h: old-one",
    ]
    assert reuse_summary(records, [], enabled=False, ttl=3600) == []
