"""Settings: the command line beats the environment, which beats the ini file, which beats
the default; the settings with a fixed set of values are enums. Pure: no engine."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from pytest_containers import SettingError
from pytest_containers._base.settings import (
    OPTIONS,
    Choice,
    KeepPolicy,
    LockMode,
    PullPolicy,
    Settings,
    UnavailableAction,
    resolve_settings,
)


def test_nothing_given_is_the_defaults() -> None:
    assert resolve_settings({}, {}, {}) == Settings()
    assert Settings().pull is PullPolicy.MISSING
    assert Settings().keep is KeepPolicy.NEVER
    assert Settings().lock is LockMode.AUTO
    assert Settings().unavailable is UnavailableAction.ERROR


def test_the_command_line_beats_the_environment_which_beats_the_ini_file() -> None:
    ini = {"pull": "never", "keep": "failed", "lock": "strict"}
    environ = {"PYTEST_CONTAINERS_PULL": "always", "PYTEST_CONTAINERS_KEEP": "always"}
    settings = resolve_settings({"pull": "missing"}, ini, environ)
    assert settings.pull is PullPolicy.MISSING
    assert settings.keep is KeepPolicy.ALWAYS
    assert settings.lock is LockMode.STRICT


def test_a_choice_is_read_whatever_its_case_and_is_its_enum_member() -> None:
    settings = resolve_settings({"unavailable": " Skip "}, {}, {})
    assert settings.unavailable is UnavailableAction.SKIP
    # Members are their values, in comparisons and in messages.
    value: str = settings.unavailable
    assert value == "skip"
    assert f"pull {PullPolicy.ALWAYS}" == "pull always"


@pytest.mark.parametrize(
    ("cli", "ini", "environ", "message"),
    [
        (
            {"pull": "sometimes"},
            {},
            {},
            "--container-pull: invalid value 'sometimes'; choose one of 'missing', "
            "'always', 'never'",
        ),
        (
            {},
            {},
            {"PYTEST_CONTAINERS_KEEP": "forever"},
            "environment variable PYTEST_CONTAINERS_KEEP: invalid value 'forever'; "
            "choose one of 'never', 'failed', 'always'",
        ),
        ({}, {"timeout": "soon"}, {}, "ini option container_timeout: expected a positive"),
        ({}, {"prefetch": "maybe"}, {}, "ini option container_prefetch: expected true or"),
        ({"log_lines": "-1"}, {}, {}, "--container-log-lines: expected a whole number"),
    ],
    ids=["cli-choice", "env-choice", "ini-seconds", "ini-flag", "cli-count"],
)
def test_a_bad_value_names_where_it_came_from_and_what_is_valid(
    cli: dict[str, object | None], ini: dict[str, str | None], environ: dict[str, str], message: str
) -> None:
    with pytest.raises(SettingError) as raised:
        resolve_settings(cli, ini, environ)
    assert str(raised.value).startswith(message)


def test_a_flag_comes_from_the_command_line_as_a_bool_or_from_text() -> None:
    assert resolve_settings({"prefetch": False}, {"prefetch": "on"}, {}).prefetch is False
    assert resolve_settings({}, {"prefetch": "off"}, {}).prefetch is False
    assert resolve_settings({}, {}, {"PYTEST_CONTAINERS_PREFETCH": "yes"}).prefetch is True


def test_every_option_is_a_setting_and_every_choice_an_enum_value() -> None:
    fields = set(inspect.signature(Settings).parameters)
    assert {option.name for option in OPTIONS} == fields
    enums: dict[str, type[Choice]] = {
        "pull": PullPolicy,
        "keep": KeepPolicy,
        "lock": LockMode,
        "unavailable": UnavailableAction,
    }
    for option in OPTIONS:
        if option.name in enums:
            assert option.choices == tuple(member.value for member in enums[option.name])
        else:
            assert option.choices == ()


def test_paths_and_the_host_are_read_as_given() -> None:
    settings = resolve_settings({"cache_dir": "~/x", "host": " "}, {"archive": "imgs"}, {})
    assert settings.cache_dir == Path("~/x").expanduser()
    assert settings.archive == Path("imgs")
    assert settings.host is None
