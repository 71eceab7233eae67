"""Pinned digests, image archives and the report of what ran, as users run them."""

from __future__ import annotations

import socket
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import docker
import pytest

from tests.conftest import InnerRuns
from tests.testenv import BUSYBOX, MIRROR_OPTION, REGISTRY, push_unique_image, remove_image

pytestmark = pytest.mark.docker


def reads_marker(image: str, expected: str) -> str:
    return f"""
import pytest

@pytest.mark.container("{image}", command=["sleep", "30"])
def test_marker(container, tmp_path):
    # Read from the filesystem: exec output can be lost by the engine (moby#27289).
    container.copy_from("/etc/image-id", tmp_path / "image-id")
    assert (tmp_path / "image-id").read_text() == "{expected}"
"""


def test_a_pin_keeps_the_old_digest_until_update_moves_it(
    run_suite: InnerRuns, pytester: pytest.Pytester, docker_client: docker.DockerClient,
    unique_image: Callable[[], str],
) -> None:  # fmt: skip
    image = unique_image()
    name = image.split(":")[0]
    pytester.makepyfile(reads_marker(image, name))
    run_suite("--container-lock=update").assert_outcomes(passed=1)
    lockfile = pytester.path / "containers.lock"
    assert f"{image}  sha256:" in lockfile.read_text()

    # The tag now points at other content; the pinned run must not notice.
    push_unique_image(docker_client, name=name, marker="moved")
    remove_image(docker_client, f"{REGISTRY}/library/{image}")
    result = run_suite()
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"{image}  sha256:*pinned"])

    pytester.makepyfile(reads_marker(image, "moved"))
    run_suite("--container-lock=update", "--container-pull=always").assert_outcomes(passed=1)
    run_suite().assert_outcomes(passed=1)


def test_strict_lock_fails_a_test_whose_image_is_not_pinned(
    run_suite: InnerRuns, pytester: pytest.Pytester
) -> None:
    pytester.makepyfile(
        f"""
        import pytest

        @pytest.mark.container("{BUSYBOX}", command=["sleep", "30"])
        def test_unpinned(container):
            pass

        def test_plain():
            pass
        """
    )
    result = run_suite("--container-lock=strict")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines([f"*test_unpinned*{BUSYBOX}*--container-lock=update*"])


def test_the_default_mode_warns_about_images_the_lock_file_does_not_pin(
    run_suite: InnerRuns, pytester: pytest.Pytester
) -> None:
    pytester.makepyfile(
        f"""
        import pytest

        @pytest.mark.container("{BUSYBOX}", command=["sleep", "30"])
        def test_unpinned(container):
            pass
        """
    )
    (pytester.path / "containers.lock").write_text("# no pins yet\n")
    result = run_suite()
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"not pinned in *containers.lock: {BUSYBOX}; pin them with*"])


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_with_the_archive_filled_a_cold_engine_runs_without_a_registry(
    run_suite: InnerRuns, pytester: pytest.Pytester, docker_client: docker.DockerClient,
    unique_image: Callable[[], str], tmp_path: Path,
) -> None:  # fmt: skip
    image = unique_image()
    archive = tmp_path / "archive"
    pytester.makepyfile(reads_marker(image, image.split(":")[0]))
    run_suite(f"--container-archive={archive}").assert_outcomes(passed=1)
    assert list(archive.glob("*.tar"))

    remove_image(docker_client, f"{REGISTRY}/library/{image}")
    nowhere = f"--container-mirror=127.0.0.1:{closed_port()}"
    result = run_suite(f"--container-archive={archive}", "-n", "2", mirror=nowhere)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"{image}  sha256:*loaded*"])
    remove_image(docker_client, f"127.0.0.1:{nowhere.rsplit(':', 1)[1]}/library/{image}")


def test_the_summary_shows_each_image_once_across_workers_and_junit_records_digests(
    run_suite: InnerRuns, pytester: pytest.Pytester, tmp_path: Path
) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.container("busybox:1.35", "busybox:latest", command=["sleep", "30"])
        @pytest.mark.parametrize("n", range(3))
        def test_each(container, n):
            pass
        """
    )
    report = tmp_path / "junit.xml"
    result = run_suite("-n", "2", f"--junitxml={report}")
    result.assert_outcomes(passed=6)
    lines = result.stdout.lines
    assert sum(line.startswith("busybox:1.35 ") for line in lines) == 1
    assert sum(line.startswith("busybox:latest ") for line in lines) == 1
    cases = ET.parse(report).getroot().iter("testcase")
    recorded = {
        case.get("name"): [(p.get("name"), p.get("value")) for p in case.iter("property")]
        for case in cases
    }
    assert len(recorded) == 6
    for name, properties in recorded.items():
        image = "busybox:1.35" if "busybox:1.35" in str(name) else "busybox:latest"
        assert properties
        assert properties[0][0] == f"container-image {image}"
        assert str(properties[0][1]).startswith("sha256:")


def test_the_header_shows_the_engine_pull_policy_mirror_and_lock_file(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile("def test_nothing(): pass")
    (pytester.path / "containers.lock").write_text("")
    result = pytester.runpytest_subprocess(MIRROR_OPTION, "--container-pull=always")
    result.stdout.fnmatch_lines(
        [
            f"containers: Docker * at *, pull always, mirror {REGISTRY},"
            " lock file *containers.lock (0 pins, auto)"
        ]
    )


def _suite(*, second: str | None, skip_second: bool = False) -> str:
    text = f"""
import pytest

@pytest.mark.container("{BUSYBOX}", command=["sleep", "30"])
def test_one(container):
    pass
"""
    if second is not None:
        skip = "@pytest.mark.skip('not here')\n" if skip_second else ""
        text += f"""
{skip}@pytest.mark.container("{second}", command=["sleep", "30"])
def test_two(container):
    pass
"""
    return text


def test_update_drops_pins_of_unused_images_only_when_the_whole_suite_ran(
    run_suite: InnerRuns, pytester: pytest.Pytester
) -> None:
    lockfile = pytester.path / "containers.lock"
    pytester.makepyfile(_suite(second="busybox:latest"))
    run_suite("--container-lock=update", "-n", "2").assert_outcomes(passed=2)
    assert "busybox:latest  sha256:" in lockfile.read_text()

    # A selection (-k) keeps the pin it did not use, and says so.
    result = run_suite("--container-lock=update", "-k", "one")
    result.assert_outcomes(passed=1, deselected=1)
    result.stdout.fnmatch_lines(["*containers.lock: updated, 2 pins; kept 1 pin(s)*busybox:latest"])
    assert "busybox:latest  sha256:" in lockfile.read_text()

    # A test that is skipped still uses its image: its pin stays.
    pytester.makepyfile(_suite(second="busybox:latest", skip_second=True))
    run_suite("--container-lock=update").assert_outcomes(passed=1, skipped=1)
    assert "busybox:latest  sha256:" in lockfile.read_text()

    # The whole suite, which no longer uses the image, drops its pin (also under xdist).
    pytester.makepyfile(_suite(second=None))
    result = run_suite("--container-lock=update", "-n", "2")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        ["*containers.lock: updated, 1 pins; dropped 1 pin(s) of images the suite no longer"
         " uses: busybox:latest"]
    )  # fmt: skip
    assert "busybox:latest" not in lockfile.read_text()
    assert f"{BUSYBOX}  sha256:" in lockfile.read_text()
