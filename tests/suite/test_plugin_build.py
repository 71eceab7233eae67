"""build= as users write it: one build per content across xdist workers and runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import InnerRuns

pytestmark = pytest.mark.docker


def sources(directory: Path) -> list[str]:
    found = [path.read_text() for path in directory.iterdir()]
    for path in directory.iterdir():
        path.unlink()
    return sorted(found)


@pytest.mark.usefixtures("builds_cleaned")
def test_one_build_per_content_across_four_workers_and_none_while_unchanged(
    pytester: pytest.Pytester, tmp_path: Path, run_suite: InnerRuns
) -> None:
    app = pytester.mkdir("app")
    (app / "Dockerfile").write_text(
        "FROM busybox:1.35\n"
        "COPY app.txt /app.txt\n"
        'CMD ["sh", "-c", "cat /app.txt; exec sleep 300"]\n'
    )
    (app / "app.txt").write_text("version 1\n")
    seen = tmp_path / "seen"
    seen.mkdir()
    pytester.makepyfile(
        f"""
        import os
        import pytest
        from pytest_containers import image_fixture, wait

        app_image = image_fixture(build="app")

        @pytest.mark.parametrize("n", range(8))
        @pytest.mark.container(build="app", wait=wait.for_log("version"))
        def test_app(container, app_image, n):
            assert container.image.id == app_image.id
            name = os.path.join({str(seen)!r}, os.environ.get("PYTEST_XDIST_WORKER", "main"))
            with open(name, "w") as out:
                out.write(app_image.source)
        """
    )
    run_suite("-n", "4").assert_outcomes(passed=8)
    first = sources(seen)
    assert first.count("built") == 1
    assert set(first) <= {"built", "present"}

    run_suite("-n", "4").assert_outcomes(passed=8)
    assert set(sources(seen)) == {"present"}

    (app / "app.txt").write_text("version 2\n")
    result = run_suite("-n", "4")
    result.assert_outcomes(passed=8)
    assert sources(seen).count("built") == 1
    result.stdout.fnmatch_lines(["build:app *built*"])


@pytest.mark.usefixtures("builds_cleaned")
def test_a_failing_build_errors_its_tests_with_the_step_and_the_log(
    pytester: pytest.Pytester, run_suite: InnerRuns
) -> None:
    app = pytester.mkdir("broken")
    (app / "Dockerfile").write_text("FROM busybox:1.35\nRUN echo about to fail && false\n")
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.container(build="broken")
        def test_app(container):
            pass

        def test_other():
            pass
        """
    )
    result = run_suite()
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*test_app*Step 2/* : RUN echo about to fail && false*"])
    assert "about to fail" in result.stdout.str()


def test_a_missing_context_is_a_collection_error(
    pytester: pytest.Pytester, run_suite: InnerRuns
) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.container(build="nowhere")
        def test_app(container):
            pass
        """
    )
    result = run_suite()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*test_app*nowhere*does not exist*"])


@pytest.mark.usefixtures("builds_cleaned")
def test_prune_says_which_builds_it_kept_and_why_and_all_removes_them(
    pytester: pytest.Pytester, tmp_path: Path, run_suite: InnerRuns
) -> None:
    app = pytester.mkdir("app")
    (app / "Dockerfile").write_text("FROM busybox:1.35\nCOPY app.txt /app.txt\n")
    pytester.makepyfile(
        """
        from pytest_containers import image_fixture

        app_image = image_fixture(build="app")

        def test_app(app_image):
            pass
        """
    )
    for version in ("1", "2"):
        (app / "app.txt").write_text(version)
        run_suite().assert_outcomes(passed=1)
    cache = f"--container-cache-dir={tmp_path / 'cache'}"

    result = pytester.runpytest_subprocess("--container-prune", cache)
    assert result.ret == 0
    result.stdout.fnmatch_lines(
        [
            f"pytest-containers: removed 0 built image(s) of {pytester.path}",
            "pytest-containers: kept 2 built image(s) (the newest build of its context: 1;"
            " built less than 24 h ago: 1); --container-prune=all removes them too",
        ]
    )

    result = pytester.runpytest_subprocess("--container-prune=all", cache)
    assert result.ret == 0
    result.stdout.fnmatch_lines([f"pytest-containers: removed 2 built image(s) of {pytester.path}"])
    result.stdout.no_fnmatch_line("*kept*built image*")
