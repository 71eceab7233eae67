"""Declaring services: ``service()`` and the ``container_services`` ini key, validated
before any Docker call (pure logic; the engine side is in test_services_docker.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_containers import ContainerError, DeclarationError, service, wait
from pytest_containers._manager.services import check_unique, parse_ini, parse_ini_line
from tests.conftest import SERIAL_AND_XDIST


def test_a_service_keeps_what_it_declares() -> None:
    declared = service(
        "redis:7",
        name="redis",
        per="run",
        ports=[6379],
        env={"A": "1"},
        expose={"REDIS_URL": "redis://{host}:{port}"},
        options={"redis_url": "redis://{host}:{port[6379]}"},
    )
    assert (declared.name, declared.display, declared.per) == ("redis", "redis:7", "run")
    assert declared.declaration.scope == "run"
    assert declared.expose == (("REDIS_URL", "redis://{host}:{port}"),)
    assert declared.options == (("redis_url", "redis://{host}:{port[6379]}"),)
    assert declared.declaration.build_spec(Path.cwd()) is None
    spec = declared.spec
    assert spec.ports == ("6379/tcp",)
    assert spec.name == "redis"
    assert spec.env == (("A", "1"),)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: service("redis:7", name=""), "name= must be a non-empty string"),
        (lambda: service(name="redis"), "service needs an image"),
        (lambda: service("redis:7", name="redis", build="ctx"), "an image or build=, not both"),
        (lambda: service("redis:7", name="redis", per="test"), "invalid per='test'"),
        (lambda: service("redis:7", name="redis", scope="session"), "not scope="),
        (lambda: service("redis:7", name="redis", target="x"), "only go with build="),
        (
            lambda: service("redis:7", name="redis", prots=[1]),
            "unknown container option(s) 'prots'",
        ),
        (
            lambda: service("redis:7", name="redis", expose={"URL": "{host}:{port}"}),
            "uses {port} but the service publishes no port",
        ),
        (
            lambda: service("redis:7", name="redis", ports=[6379], expose={"URL": "{port[80]}"}),
            "publishes 6379/tcp only",
        ),
        (
            lambda: service("redis:7", name="redis", options={"url": "{hots}"}),
            "uses {hots}; the fields are {host}, {port}, {name}, {ip}",
        ),
        (lambda: service("redis:7", name="redis", expose={"URL": "{host"}), "not a valid template"),
        (lambda: service("redis:7", name="redis", expose=["URL"]), "expose= takes a dict"),  # type: ignore[arg-type]
        (
            lambda: service("redis:7", name="redis", per="run", reset=["redis-cli", "FLUSHALL"]),
            "reset= goes with per='worker' only",
        ),
        (lambda: service("redis:7", name="redis", reset="FLUSHALL"), "reset= takes a command"),
    ],
)
def test_a_bad_declaration_says_what_is_wrong(call: object, message: str) -> None:
    with pytest.raises(DeclarationError) as caught:
        call()  # type: ignore[operator]
    assert message in str(caught.value)


def test_a_service_takes_the_image_first_and_its_name_by_keyword_as_the_marker_does() -> None:
    assert service("redis:7", name="cache").name == "cache"
    assert service("redis:7").name == "redis"
    assert service("ghcr.io/org/app:1").name == "app"
    assert service(build="tests/app", name=None).name == "app"


def test_a_bad_declaration_is_a_container_error_that_names_the_service_and_image() -> None:
    with pytest.raises(ContainerError) as caught:
        service("redis:7", name="cache", per="test")
    assert isinstance(caught.value, DeclarationError)
    assert isinstance(caught.value, ValueError)  # as it was before it joined ContainerError
    assert (caught.value.name, caught.value.image) == ("cache", "redis:7")
    with pytest.raises(DeclarationError) as caught:
        parse_ini_line("cache redis:7 per=test")
    assert (caught.value.name, caught.value.image) == ("cache", "redis:7")


def test_a_reset_is_a_command_or_a_callable() -> None:
    def flush(container: object) -> None:
        pass

    assert service("redis:7", name="redis", reset=["redis-cli", "FLUSHALL"]).reset == (
        "redis-cli",
        "FLUSHALL",
    )
    assert service("redis:7", name="redis", reset=flush).reset is flush
    (declared,) = parse_ini(["redis redis:7 'reset=redis-cli FLUSHALL'"])
    assert declared.reset == ("redis-cli", "FLUSHALL")
    assert declared.declaration.scope == "session"


def test_an_ini_line_reads_like_a_shell_line() -> None:
    (declared,) = parse_ini(
        [
            "",
            "# the cache",
            "redis redis:7 per=run ports=6379,6380 env=A=1 env=B=x=y "
            "'command=redis-server --save \"\"' 'wait=log:Ready to accept' "
            "expose=REDIS_URL=redis://{host}:{port} option=redis_url={host}:{port[6380]} "
            "network=net",
        ]
    )
    spec = declared.spec
    assert (declared.name, declared.display, declared.per) == ("redis", "redis:7", "run")
    assert spec.ports == ("6379/tcp", "6380/tcp")
    assert spec.env == (("A", "1"), ("B", "x=y"))
    assert spec.command == 'redis-server --save ""'
    assert spec.wait is not None
    assert spec.wait.describe() == wait.for_log("Ready to accept").describe()
    assert spec.network == "net"
    assert declared.expose == (("REDIS_URL", "redis://{host}:{port}"),)
    assert declared.options == (("redis_url", "{host}:{port[6380]}"),)


def test_an_ini_line_may_build_its_image() -> None:
    declared = parse_ini_line("app build=tests/app target=test buildarg=V=1 ports=8080")
    build = declared.declaration.build
    assert build is not None
    assert build.context == "tests/app"
    assert declared.display == "build:tests/app#test"
    assert (build.target, build.buildargs) == ("test", (("V", "1"),))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("port", wait.for_port()),
        ("port:6379", wait.for_port(6379)),
        ("http:8080/health", wait.for_http("/health", port=8080)),
        ("http:8080", wait.for_http("/", port=8080)),
        ("exec:redis-cli ping", wait.for_exec("redis-cli ping")),
        ("healthy", wait.for_healthy()),
    ],
)
def test_an_ini_wait_names_a_strategy(text: str, expected: wait.WaitStrategy) -> None:
    declared = parse_ini_line(f"s image:1 ports=6379,8080 'wait={text}'")
    assert declared.spec.wait is not None
    assert declared.spec.wait.describe() == expected.describe()


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("per=run", "start with the service's name"),
        ("redis redis:7 colour=red", "unknown key 'colour'; the keys are"),
        ("redis redis:7 ports", "'ports' is not key=value"),
        ("redis redis:7 env=A", "env= takes NAME=VALUE"),
        ("redis redis:7 wait=log:", "wait='log:' is not one of log:TEXT"),
        ("redis redis:7 'command=unclosed", "No closing quotation"),
        ("redis redis:7 per=ever", "invalid per='ever'"),
    ],
)
def test_a_bad_ini_line_is_named_in_the_error(line: str, message: str) -> None:
    with pytest.raises(DeclarationError) as caught:
        parse_ini_line(line)
    assert f"container_services line {line!r}" in str(caught.value)
    assert message in str(caught.value)


def test_two_services_may_not_share_a_name() -> None:
    with pytest.raises(DeclarationError, match="several services are named 'db'"):
        check_unique([service("redis:7", name="db"), service("redis:7", name="db")])


def test_a_bad_ini_key_stops_the_run_before_anything_starts(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\ncontainer_services = redis redis:7 colour=red\n")
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: container_services line *unknown key 'colour'*"])


def test_a_hook_that_returns_something_else_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
        def pytest_containers_services(config):
            return ["redis:7"]
        """
    )
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: pytest_containers_services must return a list of*"])


@SERIAL_AND_XDIST
def test_a_hook_that_raises_stops_the_run_with_one_line_that_names_it(
    pytester: pytest.Pytester, workers: list[str]
) -> None:
    pytester.makeconftest(
        """
        import pytest_containers

        def pytest_containers_services(config):
            return [pytest_containers.service("cache", "redis:7")]
        """
    )
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", *workers)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: pytest_containers_services (*conftest.py:4) raised TypeError: service() "
            "takes * positional argument* but 2 were given; it is service(image, *, name=None, "
            "build=None, per='worker', ...), in the marker's order: the image first, the rest "
            "by keyword"
        ]
    )
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()


def test_no_services_means_no_engine(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    pytester.makeconftest("def pytest_containers_services(config):\n    return []\n")
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_an_option_no_one_adds_is_a_usage_error_before_anything_starts(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No engine: the error must come before the plugin looks for one.
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    pytester.makeini("[pytest]\ncontainer_services = redis redis:7 ports=6379 option=nope={port}\n")
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: service 'redis': options= names 'nope', which no*"])


def test_an_option_given_under_any_of_its_flags_is_left_to_the_command_line(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What keeps a service's options= from overwriting the user's value: the option's own
    # flags (here unlike its dest), its short one, PYTEST_ADDOPTS, and its default given.
    pytester.makeconftest(
        """
        def pytest_addoption(parser):
            parser.addoption("--server", "-S", dest="server_url", default="redis://here")
            parser.addoption("--level", dest="level", action="count", default=0)
            parser.addoption("--other-url", dest="other_url")
        """
    )
    pytester.makepyfile(
        """
        from pytest_containers._suite.service_hooks import given_on_command_line

        def test_given(pytestconfig):
            dests = ("server_url", "level", "other_url")
            print("GIVEN", sorted(d for d in dests if given_on_command_line(pytestconfig, d)))
        """
    )
    runs = [
        (["--server=redis://mine"], "['server_url']"),
        (["-S", "redis://here"], "['server_url']"),
        (["--level", "--level"], "['level']"),
        ([], "[]"),
    ]
    for args, given in runs:
        result = pytester.runpytest_subprocess("-s", "-p", "no:cacheprovider", *args)
        assert f"GIVEN {given}\n" in result.stdout.str(), args
    monkeypatch.setenv("PYTEST_ADDOPTS", "--other-url=x")
    result = pytester.runpytest_subprocess("-s", "-p", "no:cacheprovider")
    assert "GIVEN ['other_url']\n" in result.stdout.str()
