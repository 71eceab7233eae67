"""The plugin's settings: one table of options, each a CLI flag, an ini key and an
environment variable sharing one name (``--container-pull``, ``container_pull``,
``PYTEST_CONTAINERS_PULL``). The command line wins over the environment, which wins over
the ini file, which wins over the default."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TypeVar

from pytest_containers._base.reference import parse_mirror
from pytest_containers.errors import SettingError


class Choice(str, Enum):
    """A setting with a fixed set of values. A member is its value: it compares equal to
    it (``PullPolicy.NEVER == "never"``) and prints as it, in messages and the header."""

    def __str__(self) -> str:
        return str(self.value)


class PullPolicy(Choice):
    """When to pull: ``missing`` (only images the engine lacks), ``always`` (once per
    run, shared by all its workers) or ``never`` (fail if the engine lacks the image)."""

    MISSING = "missing"
    ALWAYS = "always"
    NEVER = "never"


class KeepPolicy(Choice):
    """Which containers outlive their tests, for debugging."""

    NEVER = "never"
    FAILED = "failed"
    ALWAYS = "always"


class LockMode(Choice):
    """What the lock file does: run its pins (``auto``), rewrite it (``update``), or
    require a pin for every image (``strict``)."""

    AUTO = "auto"
    UPDATE = "update"
    STRICT = "strict"


class UnavailableAction(Choice):
    """What a test that needs an engine does when none answers."""

    ERROR = "error"
    SKIP = "skip"


_C = TypeVar("_C", bound=Choice)
_T = TypeVar("_T")


def _values(choice: type[Choice]) -> tuple[str, ...]:
    return tuple(member.value for member in choice)


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


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
        choices=_values(PullPolicy),
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
        choices=_values(LockMode),
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
        choices=_values(KeepPolicy),
    ),
    Option(
        "unavailable",
        "when no Docker engine answers: 'error' (default) fails the tests that need one, "
        "'skip' skips them; other tests run either way",
        metavar="ACTION",
        choices=_values(UnavailableAction),
    ),
    Option(
        "host",
        "the address tests dial to reach containers' published ports (default: found "
        "from the engine: 127.0.0.1 for a local one, the engine's host for a remote one, "
        "the containers' own addresses when the tests run in a container of the engine); "
        "TESTCONTAINERS_HOST_OVERRIDE is read too",
        metavar="ADDRESS",
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
    Option(
        "log_lines",
        "how many of the last lines of each container's log a failed test's report shows, "
        "at most 64 KiB of them (default: 200; 0 shows none)",
        metavar="LINES",
    ),
    Option(
        "lookahead",
        "while a test runs, create and start the function-scoped containers of the next N "
        "tests this process runs, so that they wait less (default: 1; 0 turns it off)",
        metavar="N",
    ),
    Option(
        "reuse",
        "keep the containers declared with reuse=True after the run, for the next run with "
        "an identical declaration (for local development; off by default, so CI never "
        "reuses by accident)",
        is_flag=True,
    ),
    Option(
        "reuse_ttl",
        "remove reused containers idle longer than this, at the start of a later run: "
        "seconds, or with a unit, e.g. 90s, 30m, 1h (default: 1h)",
        metavar="DURATION",
    ),
    Option(
        "engine_grace",
        "seconds to wait for a Docker engine that stops answering mid-run (a restart) "
        "before the tests that need it fail (default: 10)",
        metavar="SECONDS",
    ),
)


@dataclass(frozen=True)
class Settings:
    """The resolved settings of one pytest process."""

    pull: PullPolicy = PullPolicy.MISSING
    mirror: str | None = None
    #: None means the default, ~/.cache/pytest-containers (see _locks.default_cache_dir).
    cache_dir: Path | None = None
    prefetch: bool = True
    lock: LockMode = LockMode.AUTO
    lockfile: Path | None = None
    archive: Path | None = None
    keep: KeepPolicy = KeepPolicy.NEVER
    unavailable: UnavailableAction = UnavailableAction.ERROR
    #: None: decided from the engine (see _engine.access_for).
    host: str | None = None
    timeout: float = 60.0
    stall_timeout: float = 120.0
    log_lines: int = 200
    engine_grace: float = 10.0
    lookahead: int = 1
    #: reuse=True takes effect (see _manager/reuse.py); idle reused containers expire after ttl.
    reuse: bool = False
    reuse_ttl: float = 3600.0


# -- durations ---------------------------------------------------------------------

_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """``"90"`` or ``"90s"``, ``"30m"``, ``"1h"``, ``"2d"`` -> seconds. Raises ValueError
    for anything else, and for a duration that is not positive."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([smhd]?)\s*", text.lower())
    if match is None or float(match.group(1)) <= 0:
        raise ValueError(f"expected a positive duration (e.g. 3600, 90s, 30m, 1h), got {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def format_duration(seconds: float) -> str:
    """3600 -> ``1h``, 90 -> ``90s``, 0.5 -> ``0.5s``."""
    for unit in ("d", "h", "m"):
        if seconds >= _UNITS[unit] and seconds % _UNITS[unit] == 0:
            return f"{seconds / _UNITS[unit]:g}{unit}"
    return f"{seconds:g}s"


def _seconds(option: Option, text: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise SettingError(
            f"{where}: expected a positive number of seconds, got {text!r}", setting=option.name
        )
    return value


def _count(option: Option, text: str, where: str) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        value = -1
    if value < 0:
        raise SettingError(
            f"{where}: expected a whole number (0 or more), got {text!r}", setting=option.name
        )
    return value


def _choice(kind: type[_C]) -> Callable[[Option, str, str], _C]:
    def parse(option: Option, text: str, where: str) -> _C:
        value = text.strip().lower()
        if value not in option.choices:
            valid = ", ".join(repr(choice) for choice in option.choices)
            raise SettingError(
                f"{where}: invalid value {text!r}; choose one of {valid}", setting=option.name
            )
        return kind(value)

    return parse


def _flag(option: Option, text: str, where: str) -> bool:
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise SettingError(f"{where}: expected true or false, got {text!r}", setting=option.name)


def _duration(option: Option, text: str, where: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as error:
        raise SettingError(f"{where}: {error}", setting=option.name) from None


def _mirror(option: Option, text: str, where: str) -> str | None:
    if not text.strip():
        return None
    try:
        parse_mirror(text.strip())
    except ValueError as error:
        raise SettingError(f"{where}: {error}", setting=option.name) from None
    return text.strip().rstrip("/")


def _path(option: Option, text: str, where: str) -> Path:
    return Path(text).expanduser()


def _host(option: Option, text: str, where: str) -> str | None:
    return text.strip() or None


class _Sources:
    """Where each option's text comes from: the command line, then the environment,
    then the ini file. Records what was asked, so no option goes unresolved."""

    def __init__(
        self,
        cli: Mapping[str, object | None],
        ini: Mapping[str, str | None],
        environ: Mapping[str, str],
    ) -> None:
        self._cli = cli
        self._ini = ini
        self._environ = environ
        self._options = {option.name: option for option in OPTIONS}
        self.asked: set[str] = set()

    def get(self, name: str, parse: Callable[[Option, str, str], _T], default: _T) -> _T:
        """The option's value, parsed, or ``default`` when none was given."""
        self.asked.add(name)
        option = self._options[name]
        given = self._cli.get(name)
        if given is not None:
            # A flag arrives as a bool, and is parsed as its text like any other value.
            text = ("true" if given else "false") if isinstance(given, bool) else str(given)
            where = option.flag
        elif self._environ.get(option.env):
            # A bad value is reported under the name it was given by, so it can be found.
            text, where = self._environ[option.env], f"environment variable {option.env}"
        elif self._ini.get(name):
            text, where = str(self._ini[name]), f"ini option {option.ini}"
        else:
            return default
        return parse(option, text, where)


def resolve_settings(
    cli: Mapping[str, object | None],
    ini: Mapping[str, str | None],
    environ: Mapping[str, str],
) -> Settings:
    """Resolve every option: CLI value (``None`` when not given), then environment, then
    ini value, then the default. Raises :class:`SettingError` on an invalid value."""
    given = _Sources(cli, ini, environ)
    default = Settings()
    settings = Settings(
        pull=given.get("pull", _choice(PullPolicy), default.pull),
        mirror=given.get("mirror", _mirror, default.mirror),
        cache_dir=given.get("cache_dir", _path, default.cache_dir),
        prefetch=given.get("prefetch", _flag, default.prefetch),
        lock=given.get("lock", _choice(LockMode), default.lock),
        lockfile=given.get("lockfile", _path, default.lockfile),
        archive=given.get("archive", _path, default.archive),
        keep=given.get("keep", _choice(KeepPolicy), default.keep),
        unavailable=given.get("unavailable", _choice(UnavailableAction), default.unavailable),
        host=given.get("host", _host, default.host),
        timeout=given.get("timeout", _seconds, default.timeout),
        stall_timeout=given.get("stall_timeout", _seconds, default.stall_timeout),
        log_lines=given.get("log_lines", _count, default.log_lines),
        engine_grace=given.get("engine_grace", _seconds, default.engine_grace),
        lookahead=given.get("lookahead", _count, default.lookahead),
        reuse=given.get("reuse", _flag, default.reuse),
        reuse_ttl=given.get("reuse_ttl", _duration, default.reuse_ttl),
    )
    unresolved = {option.name for option in OPTIONS} - given.asked
    if unresolved:  # a new Option needs its line above, and a Settings field
        raise AssertionError(f"options never resolved: {sorted(unresolved)}")
    return settings
