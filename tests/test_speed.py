"""Speed without leaks, as users run it: removals off the tests' path, the next test's
containers started ahead (and removed when that test does not take them), and reset=
instead of a new container (a failing reset fails its test; the next gets a new one)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import docker
import pytest

from tests.conftest import SERIAL_AND_XDIST, InnerRuns
from tests.testenv import (
    BUSYBOX,
    run_containers,
    start_pytest,
    wait_for_files,
    wait_until_gone,
)

pytestmark = pytest.mark.docker


@pytest.mark.parametrize("lookahead", ["1", "0"])
def test_the_next_tests_container_starts_while_this_one_runs(
    run_suite: InnerRuns, pytester: pytest.Pytester, docker_client: docker.DockerClient,
    tmp_path: Path, lookahead: str,
) -> None:  # fmt: skip
    ended = tmp_path / "ended"
    pytester.makepyfile(
        f"""
        import datetime, time, pytest

        @pytest.mark.container("{BUSYBOX}", command=["sleep", "300"])
        def test_first(container):
            time.sleep(3)
            open({str(ended)!r}, "w").write(str(time.time()))

        @pytest.mark.container("{BUSYBOX}", command=["sleep", "300"])
        def test_second(container):
            started = container.raw.attrs["State"]["StartedAt"][:26].rstrip("Z") + "+00:00"
            at = datetime.datetime.fromisoformat(started).timestamp()
            assert at < float(open({str(ended)!r}).read()), "not started ahead"
        """
    )
    result = run_suite(f"--container-lookahead={lookahead}")
    if lookahead == "1":
        result.assert_outcomes(passed=2)
    else:  # the probe sees the difference: without lookahead the start comes after
        result.assert_outcomes(passed=1, failed=1)
    assert run_suite.leftovers(docker_client) == []
    assert run_suite.leftover_networks(docker_client) == []


def test_a_container_started_ahead_that_exited_meanwhile_is_not_handed_over(
    run_suite: InnerRuns, pytester: pytest.Pytester, docker_client: docker.DockerClient
) -> None:
    # No wait: a start checks only that the container runs. One started ahead runs at
    # its start, then exits while the test before runs; the next test must not get it.
    pytester.makepyfile(
        f"""
        import time, pytest

        @pytest.mark.container("{BUSYBOX}", command=["sleep", "300"])
        def test_first(container):
            time.sleep(3)

        @pytest.mark.container("{BUSYBOX}", command=["sh", "-c", "sleep 1; exit 3"])
        def test_second(container):
            container.reload()
            assert container.status == "running"
        """
    )
    run_suite("--container-lookahead=1").assert_outcomes(passed=2)
    assert run_suite.leftovers(docker_client) == []


@SERIAL_AND_XDIST
def test_containers_started_ahead_for_tests_that_do_not_take_them_are_removed(
    run_suite: InnerRuns, pytester: pytest.Pytester, docker_client: docker.DockerClient,
    workers: list[str],
) -> None:  # fmt: skip
    pytester.makepyfile(
        f"""
        import os, time, pytest
        from pytest_containers._cleanup.sweep import PID_LABEL

        def others(container):
            found = container.raw.client.containers.list(
                all=True, filters={{"label": f"{{PID_LABEL}}={{os.getpid()}}"}}
            )
            return sorted(c.name for c in found if c.id != container.id)

        @pytest.mark.container("{BUSYBOX}", command=["sleep", "300"])
        def test_a(container):
            time.sleep(2)

        @pytest.mark.skipif(True, reason="started ahead, then skipped")
        @pytest.mark.container("{BUSYBOX}", command=["sleep", "300"])
        def test_b(container):
            pass

        @pytest.mark.container("{BUSYBOX}", command=["sleep", "300"])
        def test_deselected(container):
            pass

        @pytest.mark.container("{BUSYBOX}", command=["sleep", "300"])
        def test_c(container):
            # At most the next test's, started ahead: not the skipped test's, nor test_a's.
            time.sleep(3)  # time for test_d's to be there, so that one more would show
            # Removals run in the background: on a loaded engine (the suite's servers
            # booting on the other worker) one took over 10 s. One kept until the end of
            # the run would stay past any deadline.
            deadline = time.monotonic() + 40
            while len(others(container)) > 1 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert len(others(container)) <= 1, others(container)

        @pytest.mark.container("{BUSYBOX}", command=["sleep", "300"])
        def test_d_fails(container):
            time.sleep(2)
            assert False

        @pytest.mark.container("{BUSYBOX}", command=["sleep", "300"])
        def test_e_never_runs(container):
            pass
        """
    )
    # -x stops before test_e, whose container was started ahead.
    args = [*workers, "-k", "not deselected"]
    result = run_suite(*args, *(["-x"] if not workers else []))
    if workers:
        result.assert_outcomes(passed=3, failed=1, skipped=1)
    else:
        result.assert_outcomes(passed=2, failed=1, skipped=1)
    assert run_suite.leftovers(docker_client) == []


def test_a_failing_reset_fails_its_test_and_the_next_test_gets_a_new_container(
    run_suite: InnerRuns, pytester: pytest.Pytester, docker_client: docker.DockerClient,
) -> None:  # fmt: skip
    pytester.makepyfile(
        f"""
        import pytest
        from pytest_containers import container_fixture

        ids = []
        resets = []
        counted = container_fixture(
            "{BUSYBOX}", command=["sleep", "300"], scope="session",
            reset=lambda c: resets.append(c.id),
        )
        RESET = ["sh", "-c", "test ! -e /tmp/dirty || (echo cannot clean up; exit 3)"]
        pytestmark = pytest.mark.container(
            "{BUSYBOX}", command=["sleep", "300"], scope="module", reset=RESET
        )

        def test_1(container, counted):
            ids.append(container.id)
            container.exec(["touch", "/tmp/dirty"])
            assert resets == []  # not before the first test of a new container

        def test_2_reset_fails(container, counted):
            raise AssertionError("the test ran after its reset failed")

        def test_3_new_container(container, counted):
            assert container.id not in ids
            ids.append(container.id)
            assert container.exec(["ls", "/tmp"]).stdout == ""
            assert len(resets) == 1  # test_2 stopped at the first fixture

        def test_4_same_container_reset(container):
            assert container.id == ids[-1]
        """
    )
    result = run_suite()
    # A fixture that fails: pytest reports the test as an error in its setup.
    result.assert_outcomes(passed=3, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*test_2_reset_fails: the reset of container pytest-containers-* (busybox:1.35) by "
            "*sh*-c*test ! -e /tmp/dirty* failed: exit code 3, output: cannot clean up; the "
            "next test gets a new container"
        ]
    )
    result.stdout.no_fnmatch_line("*the test ran after its reset failed*")
    assert run_suite.leftovers(docker_client) == []


def test_reset_with_a_function_scope_is_a_collection_error_that_says_why(
    run_suite: InnerRuns, pytester: pytest.Pytester,
) -> None:  # fmt: skip
    pytester.makepyfile(
        f"""
        import pytest

        @pytest.mark.container("{BUSYBOX}", reset=["true"])
        def test_x(container):
            pass
        """
    )
    result = run_suite()
    result.stdout.fnmatch_lines(["*reset= only goes with scope='class', 'module'*"])
    assert result.ret != 0


@SERIAL_AND_XDIST
def test_background_removals_and_lookahead_leave_nothing(
    run_suite: InnerRuns, pytester: pytest.Pytester, docker_client: docker.DockerClient,
    workers: list[str],
) -> None:  # fmt: skip
    pytester.makepyfile(
        f"""
        import pytest

        @pytest.mark.container("{BUSYBOX}", command=["sleep", "300"])
        @pytest.mark.parametrize("n", range(8))
        def test_quick(container, n):
            pass

        @pytest.mark.container("{BUSYBOX}", command=["sleep", "300"], network="net")
        @pytest.mark.parametrize("n", range(2))
        def test_on_a_private_network(container, n):
            pass
        """
    )
    run_suite(*workers).assert_outcomes(passed=10)
    assert run_suite.leftovers(docker_client) == []
    assert run_suite.leftover_networks(docker_client) == []


@SERIAL_AND_XDIST
def test_kill_9_with_pending_removals_and_lookahead_leaves_nothing_within_10_seconds(
    pytester: pytest.Pytester, docker_client: docker.DockerClient, tmp_path: Path,
    run_suite: InnerRuns, workers: list[str],
) -> None:  # fmt: skip
    up = tmp_path / "up"
    up.mkdir()
    pytester.makepyfile(
        f"""
        import os, time, pytest

        @pytest.mark.container("{BUSYBOX}", command=["sleep", "300"])
        @pytest.mark.parametrize("n", range(12))
        def test_quick(container, n):
            if n >= 8:
                open(os.path.join({str(up)!r}, str(n)), "w").close()
                time.sleep(300)
        """
    )
    run_id = run_suite.new_run_id()
    run = start_pytest(pytester, run_id, *workers)
    wait_for_files(up, 2 if workers else 1)
    # The test's own container, and the next test's started ahead.
    deadline = time.monotonic() + 20
    while len(run_containers(docker_client, run_id)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(run_containers(docker_client, run_id)) >= 2
    os.killpg(run.pid, signal.SIGKILL)
    run.communicate(timeout=30)
    assert wait_until_gone(docker_client, run_id, 10) < 10


def test_lookahead_is_an_option_with_an_ini_key_and_an_environment_variable(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeini("[pytest]\ncontainer_lookahead = lots\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.stderr.fnmatch_lines(["*container_lookahead*expected a whole number*lots*"])
    env = {**os.environ, "PYTEST_CONTAINERS_LOOKAHEAD": "-1"}
    finished = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider"],
        cwd=pytester.path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert "PYTEST_CONTAINERS_LOOKAHEAD" in finished.stdout + finished.stderr
