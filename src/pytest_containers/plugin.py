"""pytest hooks and options of pytest-containers. Fixtures live in fixtures.py; the
work (pulls, containers, waits) in the core modules, which know nothing of pytest."""

from __future__ import annotations

import os

import pytest

from pytest_containers._settings import OPTIONS, SettingError, Settings, resolve_settings

settings_key = pytest.StashKey[Settings]()

MARKER_HELP = (
    "container(image, *more_images, name=None, ports=(), env=None, command=None, "
    "wait=None, scope='function', ...): run the test with a ready container of the image; "
    "several images parametrize the test"
)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("containers", "container images and containers (pytest-containers)")
    for option in OPTIONS:
        help_text = f"{option.help} [env {option.env}, ini {option.ini}]"
        if option.is_flag:
            group.addoption(
                option.flag, action="store_true", dest=option.dest, default=None, help=help_text
            )
            group.addoption(
                "--no-" + option.flag[2:],
                action="store_false",
                dest=option.dest,
                default=None,
                help=f"turn off {option.flag}",
            )
        else:
            group.addoption(
                option.flag, dest=option.dest, default=None, metavar=option.metavar, help=help_text
            )
        parser.addini(option.ini, help=option.help, default=None)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER_HELP)
    try:
        settings = resolve_settings(
            cli={option.name: config.getoption(option.dest) for option in OPTIONS},
            ini={option.name: config.getini(option.ini) for option in OPTIONS},
            environ=os.environ,
        )
    except SettingError as error:
        raise pytest.UsageError(str(error)) from None
    config.stash[settings_key] = settings


def pytest_report_header(config: pytest.Config) -> list[str]:
    settings = config.stash[settings_key]
    mirror = f", mirror {settings.mirror}" if settings.mirror else ""
    return [f"containers: pull {settings.pull}{mirror}"]
