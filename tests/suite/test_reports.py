"""What a run reports about the containers its tests used: each failed test's container
logs (bounded, and only the test's part of a shared container's log) and the JUnit
properties of every test that used a container or an image, whatever the fixture's scope."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.conftest import SERIAL_AND_XDIST, InnerRuns
from tests.testenv import BUSYBOX

pytestmark = pytest.mark.docker


@pytest.fixture(autouse=True)
def nothing_left(run_suite: InnerRuns, docker_client: docker.DockerClient) -> Iterator[None]:
    yield
    assert run_suite.leftovers(docker_client) == []


def _section(lines: list[str], title: str) -> list[str]:
    """The lines of the report section whose header contains ``title``."""
    start = next(i for i, line in enumerate(lines) if title in line and line.startswith("-"))
    end = next(
        (i for i in range(start + 1, len(lines)) if lines[i].startswith(("---", "___", "==="))),
        len(lines),
    )
    return lines[start + 1 : end]


@SERIAL_AND_XDIST
def test_a_failed_test_shows_the_logs_of_a_module_scoped_container_written_during_it(
    run_suite: InnerRuns, pytester: pytest.Pytester, workers: list[str]
) -> None:
    pytester.makepyfile(
        f"""
        from pytest_containers import container_fixture, wait

        shared = container_fixture(
            "{BUSYBOX}",
            name="shared",
            command=["sh", "-c", "echo written-before-the-test; sleep 60"],
            wait=wait.for_log("written-before"),
            scope="module",
        )

        def test_starts_it(shared):
            pass

        def test_fails(shared):
            shared.exec(["sh", "-c", "echo written-during-the-test > /proc/1/fd/1"])
            assert False
        """
    )
    # loadfile: both tests on one worker, so that the second one shares the container.
    result = run_suite(*workers, *(["--dist=loadfile"] if workers else []))
    result.assert_outcomes(passed=1, failed=1)
    section = _section(result.stdout.lines, "container logs: ")
    header = next(line for line in result.stdout.lines if "container logs: " in line)
    assert "written during this test" in header
    assert "written-during-the-test" in section
    assert "written-before-the-test" not in section


def test_a_function_scoped_container_shows_its_whole_short_log_without_a_note(
    run_suite: InnerRuns, pytester: pytest.Pytester
) -> None:
    pytester.makepyfile(
        f"""
        import pytest
        from pytest_containers import wait

        @pytest.mark.container(
            "{BUSYBOX}", command=["sh", "-c", "echo first-line; sleep 60"],
            wait=wait.for_log("first-line"),
        )
        def test_fails(container):
            assert False
        """
    )
    result = run_suite()
    result.assert_outcomes(failed=1)
    header = next(line for line in result.stdout.lines if "container logs: " in line)
    assert "written during this test" not in header
    assert _section(result.stdout.lines, "container logs: ")[:1] == ["first-line"]
    result.stdout.no_fnmatch_line("*earlier output left out*")


def test_a_container_with_200_mb_of_logs_reports_its_last_lines_in_under_64_kib(
    run_suite: InnerRuns, pytester: pytest.Pytester, tmp_path: Path
) -> None:
    rss = tmp_path / "rss"
    pytester.makeconftest(
        f"""
        import resource

        def pytest_unconfigure(config):
            kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            open({str(rss)!r}, "w").write(str(kib))
        """
    )
    pytester.makepyfile(
        f"""
        import pytest

        @pytest.mark.container("{BUSYBOX}", name="chatty", command=["sleep", "120"])
        def test_fails(container):
            # 200 MB on the container's stdout, in lines of 1 MB, then 300 short ones.
            script = (
                "for i in $(seq 200); do head -c 1000000 /dev/zero | tr '\\\\0' x; echo; done; "
                "for i in $(seq 300); do echo line-$i; done"
            )
            result = container.exec(["sh", "-c", "{{ " + script + "; }} > /proc/1/fd/1"])
            assert result.exit_code == 0 and not result.stdout, result.stderr
            assert False
        """
    )
    result = run_suite("-p", "no:xdist")
    result.assert_outcomes(failed=1)
    section = _section(result.stdout.lines, "container logs: ")
    text = "\n".join(section)
    assert len(text.encode()) < 64 * 1024
    assert section[0].startswith("[earlier output left out: the last 200 lines")
    assert "docker logs pytest-containers-" in section[0]
    assert section[1:] == [f"line-{i}" for i in range(101, 301)]
    assert int(rss.read_text()) < 150 * 1024


def test_log_lines_option_sets_how_many_lines_and_zero_shows_none(
    run_suite: InnerRuns, pytester: pytest.Pytester
) -> None:
    pytester.makepyfile(
        f"""
        import pytest
        from pytest_containers import wait

        @pytest.mark.container(
            "{BUSYBOX}", command=["sh", "-c", "seq 50; echo done; sleep 60"],
            wait=wait.for_log("done"),
        )
        def test_fails(container):
            assert False
        """
    )
    result = run_suite("--container-log-lines=3")
    result.assert_outcomes(failed=1)
    assert _section(result.stdout.lines, "container logs: ")[1:] == ["49", "50", "done"]
    result = run_suite("--container-log-lines=0")
    result.assert_outcomes(failed=1)
    result.stdout.no_fnmatch_line("*container logs: *")


@SERIAL_AND_XDIST
def test_junit_records_the_images_of_broader_scoped_fixtures_in_every_test_that_used_them(
    run_suite: InnerRuns, pytester: pytest.Pytester, tmp_path: Path, workers: list[str]
) -> None:
    pytester.makepyfile(
        f"""
        from pytest_containers import container_fixture, image_fixture

        per_module = container_fixture("{BUSYBOX}", command=["sleep", "60"], scope="module")
        per_run = container_fixture("busybox:latest", command=["sleep", "60"], scope="run")
        image = image_fixture("{BUSYBOX}")

        def test_module(per_module):
            pass

        def test_module_again(per_module):
            pass

        def test_run(per_run):
            pass

        def test_image(image):
            pass

        def test_nothing():
            pass
        """
    )
    report = tmp_path / "junit.xml"
    run_suite(*workers, f"--junitxml={report}").assert_outcomes(passed=5)
    recorded = {
        case.get("name"): [p.get("name") for p in case.iter("property")]
        for case in ET.parse(report).getroot().iter("testcase")
    }
    assert recorded == {
        "test_module": [f"container-image {BUSYBOX}"],
        "test_module_again": [f"container-image {BUSYBOX}"],
        "test_run": ["container-image busybox:latest"],
        "test_image": [f"container-image {BUSYBOX}"],
        "test_nothing": [],
    }


def test_the_images_summary_has_no_empty_line_after_its_header(
    run_suite: InnerRuns, pytester: pytest.Pytester
) -> None:
    pytester.makepyfile(
        f"""
        import pytest

        @pytest.mark.container("{BUSYBOX}", command=["sleep", "60"])
        def test_one(container):
            pass
        """
    )
    result = run_suite("-p", "no:xdist")
    result.assert_outcomes(passed=1)
    lines = result.stdout.lines
    header = next(i for i, line in enumerate(lines) if "containers: images" in line)
    assert lines[header + 1].startswith(f"{BUSYBOX}  sha256:")
