"""The plugin's settings: one table of options, each a CLI flag, an ini key and an
environment variable sharing one name (``--container-pull``, ``container_pull``,
``PYTEST_CONTAINERS_PULL``). The command line wins over the environment, which wins over
the ini file, which wins over the default."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from pytest_containers._reference import parse_mirror

PULL_POLICIES = ("missing", "always", "never")
KEEP_POLICIES = ("never", "failed", "always")
UNAVAILABLE_POLICIES = ("error", "skip")
LOCK_MODES = ("auto", "update", "strict")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


class SettingError(ValueError):
    """A setting's value is invalid; the message names the setting and the valid values."""


@dataclass(frozen=True)
class Option:
    """One setting: ``name`` is the part after ``container-``/``container_``."""

    name: str
    help: str
    metavar: str = "VALUE"
    choices: tuple[str, ...] = ()
    is_flag: bool = False

    @property
    def flag(self) -> str:
        return "--container-" + self.name.replace("_", "-")

    @property
    def ini(self) -> str:
        return "container_" + self.name

    @property
    def env(self) -> str:
        return "PYTEST_CONTAINERS_" + self.name.upper()

    @property
    def dest(self) -> str:
        return "container_" + self.name


OPTIONS = (
    Option(
        "pull",
        "when to pull images: 'missing' (default) pulls those the engine lacks, 'always' "
        "pulls each image once per run (shared by all xdist workers), 'never' fails when "
        "an image is missing",
        metavar="POLICY",
        choices=PULL_POLICIES,
    ),
    Option(
        "mirror",
        "registry mirror for Docker Hub images, HOST[:PORT][/PREFIX]; other registries "
        "are left alone",
        metavar="MIRROR",
    ),
    Option(
        "cache_dir",
        "machine-wide directory for pull locks and state, shared by concurrent runs "
        "(default: ~/.cache/pytest-containers)",
        metavar="DIR",
    ),
    Option(
        "prefetch",
        "start pulling every image the collected tests declare right after collection "
        "(default: on)",
        is_flag=True,
    ),
    Option(
        "lock",
        "image pinning with the lock file: 'auto' (default) runs the pinned digests when "
        "the file exists and warns about unpinned images, 'update' writes the digests this "
        "run resolved, 'strict' fails a test whose image is not pinned",
        metavar="MODE",
        choices=LOCK_MODES,
    ),
    Option(
        "lockfile",
        "the lock file of image digests (default: containers.lock in the rootdir)",
        metavar="PATH",
    ),
    Option(
        "archive",
        "save each pulled image to DIR as a tarball keyed by digest, and load images the "
        "engine lacks from there instead of pulling them (offline CI)",
        metavar="DIR",
    ),
    Option(
        "keep",
        "keep containers after their tests for debugging: 'never' (default), 'failed' "
        "(those of failed tests) or 'always'; kept ones are listed with the command that "
        "removes them",
        metavar="WHEN",
        choices=KEEP_POLICIES,
    ),
    Option(
        "unavailable",
        "when no Docker engine answers: 'error' (default) fails the tests that need one, "
        "'skip' skips them; other tests run either way",
        metavar="ACTION",
        choices=UNAVAILABLE_POLICIES,
    ),
    Option(
        "timeout",
        "seconds a container may take to become ready (default: 60)",
        metavar="SECONDS",
    ),
    Option(
        "stall_timeout",
        "abort a pull that makes no progress for this many seconds (default: 120)",
        metavar="SECONDS",
    ),
)


@dataclass(frozen=True)
class Settings:
    """The resolved settings of one pytest process."""

    pull: str = "missing"
    mirror: str | None = None
    #: None means the default, ~/.cache/pytest-containers (see _locks.default_cache_dir).
    cache_dir: Path | None = None
    prefetch: bool = True
    lock: str = "auto"
    lockfile: Path | None = None
    archive: Path | None = None
    keep: str = "never"
    unavailable: str = "error"
    timeout: float = 60.0
    stall_timeout: float = 120.0


def _seconds(option: Option, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise SettingError(f"{option.flag}: expected a positive number of seconds, got {text!r}")
    return value


def _choice(option: Option, text: str) -> str:
    value = text.strip().lower()
    if value not in option.choices:
        valid = ", ".join(repr(choice) for choice in option.choices)
        raise SettingError(f"{option.flag}: invalid value {text!r}; choose one of {valid}")
    return value


def _flag(option: Option, text: str) -> bool:
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise SettingError(f"{option.ini} / {option.env}: expected true or false, got {text!r}")


def _mirror(option: Option, text: str) -> str | None:
    if not text.strip():
        return None
    try:
        parse_mirror(text.strip())
    except ValueError as error:
        raise SettingError(f"{option.flag}: {error}") from None
    return text.strip().rstrip("/")


_PARSERS: dict[str, Callable[[Option, str], object]] = {
    "pull": _choice,
    "mirror": _mirror,
    "cache_dir": lambda _option, text: Path(text).expanduser(),
    "prefetch": _flag,
    "lock": _choice,
    "lockfile": lambda _option, text: Path(text).expanduser(),
    "archive": lambda _option, text: Path(text).expanduser(),
    "keep": _choice,
    "unavailable": _choice,
    "timeout": _seconds,
    "stall_timeout": _seconds,
}


def resolve_settings(
    cli: Mapping[str, object | None],
    ini: Mapping[str, str | None],
    environ: Mapping[str, str],
) -> Settings:
    """Resolve every option: CLI value (``None`` when not given), then environment, then
    ini value, then the default. Raises :class:`SettingError` on an invalid value."""
    values: dict[str, object] = {}
    for option in OPTIONS:
        given = cli.get(option.name)
        if given is not None:
            if isinstance(given, bool):
                values[option.name] = given
                continue
            text = str(given)
        elif environ.get(option.env):
            text = environ[option.env]
        elif ini.get(option.name):
            text = str(ini[option.name])
        else:
            continue
        values[option.name] = _PARSERS[option.name](option, text)
    return Settings(**values)  # type: ignore[arg-type]
