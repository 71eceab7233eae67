"""Reuse across runs, as users run it: a second run with --container-reuse takes the
container the first kept (and creates none), a changed declaration gets a new one, two
runs at once never share one, idle ones expire, --container-prune removes them, reset=
cleans one before its first test, and a kill -9 leaves nothing but the reused ones."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import cast

import docker
import docker.errors
import pytest

from pytest_containers._cleanup.sweep import RUN_LABEL
from pytest_containers._manager.reuse import REUSE_DIR_LABEL, REUSE_LABEL
from tests.conftest import SERIAL_AND_XDIST, InnerRuns
from tests.testenv import (
    BUSYBOX,
    run_containers,
    start_pytest,
    wait_for_files,
    wait_until_gone,
)

pytestmark = pytest.mark.docker

REUSE = "--container-reuse"

Reused = Callable[[], dict[str, dict[str, str]]]


@pytest.fixture
def reused(run_suite: InnerRuns, docker_client: docker.DockerClient) -> Iterator[Reused]:
    """The reused containers the inner runs kept (their cache dir's), by id, with their
    labels; all removed afterwards, as no run removes them by itself."""
    label = f"{REUSE_DIR_LABEL}={os.path.abspath(run_suite.cache_dir)}"

    def found() -> dict[str, dict[str, str]]:
        listed = docker_client.api.containers(all=True, filters={"label": label})
        return {str(entry["Id"]): dict(entry.get("Labels") or {}) for entry in listed}

    yield found
    for container_id in found():
        with contextlib.suppress(docker.errors.NotFound):
            docker_client.api.remove_container(container_id, force=True, v=True)


def created(
    client: docker.DockerClient, since: float, *, cache_dir: Path, run_id: str | None = None
) -> int:
    """How many containers the engine created since ``since`` for the reuse of
    ``cache_dir``'s runs, and for run ``run_id``, by its events."""
    labels = [f"{REUSE_DIR_LABEL}={os.path.abspath(cache_dir)}"]
    if run_id is not None:
        labels.append(f"{RUN_LABEL}={run_id}")
    # The engine takes fractional seconds; the stubs say int.
    until = cast("int", time.time() + 0.5)
    return sum(
        1
        for label in labels
        for _ in client.events(
            since=cast("int", since),
            until=until,
            filters={"type": "container", "event": "create", "label": label},
            decode=True,
        )
    )


def ids_in(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def write_suite(pytester: pytest.Pytester, ids: Path, *, env: str = "1", sleep: float = 0) -> None:
    """A session-scoped reused busybox, cleaned by reset= before each test that uses it;
    each test records the container's id, checks it is clean, and leaves it dirty."""
    pytester.makepyfile(
        f"""
        import time, pytest

        pytestmark = pytest.mark.container(
            "{BUSYBOX}", command=["sleep", "600"], env={{"V": "{env}"}}, scope="session",
            reuse=True, reset=["rm", "-f", "/tmp/dirty"],
        )

        @pytest.mark.parametrize("n", range(4))
        def test_clean(container, n):
            with open({str(ids)!r}, "a") as out:
                out.write(container.id + "\\n")
            assert container.exec(["ls", "/tmp"]).stdout == "", "not reset"
            container.exec(["touch", "/tmp/dirty"])
            time.sleep({sleep})
        """
    )


@SERIAL_AND_XDIST
def test_a_second_run_reuses_the_kept_container_resets_it_first_and_creates_none(
    run_suite: InnerRuns, pytester: pytest.Pytester, docker_client: docker.DockerClient,
    reused: Reused, tmp_path: Path, workers: list[str],
) -> None:  # fmt: skip
    first, second = tmp_path / "first", tmp_path / "second"
    write_suite(pytester, first, sleep=1.0 if workers else 0)
    result = run_suite(REUSE, *workers)
    result.assert_outcomes(passed=4)
    kept = reused()
    assert set(ids_in(first)) == set(kept)
    for labels in kept.values():
        assert RUN_LABEL not in labels  # no run's end, watchdog or sweep removes it
        assert len(labels[REUSE_LABEL]) == 20
    assert run_suite.leftovers(docker_client) == []

    write_suite(pytester, second, sleep=1.0 if workers else 0)
    since = time.time()
    result = run_suite(REUSE, *workers)
    # Each test finds a clean container, though the last run left it dirty: the reset
    # ran before the first test of this run too.
    result.assert_outcomes(passed=4)
    assert set(ids_in(second)) <= set(kept)
    assert created(docker_client, since, cache_dir=run_suite.cache_dir,
                   run_id=run_suite.run_ids[-1]) == 0  # fmt: skip
    count = len(set(ids_in(second)))
    result.stdout.fnmatch_lines(
        [
            "containers: reuse on: containers declared with reuse=True are kept for later runs, "
            "removed after 1h idle*",
            "-* containers: reuse -*",
            f"containers: reuse: {count} reused, 0 started; kept for the next run*",
            "  reused   pytest-containers-reuse-busybox-1.35-* (busybox:1.35)",
        ]
    )


def test_reuse_is_off_unless_enabled_and_then_reuse_true_changes_nothing(
    run_suite: InnerRuns, pytester: pytest.Pytester, docker_client: docker.DockerClient,
    reused: Reused, tmp_path: Path,
) -> None:  # fmt: skip
    ids = tmp_path / "ids"
    write_suite(pytester, ids)
    result = run_suite()
    result.assert_outcomes(passed=4)
    result.stdout.no_fnmatch_line("containers: reuse*")
    assert len(set(ids_in(ids))) == 1
    assert reused() == {}
    assert run_suite.leftovers(docker_client) == []
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(ids_in(ids)[0])


def test_reuse_is_enabled_by_the_ini_key_or_the_environment_variable(
    run_suite: InnerRuns, pytester: pytest.Pytester, reused: Reused, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    ids = tmp_path / "ids"
    write_suite(pytester, ids)
    pytester.makeini("[pytest]\ncontainer_reuse = true\n")
    run_suite().assert_outcomes(passed=4)
    pytester.makeini("[pytest]\n")
    monkeypatch.setenv("PYTEST_CONTAINERS_REUSE", "1")
    run_suite().assert_outcomes(passed=4)
    assert len(set(ids_in(ids))) == 1
    assert set(reused()) == set(ids_in(ids))


def test_a_changed_declaration_gets_a_new_container(
    run_suite: InnerRuns, pytester: pytest.Pytester, reused: Reused, tmp_path: Path,
) -> None:  # fmt: skip
    before, after = tmp_path / "before", tmp_path / "after"
    write_suite(pytester, before, env="1")
    run_suite(REUSE).assert_outcomes(passed=4)
    write_suite(pytester, after, env="2")
    run_suite(REUSE).assert_outcomes(passed=4)
    assert set(ids_in(before)).isdisjoint(ids_in(after))
    kept = reused()
    assert set(kept) == set(ids_in(before)) | set(ids_in(after))
    assert len({labels[REUSE_LABEL] for labels in kept.values()}) == 2


def test_two_runs_at_once_do_not_share_a_container_and_both_are_reusable_later(
    run_suite: InnerRuns, pytester: pytest.Pytester, docker_client: docker.DockerClient,
    reused: Reused, tmp_path: Path,
) -> None:  # fmt: skip
    meet = tmp_path / "meet"
    meet.mkdir()
    pytester.makepyfile(
        f"""
        import os, time, pytest

        @pytest.mark.container("{BUSYBOX}", command=["sleep", "600"], scope="session",
                               reuse=True)
        def test_meet(container):
            open(os.path.join({str(meet)!r}, container.id), "w").close()
            open(os.path.join({str(meet)!r}, f"run-{{os.getpid()}}"), "w").close()
            # Both runs hold their container at once: wait for the other one.
            deadline = time.monotonic() + 60
            while len([n for n in os.listdir({str(meet)!r}) if n.startswith("run-")]) < 2:
                assert time.monotonic() < deadline, "the other run never came"
                time.sleep(0.1)
        """
    )

    def together() -> set[str]:
        for entry in meet.iterdir():
            entry.unlink()
        cache = f"--container-cache-dir={run_suite.cache_dir}"
        runs = [start_pytest(pytester, run_suite.new_run_id(), REUSE, cache) for _ in range(2)]
        for run in runs:
            output, _ = run.communicate(timeout=180)
            assert run.returncode == 0, output
        return {entry.name for entry in meet.iterdir() if not entry.name.startswith("run-")}

    first = together()
    assert len(first) == 2  # one container each
    since = time.time()
    assert together() == first  # both kept, both reused
    assert created(docker_client, since, cache_dir=run_suite.cache_dir) == 0
    assert set(reused()) == first
    assert run_suite.leftovers(docker_client) == []


def test_an_idle_reused_container_expires_and_the_next_runs_sweep_removes_it(
    run_suite: InnerRuns, pytester: pytest.Pytester, reused: Reused, tmp_path: Path,
) -> None:  # fmt: skip
    ids = tmp_path / "ids"
    write_suite(pytester, ids)
    pytester.makeini("[pytest]\ncontainer_reuse_ttl = 1s\n")
    run_suite(REUSE).assert_outcomes(passed=4)
    assert len(reused()) == 1
    time.sleep(2)
    # The next run declares something else: the expired one goes anyway.
    pytester.makepyfile(
        f"""
        import pytest

        @pytest.mark.container("{BUSYBOX}", command=["sleep", "600"])
        def test_other(container):
            pass
        """
    )
    result = run_suite()
    result.assert_outcomes(passed=1)
    assert reused() == {}
    result.stdout.fnmatch_lines(
        ["containers: removed 1 reused container(s) idle longer than 1s: pytest-containers-reuse-*"]
    )


def test_a_fresh_reused_container_is_spared_by_the_next_runs_sweep(
    run_suite: InnerRuns, pytester: pytest.Pytester, reused: Reused, tmp_path: Path,
) -> None:  # fmt: skip
    write_suite(pytester, tmp_path / "ids")
    run_suite(REUSE).assert_outcomes(passed=4)
    kept = set(reused())
    pytester.makepyfile(
        f"""
        import pytest

        @pytest.mark.container("{BUSYBOX}", command=["sleep", "600"])
        def test_other(container):
            pass
        """
    )
    run_suite().assert_outcomes(passed=1)
    assert set(reused()) == kept


def test_prune_removes_the_reused_containers(
    run_suite: InnerRuns, pytester: pytest.Pytester, reused: Reused, tmp_path: Path,
) -> None:  # fmt: skip
    write_suite(pytester, tmp_path / "ids")
    run_suite(REUSE).assert_outcomes(passed=4)
    assert len(reused()) == 1
    result = pytester.runpytest_subprocess(
        f"--container-cache-dir={run_suite.cache_dir}", "--container-prune", timeout=120
    )
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines(["pytest-containers: removed 1 reused container(s)"])
    assert reused() == {}


def test_a_reused_container_that_died_or_fails_its_wait_is_replaced(
    run_suite: InnerRuns, pytester: pytest.Pytester, docker_client: docker.DockerClient,
    reused: Reused, tmp_path: Path,
) -> None:  # fmt: skip
    ids = tmp_path / "ids"
    pytester.makepyfile(
        f"""
        import pytest
        from pytest_containers import wait

        @pytest.mark.container(
            "{BUSYBOX}", command=["sleep", "600"], scope="module", reuse=True,
            wait=wait.for_exec(["sh", "-c", "test ! -e /tmp/broken"], timeout=2),
        )
        def test_it(container):
            with open({str(ids)!r}, "a") as out:
                out.write(container.id + "\\n")
        """
    )
    run_suite(REUSE).assert_outcomes(passed=1)
    first = ids_in(ids)[-1]
    docker_client.containers.get(first).exec_run(["touch", "/tmp/broken"])
    run_suite(REUSE).assert_outcomes(passed=1)
    second = ids_in(ids)[-1]
    assert second != first
    docker_client.containers.get(second).stop(timeout=0)
    run_suite(REUSE).assert_outcomes(passed=1)
    third = ids_in(ids)[-1]
    assert third not in (first, second)
    assert set(reused()) == {third}  # the broken and the dead ones are gone


def test_a_reused_container_whose_reset_fails_is_removed_not_kept(
    run_suite: InnerRuns, pytester: pytest.Pytester, reused: Reused, tmp_path: Path,
) -> None:  # fmt: skip
    ids = tmp_path / "ids"
    pytester.makepyfile(
        f"""
        import pytest

        pytestmark = pytest.mark.container(
            "{BUSYBOX}", command=["sleep", "600"], scope="session", reuse=True,
            reset=["sh", "-c", "test ! -e /tmp/broken"],
        )

        def test_1_breaks_it(container):
            with open({str(ids)!r}, "a") as out:
                out.write(container.id + "\\n")
            container.exec(["touch", "/tmp/broken"])

        def test_2_reset_fails(container):
            pass

        def test_3_new_container(container):
            with open({str(ids)!r}, "a") as out:
                out.write(container.id + "\\n")
        """
    )
    run_suite(REUSE).assert_outcomes(passed=2, errors=1)
    broken, fresh = ids_in(ids)
    assert broken != fresh
    assert set(reused()) == {fresh}


@SERIAL_AND_XDIST
def test_kill_9_leaves_no_container_but_the_reused_one_which_the_next_run_takes(
    pytester: pytest.Pytester, docker_client: docker.DockerClient, tmp_path: Path,
    run_suite: InnerRuns, reused: Reused, workers: list[str],
) -> None:  # fmt: skip
    up = tmp_path / "up"
    up.mkdir()
    pytester.makepyfile(
        f"""
        import os, time, pytest

        @pytest.mark.container("{BUSYBOX}", command=["sleep", "600"], scope="session",
                               reuse=True, name="kept")
        @pytest.mark.container("{BUSYBOX}", command=["sleep", "601"], name="own")
        @pytest.mark.parametrize("n", range(2))
        def test_sleeps(containers, n):
            open(os.path.join({str(up)!r}, str(os.getpid()) + str(n)), "w").close()
            time.sleep(300)
        """
    )
    run_id = run_suite.new_run_id()
    run = start_pytest(
        pytester, run_id, REUSE, f"--container-cache-dir={run_suite.cache_dir}", *workers
    )
    wait_for_files(up, 2 if workers else 1)
    assert run_containers(docker_client, run_id)
    kept = set(reused())
    assert len(kept) == (2 if workers else 1)
    os.killpg(run.pid, signal.SIGKILL)
    run.communicate(timeout=30)
    assert wait_until_gone(docker_client, run_id, 10) < 10
    assert set(reused()) == kept  # kept, and no longer leased: the next run takes it
    ids = tmp_path / "ids"
    write_suite(pytester, ids)
    pytester.makepyfile(
        f"""
        import pytest

        @pytest.mark.container("{BUSYBOX}", command=["sleep", "600"], scope="session",
                               reuse=True, name="kept")
        def test_again(container):
            with open({str(ids)!r}, "a") as out:
                out.write(container.id + "\\n")
        """
    )
    run_suite(REUSE).assert_outcomes(passed=1)
    assert ids_in(ids)[0] in kept
