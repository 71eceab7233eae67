"""The plugin as users run it: pytester suites in a subprocess, with and without xdist."""

from __future__ import annotations

import pytest

from tests.testenv import BUSYBOX, MIRROR_OPTION


def test_help_lists_the_options_in_a_containers_group(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess("--help")
    result.stdout.fnmatch_lines(["*container images and containers (pytest-containers)*"])
    for flag in (
        "--container-pull=POLICY",
        "--container-mirror=MIRROR",
        "--container-cache-dir=DIR",
        "--container-prefetch",
        "--no-container-prefetch",
        "--container-timeout=SECONDS",
        "--container-stall-timeout=SECONDS",
    ):
        assert flag in result.stdout.str()


def test_the_marker_is_registered_so_strict_markers_accepts_it(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.container("redis:7")
        def test_marked():
            pass
        """
    )
    result = pytester.runpytest_subprocess("--strict-markers", "--collect-only", "-q")
    result.assert_outcomes()
    assert result.ret == 0
    result.stdout.fnmatch_lines(["*test_marked*"])
    markers = pytester.runpytest_subprocess("--markers")
    markers.stdout.fnmatch_lines(["@pytest.mark.container(image, *more_images*"])


@pytest.mark.parametrize(
    ("option", "valid"),
    [
        ("--container-pull=sometimes", "'missing', 'always', 'never'"),
        ("--container-timeout=soon", "positive number of seconds"),
        ("--container-mirror=http://mirror:5000", "mirror"),
    ],
)
def test_an_invalid_option_value_is_a_usage_error_naming_the_valid_ones(
    pytester: pytest.Pytester, option: str, valid: str
) -> None:
    pytester.makepyfile("def test_nothing(): pass")
    result = pytester.runpytest_subprocess(option)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert valid in result.stderr.str()
    assert "Traceback" not in result.stderr.str()


def test_an_invalid_environment_value_is_a_usage_error_too(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTEST_CONTAINERS_PULL", "often")
    pytester.makepyfile("def test_nothing(): pass")
    result = pytester.runpytest_subprocess()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert (
        "environment variable PYTEST_CONTAINERS_PULL: invalid value 'often'" in result.stderr.str()
    )


def test_an_invalid_ini_value_names_the_ini_key(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\ncontainer_log_lines = many\n")
    pytester.makepyfile("def test_nothing(): pass")
    result = pytester.runpytest_subprocess()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "ini option container_log_lines: expected a whole number" in result.stderr.str()


def test_the_header_shows_the_pull_policy_and_the_mirror(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_nothing(): pass")
    pytester.makeini("[pytest]\ncontainer_pull = always\n")
    result = pytester.runpytest_subprocess("--container-mirror=127.0.0.1:5555")
    result.stdout.fnmatch_lines(["containers: * pull always, mirror 127.0.0.1:5555"])


def test_a_suite_without_containers_runs_without_docker(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No engine where DOCKER_HOST points: nothing asks for one, so nothing fails.
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    pytester.makepyfile("def test_one(): pass\ndef test_two(): pass")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    result.stdout.no_fnmatch_line("*containers: images*")


def test_an_unknown_marker_keyword_is_a_collection_error_listing_the_valid_ones(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        f"""
        import pytest

        @pytest.mark.container("{BUSYBOX}", prots=[80])
        def test_typo(container):
            pass

        def test_other():
            pass
        """
    )
    result = pytester.runpytest_subprocess(MIRROR_OPTION)
    result.assert_outcomes(errors=1)
    output = result.stdout.str()
    assert "test_typo" in output
    assert "prots" in output
    assert "ports" in output  # one of the valid keywords it lists
    assert "Traceback" not in output


def test_an_invalid_reference_in_a_marker_fails_collection_before_any_docker_call(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.container("Redis:7")
        def test_bad_reference(container):
            pass
        """
    )
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*test_bad_reference*invalid image reference 'Redis:7'*"])
    result.stdout.no_fnmatch_line("*Docker engine*")


def test_several_images_parametrize_the_test_with_the_references_as_ids(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.container("redis:6", "redis:7")
        def test_ping(container):
            pass
        """
    )
    result = pytester.runpytest_subprocess("--collect-only", "-q")
    result.stdout.fnmatch_lines(["*test_ping[[]redis:6[]]", "*test_ping[[]redis:7[]]"])
