"""The plugin against the real engine and registry, run as users run it (pytester, in a
subprocess, with and without xdist), counting pulls in the registry's access log and
checking that no container is left."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import pytest

from tests.conftest import SERIAL_AND_XDIST, InnerRuns
from tests.testenv import BUSYBOX, MIRROR_OPTION, REDIS, RegistryLog

pytestmark = pytest.mark.docker


@pytest.fixture(autouse=True)
def nothing_left(run_suite: InnerRuns, docker_client: docker.DockerClient) -> Iterator[None]:
    """Every inner run of this module must leave no container behind."""
    yield
    assert run_suite.leftovers(docker_client) == []


@SERIAL_AND_XDIST
def test_a_marked_test_gets_a_ready_redis(
    run_suite: InnerRuns, pytester: pytest.Pytester, workers: list[str]
) -> None:
    pytester.makepyfile(
        f"""
        import socket
        import pytest
        from pytest_containers import wait

        @pytest.mark.container("{REDIS}", ports=[6379],
                               wait=wait.for_log("Ready to accept connections"))
        def test_ping(container):
            with socket.create_connection(container.address(6379), timeout=5) as conn:
                conn.sendall(b"PING\\r\\n")
                assert conn.recv(64) == b"+PONG\\r\\n"
            assert container.image.ref == "{REDIS}"
            assert container.image.resolved_ref.startswith("127.0.0.1:5555/library/redis")

        def test_without_container():
            pass
        """
    )
    result = run_suite(*workers)
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*containers: images*", f"{REDIS}*"])


def test_a_cold_image_is_pulled_once_by_four_workers(
    run_suite: InnerRuns,
    pytester: pytest.Pytester,
    unique_image: Callable[[], str],
    registry_log: RegistryLog,
) -> None:
    first, second = unique_image(), unique_image()
    pytester.makepyfile(
        f"""
        import pytest

        @pytest.mark.parametrize("n", range(8))
        @pytest.mark.container("{first}", command=["sleep", "30"])
        def test_first(container, n, tmp_path):
            container.copy_from("/etc/image-id", tmp_path / "id")
            assert (tmp_path / "id").read_text() == "{first.split(":")[0]}"

        @pytest.mark.parametrize("n", range(8))
        @pytest.mark.container("{second}", command=["sleep", "30"])
        def test_second(container, n, tmp_path):
            container.copy_from("/etc/image-id", tmp_path / "id")
            assert (tmp_path / "id").read_text() == "{second.split(":")[0]}"
        """
    )
    result = run_suite("-n", "4")
    result.assert_outcomes(passed=16)
    assert registry_log.manifest_requests(first) == 1
    assert registry_log.manifest_requests(second) == 1


def test_pull_always_pulls_once_per_run_not_per_worker(
    run_suite: InnerRuns,
    pytester: pytest.Pytester,
    unique_image: Callable[[], str],
    registry_log: RegistryLog,
) -> None:
    image = unique_image()
    pytester.makepyfile(
        f"""
        import pytest

        @pytest.mark.parametrize("n", range(8))
        def test_image(image, n):
            assert image.digest.startswith("sha256:")

        from pytest_containers import image_fixture
        image = image_fixture("{image}")
        """
    )
    run_suite("-n", "4", "--container-pull=always").assert_outcomes(passed=8)
    assert registry_log.manifest_requests(image) == 1
    run_suite("-n", "4", "--container-pull=always").assert_outcomes(passed=8)
    assert registry_log.manifest_requests(image) == 2


def test_two_concurrent_runs_pull_a_cold_image_once_in_total(
    pytester: pytest.Pytester,
    unique_image: Callable[[], str],
    registry_log: RegistryLog,
    run_suite: InnerRuns,
    docker_client: docker.DockerClient,
) -> None:
    image = unique_image()
    pytester.makepyfile(
        f"""
        import pytest

        @pytest.mark.parametrize("n", range(4))
        @pytest.mark.container("{image}", command=["sleep", "30"])
        def test_image(container, n):
            pass
        """
    )
    run_ids = [run_suite.new_run_id(), run_suite.new_run_id()]
    runs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pytest",
                "-p",
                "no:cacheprovider",
                "-n",
                "2",
                MIRROR_OPTION,
                f"--container-cache-dir={run_suite.cache_dir}",
                f"--testrunuid={run_id}",
            ],
            cwd=pytester.path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for run_id in run_ids
    ]
    outputs = [run.communicate(timeout=300)[0] for run in runs]
    for run, output in zip(runs, outputs, strict=True):
        assert run.returncode == 0, output
        assert "4 passed" in output
    assert registry_log.manifest_requests(image) == 1


def test_a_container_that_exits_at_once_errors_its_test_quickly_and_others_go_on(
    run_suite: InnerRuns, pytester: pytest.Pytester
) -> None:
    pytester.makepyfile(
        f"""
        import pytest

        @pytest.mark.container("{BUSYBOX}", command=["sh", "-c", "echo boom >&2; exit 3"],
                               ports=[80])
        def test_broken(container):
            pass

        def test_fine():
            pass
        """
    )
    result = run_suite()
    result.assert_outcomes(passed=1, errors=1)
    output = result.stdout.str()
    assert "test_broken" in output
    assert "exit code 3" in output or "exited with 3" in output or "code 3" in output
    assert "boom" in output
    assert "Traceback" not in output
    assert float(result.parseoutcomes().get("seconds", 0) or 0) < 30


def test_a_failed_test_reports_its_containers_logs(
    run_suite: InnerRuns, pytester: pytest.Pytester
) -> None:
    pytester.makepyfile(
        f"""
        import pytest
        from pytest_containers import wait

        @pytest.mark.container(
            "{BUSYBOX}",
            command=["sh", "-c", "echo service-said-hello; sleep 60"],
            wait=wait.for_log("hello"),
        )
        def test_fails(container):
            assert False
        """
    )
    result = run_suite()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*container logs: *", "service-said-hello"])


def test_the_same_declaration_in_module_scope_is_one_container(
    run_suite: InnerRuns, pytester: pytest.Pytester
) -> None:
    pytester.makepyfile(
        f"""
        import pytest

        pytestmark = pytest.mark.container("{BUSYBOX}", command=["sleep", "60"], scope="module")
        seen = set()

        @pytest.mark.parametrize("n", range(3))
        def test_shared(container, n):
            seen.add(container.id)
            assert len(seen) == 1
        """
    )
    run_suite().assert_outcomes(passed=3)


def test_a_run_scoped_container_is_shared_by_every_worker(
    run_suite: InnerRuns, pytester: pytest.Pytester, tmp_path: Path
) -> None:
    ids = tmp_path / "ids"
    ids.mkdir()
    pytester.makepyfile(
        f"""
        import os
        import pytest

        @pytest.mark.parametrize("n", range(6))
        @pytest.mark.container("{BUSYBOX}", command=["sleep", "120"], scope="run")
        def test_shared(container, n):
            with open(os.path.join({str(ids)!r}, str(n)), "w") as f:
                f.write(container.id)
        """
    )
    run_suite("-n", "2").assert_outcomes(passed=6)
    assert len({path.read_text() for path in ids.iterdir()}) == 1


def test_container_factory_starts_containers_inside_a_test(
    run_suite: InnerRuns, pytester: pytest.Pytester
) -> None:
    pytester.makepyfile(
        f"""
        from pytest_containers import ContainerStartupError
        import pytest

        def test_factory(container_factory):
            one = container_factory("{BUSYBOX}", command=["sleep", "60"])
            two = container_factory("{BUSYBOX}", command=["sleep", "60"])
            assert one.id != two.id
            with pytest.raises(ContainerStartupError):
                container_factory("{BUSYBOX}", command=["false"], ports=[80])
        """
    )
    run_suite().assert_outcomes(passed=1)


@pytest.mark.parametrize("declaration", ["marker", "container_fixture", "image_fixture"])
def test_prefetch_pulls_declared_images_before_any_test_asks(
    run_suite: InnerRuns, pytester: pytest.Pytester, unique_image: Callable[[], str],
    declaration: str,
) -> None:  # fmt: skip
    image = unique_image()
    uses = {
        "marker": f'@pytest.mark.container("{image}", command=["sleep", "30"])\n'
        "def test_uses_it(container):\n    pass",
        "container_fixture": f'it = container_fixture("{image}", command=["sleep", "30"])\n'
        "def test_uses_it(it):\n    pass",
        "image_fixture": f'it = image_fixture("{image}")\ndef test_uses_it(it):\n    pass',
    }[declaration]
    pytester.makepyfile(
        "import time\n"
        "import docker\n"
        "import pytest\n"
        "from pytest_containers import container_fixture, image_fixture\n"
        "\n"
        "def test_first_the_image_arrives_on_its_own():\n"
        "    client = docker.from_env()\n"
        "    deadline = time.monotonic() + 20\n"
        f"    while not client.images.list(name='127.0.0.1:5555/library/{image.split(':')[0]}'):\n"
        "        assert time.monotonic() < deadline, 'not prefetched'\n"
        "        time.sleep(0.05)\n"
        "\n" + uses + "\n"
    )
    run_suite().assert_outcomes(passed=2)


def test_no_prefetch_pulls_nothing_until_a_test_asks(
    run_suite: InnerRuns, pytester: pytest.Pytester, unique_image: Callable[[], str],
    registry_log: RegistryLog,
) -> None:  # fmt: skip
    image = unique_image()
    pytester.makepyfile(
        f"""
        import pytest

        def test_nothing_pulled_yet():
            pass

        @pytest.mark.container("{image}", command=["sleep", "30"])
        def test_uses_it(container):
            pass
        """
    )
    result = run_suite("--no-container-prefetch", "-k", "pulled_yet")
    result.assert_outcomes(passed=1, deselected=1)
    assert registry_log.manifest_requests(image) == 0


def test_the_plugin_works_with_xdist_disabled(
    pytester: pytest.Pytester, run_suite: InnerRuns
) -> None:
    pytester.makepyfile(
        f"""
        import pytest

        @pytest.mark.container("{BUSYBOX}", command=["sleep", "30"], scope="run")
        def test_run_scoped(container):
            assert container.exec(["echo", "hi"]).stdout == "hi\\n"
        """
    )
    run_suite("-p", "no:xdist").assert_outcomes(passed=1)
