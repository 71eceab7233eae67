"""Cleanup and resilience, as users meet them: killed workers and runs, kept containers,
no engine, and a clear, quick error for every bad input that names the test, the image
and what to do, while the other tests go on and nothing is left running."""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

import docker
import docker.errors
import pytest

from pytest_containers._cleanup.sweep import local_identity
from tests.conftest import SERIAL_AND_XDIST, InnerRuns
from tests.testenv import (
    AUTH_REGISTRY,
    BUSYBOX,
    run_containers,
    start_pytest,
    wait_for_files,
    wait_until_gone,
)

pytestmark = pytest.mark.docker


@SERIAL_AND_XDIST
def test_kill_9_of_the_whole_run_leaves_no_container_within_10_seconds(
    pytester: pytest.Pytester, docker_client: docker.DockerClient, tmp_path: Path,
    run_suite: InnerRuns, workers: list[str],
) -> None:  # fmt: skip
    up = tmp_path / "up"
    up.mkdir()
    pytester.makepyfile(
        f"""
        import os, time, pytest

        @pytest.mark.container("{BUSYBOX}", command=["sleep", "300"], scope="run")
        @pytest.mark.container("{BUSYBOX}", command=["sleep", "301"], name="own")
        @pytest.mark.parametrize("n", range(2))
        def test_sleeps(containers, n):
            open(os.path.join({str(up)!r}, str(os.getpid()) + str(n)), "w").close()
            time.sleep(300)
        """
    )
    run_id = run_suite.new_run_id()
    run = start_pytest(pytester, run_id, *workers)
    wait_for_files(up, 2 if workers else 1)
    assert len(run_containers(docker_client, run_id)) >= 2
    os.killpg(run.pid, signal.SIGKILL)
    run.communicate(timeout=30)
    assert wait_until_gone(docker_client, run_id, 10) < 10


def test_kill_9_of_one_worker_lets_the_run_finish_and_leaves_no_container(
    run_suite: InnerRuns, pytester: pytest.Pytester
) -> None:
    pytester.makepyfile(
        f"""
        import os, signal, pytest

        @pytest.mark.container("{BUSYBOX}", command=["sleep", "300"])
        def test_worker_dies(container):
            os.kill(os.getpid(), signal.SIGKILL)

        @pytest.mark.container("{BUSYBOX}", command=["sleep", "300"], scope="run")
        @pytest.mark.parametrize("n", range(4))
        def test_others(container, n):
            assert container.exec(["true"]).exit_code == 0
        """
    )
    result = run_suite("-n", "2")
    result.assert_outcomes(passed=4, failed=1)
    result.stdout.fnmatch_lines(["*crashed while running*test_worker_dies*"])


def test_keep_failed_keeps_and_lists_the_containers_of_failed_tests(
    run_suite: InnerRuns, pytester: pytest.Pytester, docker_client: docker.DockerClient,
) -> None:  # fmt: skip
    pytester.makepyfile(
        f"""
        import pytest

        @pytest.mark.container("{BUSYBOX}", command=["sleep", "300"])
        def test_fails(container):
            assert False

        @pytest.mark.container("{BUSYBOX}", command=["sleep", "300"])
        def test_passes(container):
            pass
        """
    )
    result = run_suite("--container-keep=failed")
    result.assert_outcomes(passed=1, failed=1)
    kept = run_containers(docker_client, run_suite.run_ids[-1])
    assert len(kept) == 1
    result.stdout.fnmatch_lines(
        [
            "*containers: kept for debugging*",
            f"{kept[0]}  ({BUSYBOX})",
            f"remove them with: docker rm -f {kept[0]}",
        ]
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_without_an_engine_the_container_tests_error_with_one_clear_message(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"tcp://127.0.0.1:{free_port()}")
    pytester.makepyfile(
        f"""
        import pytest

        @pytest.mark.container("{BUSYBOX}")
        def test_needs_one(container):
            pass

        @pytest.mark.container("{BUSYBOX}")
        def test_needs_another(container):
            pass

        def test_needs_none():
            pass
        """
    )
    started = time.monotonic()
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=120)
    assert time.monotonic() - started < 30
    result.assert_outcomes(passed=1, errors=2)
    result.stdout.fnmatch_lines(
        ["*test_needs_one: no Docker engine answered; tried, in order: tcp://* (DOCKER_HOST): *"]
    )
    assert "Traceback" not in result.stdout.str()


def test_unavailable_skip_skips_the_container_tests_and_says_why(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    monkeypatch.setenv("PYTEST_CONTAINERS_UNAVAILABLE", "skip")
    pytester.makepyfile(
        f"""
        import pytest

        @pytest.mark.container("{BUSYBOX}")
        def test_needs_one(container):
            pass

        def test_needs_none():
            pass
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rs", timeout=120)
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(
        ["SKIPPED*no Docker engine answered; tried, in order: unix:///nonexistent*"]
    )


BAD_INPUTS = {
    "unknown image": (
        '@pytest.mark.container("pct-no-such-image:1")',
        [
            "*test_bad: cannot pull pct-no-such-image:1*does not have this image*"
            "Check the repository*"
        ],
    ),
    "unknown tag": (
        '@pytest.mark.container("busybox:no-such-tag")',
        ["*test_bad: cannot pull busybox:no-such-tag*does not have this image*"],
    ),
    "registry down": (
        '@pytest.mark.container("busybox:1.35")',
        ["*test_bad: cannot pull busybox:1.35*127.0.0.1:1*connection refused*"],
    ),
    "unauthorized": (
        f'@pytest.mark.container("{AUTH_REGISTRY}/library/busybox:1.35")',
        [
            f"*test_bad: cannot pull {AUTH_REGISTRY}/library/busybox:1.35 from {AUTH_REGISTRY}:"
            f" the registry refused access*no basic auth credentials*docker login {AUTH_REGISTRY}*"
        ],
    ),
    "port not published": (
        f'@pytest.mark.container("{BUSYBOX}", command=["nc", "-l", "-p", "8080"], ports=[8080])',
        ["*port 9999/tcp of container * is not published; published: 8080/tcp*"],
    ),
    "container exits at once": (
        f'@pytest.mark.container("{BUSYBOX}", command=["sh", "-c", "echo bye; exit 7"],'
        " ports=[80])",
        ["*test_bad: container * from busybox:1.35 exited with code 7*", "bye"],
    ),
    "wait timeout": (
        f'@pytest.mark.container("{BUSYBOX}", command=["sleep", "60"],'
        ' wait=wait.for_log("never", timeout=1))',
        ["*test_bad: container*was not ready within 1s waiting for_log('never')*timeout=*"],
    ),
    "healthy without healthcheck": (
        f'@pytest.mark.container("{BUSYBOX}", command=["sleep", "60"], wait=wait.for_healthy())',
        ["*test_bad: container*failed for_healthy(): neither the image nor the container*"],
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_a_bad_input_fails_its_test_quickly_with_a_clear_message(
    run_suite: InnerRuns, pytester: pytest.Pytester, case: str
) -> None:
    marker, expected = BAD_INPUTS[case]
    body = "container.port(9999)" if case == "port not published" else "pass"
    pytester.makepyfile(
        f"""
        import pytest
        from pytest_containers import wait

        {marker}
        def test_bad(container):
            {body}

        def test_other():
            pass
        """
    )
    extra = ["--container-mirror=127.0.0.1:1"] if case == "registry down" else []
    started = time.monotonic()
    result = run_suite(*extra)
    assert time.monotonic() - started < 30
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed") == 1
    assert outcomes.get("errors", 0) + outcomes.get("failed", 0) == 1
    result.stdout.fnmatch_lines(expected)
    assert "Traceback" not in result.stdout.str()
    assert "During handling" not in result.stdout.str()


def test_corrupted_state_and_lock_files_in_the_cache_dir_are_ignored(
    run_suite: InnerRuns, pytester: pytest.Pytester, tmp_path: Path,
    unique_image: Callable[[], str], docker_client: docker.DockerClient,
) -> None:  # fmt: skip
    from tests.testenv import REGISTRY, remove_image

    image = unique_image()  # cold, so that the run pulls it and records the pull
    pytester.makepyfile(
        f"""
        import pytest

        @pytest.mark.container("{image}", command=["sleep", "60"])
        def test_runs(container):
            pass
        """
    )
    run_suite().assert_outcomes(passed=1)
    states = list((tmp_path / "cache").rglob("*.json"))
    assert states
    for state in states:
        state.write_bytes(b'{"run_id": "trunc')
    # Lock files hold no data (the kernel's flock is the lock); garbage in them is harmless.
    for lock in (tmp_path / "cache").rglob("*.lock"):
        lock.write_bytes(b"\x00garbage")
    remove_image(docker_client, f"{REGISTRY}/library/{image}")
    run_suite().assert_outcomes(passed=1)


def test_an_unwritable_cache_dir_is_a_clear_error(
    run_suite: InnerRuns, pytester: pytest.Pytester, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    pytester.makepyfile(
        f"""
        import pytest

        @pytest.mark.container("{BUSYBOX}", command=["sleep", "60"])
        def test_runs(container):
            pass
        """
    )
    result = run_suite(f"--container-cache-dir={blocker / 'cache'}")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*test_runs:*a-file/cache*--container-cache-dir*"])


def test_prune_removes_what_dead_runs_left_and_nothing_else(
    pytester: pytest.Pytester, docker_client: docker.DockerClient, tmp_path: Path,
    run_suite: InnerRuns,
) -> None:  # fmt: skip
    from tests.testenv import REGISTRY

    image = docker_client.images.pull(f"{REGISTRY}/library/busybox", tag="1.35")
    dead, foreign = run_suite.new_run_id(), run_suite.new_run_id()
    for run_id, host in ((dead, socket.gethostname()), (foreign, "another-host")):
        # Made by a process of this boot and pid namespace (or, for "foreign", of
        # another host), whose pid is gone.
        identity = dataclasses.replace(local_identity(), host=host)
        docker_client.containers.create(
            str(image.id), ["sleep", "300"],
            labels={"pytest-containers.run": run_id, **identity.labels(),
                    "pytest-containers.worker": "main", "pytest-containers.pid": "999999999",
                    "pytest-containers.scope": "function"},
        )  # fmt: skip
    result = pytester.runpytest_subprocess(
        "--container-prune", f"--container-cache-dir={tmp_path / 'cache'}"
    )
    assert result.ret == 0
    # A concurrent run's own sweep at start may have been first to remove the dead run's
    # container (that is the product working); either way it is gone and the rest kept.
    output = result.stdout.str()
    removed = f"removed from dead run {dead} (pid 999999999 is gone (same boot and pid namespace))"
    assert removed in output or f"dead run {dead}" not in output
    result.stdout.fnmatch_lines(["*kept * run(s) that cannot be proven dead from here*"])
    assert run_containers(docker_client, dead) == []
    assert len(run_containers(docker_client, foreign)) == 1
