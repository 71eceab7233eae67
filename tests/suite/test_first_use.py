"""What a new user runs into in a first week (issue 16): waits that do not wait on what
they cannot check, ephemeral ports spelled 0, messages that give one right piece of advice.
Each runs as users run it, against the real engine."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import pytest

from tests.conftest import InnerRuns
from tests.testenv import BUSYBOX, REDIS, misbehaving_registry, remove_image

pytestmark = pytest.mark.docker


@pytest.fixture(autouse=True)
def nothing_left(run_suite: InnerRuns, docker_client: docker.DockerClient) -> Iterator[None]:
    yield
    assert run_suite.leftovers(docker_client) == []


def test_the_default_wait_skips_udp_ports_and_wait_none_does_not_wait(
    run_suite: InnerRuns, pytester: pytest.Pytester
) -> None:
    pytester.makepyfile(
        f"""
        import socket
        import pytest
        from pytest_containers import wait

        @pytest.mark.container("{REDIS}", ports=[6379, "53/udp"])
        def test_tcp_and_udp(container):
            with socket.create_connection(container.address(6379), timeout=5) as conn:
                conn.sendall(b"PING\\r\\n")
                assert conn.recv(64) == b"+PONG\\r\\n"
            assert container.port("53/udp") > 0

        @pytest.mark.container("{BUSYBOX}", ports=[8080], command=["sleep", "60"],
                               wait=wait.none())
        def test_no_wait(container):
            assert container.status == "running"
            assert container.port(8080) > 0
        """
    )
    started = time.monotonic()
    # Without the fix, the UDP port is waited on until this timeout and the test errors.
    result = run_suite("--container-timeout=8")
    result.assert_outcomes(passed=2)
    assert time.monotonic() - started < 30


def test_port_zero_asks_for_an_ephemeral_host_port(
    run_suite: InnerRuns, pytester: pytest.Pytester
) -> None:
    pytester.makepyfile(
        f"""
        import pytest
        from pytest_containers import wait

        @pytest.mark.container("{BUSYBOX}", ports={{8080: 0, "9090/tcp": ("127.0.0.1", 0)}},
                               command=["sleep", "60"], wait=wait.none())
        def test_ephemeral(container):
            assert container.port(8080) > 0
            assert container.port(9090) > 0
        """
    )
    run_suite().assert_outcomes(passed=1)


def test_the_container_fixture_with_two_markers_advises_the_containers_fixture(
    run_suite: InnerRuns, pytester: pytest.Pytester
) -> None:
    pytester.makepyfile(
        f"""
        import pytest

        @pytest.mark.container("{BUSYBOX}", name="one", command=["sleep", "60"])
        @pytest.mark.container("{BUSYBOX}", name="two", command=["sleep", "60"])
        def test_two(container):
            pass

        def test_none(container):
            pass
        """
    )
    result = run_suite()
    result.assert_outcomes(errors=2)
    output = result.stdout.str()
    assert "found 2 (one, two); use the `containers` fixture" in output
    assert "found 0 (none); add one, e.g. @pytest.mark.container(" in output
    two = next(line for line in result.stdout.lines if "found 2" in line)
    assert "add" not in two.split("found 2", 1)[1]


def test_the_unknown_keyword_error_lists_each_keyword_once(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        f"""
        import pytest

        @pytest.mark.container("{BUSYBOX}", prots=[80])
        def test_typo(container):
            pass
        """
    )
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(errors=1)
    line = next(line for line in result.stdout.lines if "valid ones are" in line)
    words = line.split("valid ones are: ", 1)[1].replace("; the plugin also takes", ",")
    listed = [word.strip() for word in words.split(",")]
    assert "labels" in listed
    assert len(listed) == len(set(listed)), listed


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


NO_ENGINE_SUITE = f"""
    import pytest

    @pytest.mark.container("{BUSYBOX}")
    def test_first(container):
        pass

    @pytest.mark.container("{BUSYBOX}")
    def test_second(container):
        pass

    def test_factory(container_factory):
        container_factory("{BUSYBOX}")
    """


def test_without_an_engine_each_error_names_its_own_test(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"tcp://127.0.0.1:{_closed_port()}")
    pytester.makepyfile(test_u2=NO_ENGINE_SUITE)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=120)
    result.assert_outcomes(errors=2, failed=1)
    for name in ("test_first", "test_second", "test_factory"):
        result.stdout.fnmatch_lines([f"*test_u2.py::{name}: no Docker engine answered*"])


def test_an_unavailable_skip_points_at_the_test_not_the_plugin(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"tcp://127.0.0.1:{_closed_port()}")
    pytester.makepyfile(test_u2=NO_ENGINE_SUITE)
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-rs", "--container-unavailable=skip", timeout=120
    )
    result.assert_outcomes(skipped=3)
    skips = [line for line in result.stdout.lines if line.startswith("SKIPPED")]
    assert len(skips) == 3, skips
    assert all("test_u2.py:" in line and "_suite/fixtures.py" not in line for line in skips), skips


def test_loadscope_keeps_a_class_scoped_container_to_one_worker_as_documented(
    run_suite: InnerRuns, pytester: pytest.Pytester, tmp_path: Path
) -> None:
    seen = tmp_path / "seen"
    seen.mkdir()
    pytester.makepyfile(
        f"""
        import os
        import pytest

        @pytest.mark.container("{BUSYBOX}", command=["sleep", "60"], scope="class")
        class TestShared:
            @pytest.mark.parametrize("n", range(6))
            def test_each(self, container, n):
                worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
                open(os.path.join({str(seen)!r}, f"{{n}}-{{worker}}"), "w").write(container.id)
        """
    )
    run_suite("-n", "2", "--dist=loadscope").assert_outcomes(passed=6)
    ids = {path.read_text() for path in seen.iterdir()}
    workers = {path.name.split("-", 1)[1] for path in seen.iterdir()}
    assert (len(ids), len(workers)) == (1, 1)


@pytest.mark.parametrize(
    ("args", "shown"),
    [
        ([], True),
        (["-v"], True),
        (["-n", "2"], True),
        (["-q"], False),
        (["--container-prefetch"], True),
    ],
    ids=["default", "verbose", "xdist", "quiet", "prefetched"],
)
def test_a_slow_pull_shows_its_progress_on_the_terminal(
    run_suite: InnerRuns,
    pytester: pytest.Pytester,
    unique_image: Callable[[], str],
    docker_client: docker.DockerClient,
    args: list[str],
    shown: bool,
) -> None:
    image = unique_image()
    pytester.makepyfile(
        f"""
        import pytest

        def test_before():
            pass

        @pytest.mark.container("{image}", command=["sleep", "30"])
        def test_pulls(container):
            pass

        def test_after():
            pass
        """
    )
    with misbehaving_registry("slow-blobs") as registry:
        mirror = f"--container-mirror={registry.address}"
        try:
            result = run_suite("--no-container-prefetch", *args, mirror=mirror)
        finally:
            # Pulled under the stand-in's address, which unique_image does not remove.
            remove_image(docker_client, f"{registry.address}/library/{image}")
    result.assert_outcomes(passed=3)
    lines = result.stdout.lines
    progress = [line for line in lines if "containers:" in line and image in line]
    if not shown:
        assert progress == []
        return
    # The pull is named as the engine pulls it: through the mirror.
    if "--container-prefetch" not in args:  # a prefetch may have pulled a while unwatched
        assert any(f"pulling {registry.address}/library/{image}" in line for line in progress)
    assert any(f"pulled {registry.address}/library/{image}" in line for line in progress), lines
    # Each line of ours is a line of its own, and pytest's lines go on unbroken.
    assert all(line.startswith("containers: ") for line in progress), progress
    assert "" not in lines[lines.index(progress[0]) - 1 : lines.index(progress[-1]) + 2]
    if "-v" in args:  # the test's line is written again once, with its result
        assert sum("::test_pulls" in line for line in lines) == 2, lines
