"""Wait strategies: how to tell that a started container is ready for a test.

A strategy is handed the running container, seen as a :class:`WaitTarget` (the few
things a strategy may use of it: inspect data, published ports, exec, logs), and a deadline
(a :func:`time.monotonic` value), and returns once the container is ready, or raises
:class:`WaitFailed` saying why it never will be. Every strategy also watches the container
itself: when it exits, dies or is OOM-killed while being waited for, the wait fails at once
instead of running into its timeout.

Strategies are frozen dataclasses, so equal declarations compare and hash equal and a
:class:`~pytest_containers._containers.spec.ContainerSpec` holding one stays shareable.

Build them with the factory functions::

    for_log("Ready to accept connections")
    for_port(6379)
    for_http("/health", port=8080)
    for_healthy()
    for_exec(["pg_isready", "-U", "postgres"])
    all_of(for_log("listening"), for_port())
    none()
"""

from __future__ import annotations

import abc
import http.client
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import docker.errors

from pytest_containers._containers.probes import (
    EXEC_CANNOT_RUN,
    SOCKET_TABLES_SCRIPT,
    LineCounter,
    NoRedirects,
    has_healthcheck,
    host_probe,
    listening,
    port_repr,
)

# Where a strategy's author finds them, as before they moved to _probes.
from pytest_containers._containers.probes import exit_reason as exit_reason
from pytest_containers._containers.probes import normalize_port as normalize_port
from pytest_containers.errors import WaitFailed

__all__ = [
    "DEFAULT_TIMEOUT",
    "ExecOutput",
    "LogStream",
    "WaitFailed",
    "WaitStrategy",
    "WaitTarget",
    "all_of",
    "for_exec",
    "for_healthy",
    "for_http",
    "for_log",
    "for_port",
    "none",
    "wait_until_ready",
]

#: Seconds a strategy without a ``timeout`` of its own gets when the caller names none.
DEFAULT_TIMEOUT = 60.0

# Short enough that readiness is noticed within a few tens of ms; each poll also
# inspects the container (~2 ms) and, for exec-based checks, runs an exec (~60 ms).
_POLL_INTERVAL = 0.03


class ExecOutput(Protocol):
    """What a command run by :meth:`WaitTarget.exec` left."""

    @property
    def exit_code(self) -> int: ...
    @property
    def stdout(self) -> str: ...
    @property
    def stderr(self) -> str: ...


class LogStream(Protocol):
    """A container's output as it comes; :meth:`close` ends the iteration from another
    thread."""

    def __iter__(self) -> Iterator[bytes]: ...
    def close(self) -> None: ...


class WaitTarget(Protocol):
    """What a wait strategy may use of the container it waits for (the
    :class:`~pytest_containers.Container` a test gets offers all of it): its inspect
    data as of the last :meth:`reload`, its published ports and where the test reaches
    them, commands run in it, and its output as a stream.

    Keeping strategies to this keeps them testable and the import one-way: containers
    know the waits, the waits know no container class.
    """

    @property
    def name(self) -> str:
        """The container's name, for messages and thread names."""

    @property
    def attrs(self) -> dict[str, Any]:
        """The engine's inspect data as of the last :meth:`reload` (``State``, ...)."""

    @property
    def ports(self) -> dict[str, int]:
        """Published ports, ``{"6379/tcp": host_port}``, as of the last :meth:`reload`."""

    @property
    def on_podman(self) -> bool:
        """Whether the engine is podman (whose exec sessions linger for minutes)."""

    def reload(self) -> None:
        """Inspect the container again; raises ``docker.errors.NotFound`` once it is gone."""

    def exec(self, cmd: str | Sequence[str]) -> ExecOutput:
        """Run ``cmd`` in the container (no shell) and return its exit code and outputs."""

    def address(self, container_port: int | str) -> tuple[str, int]:
        """``(host, port)`` the test connects to for a published ``container_port``."""

    def follow_logs(self) -> LogStream:
        """Follow the output of the container's current run (stdout and stderr)."""


class WaitStrategy(abc.ABC):
    """How to tell that a container is ready.

    ``timeout`` is the strategy's own limit in seconds; ``None`` means the caller's default
    (:data:`DEFAULT_TIMEOUT` unless configured otherwise).
    """

    timeout: float | None = None

    @abc.abstractmethod
    def wait(self, container: WaitTarget, deadline: float) -> None:
        """Return once ``container`` is ready; raise :class:`WaitFailed` if it cannot be.

        ``deadline`` is a :func:`time.monotonic` value.
        """

    @abc.abstractmethod
    def describe(self) -> str:
        """How the strategy was declared, e.g. ``for_log('Ready to accept connections')``."""

    def __str__(self) -> str:
        return self.describe()


def wait_until_ready(
    container: WaitTarget, strategy: WaitStrategy, *, default_timeout: float = DEFAULT_TIMEOUT
) -> None:
    """Run ``strategy`` against ``container`` with its own timeout or ``default_timeout``."""
    timeout = strategy.timeout if strategy.timeout is not None else default_timeout
    try:
        strategy.wait(container, time.monotonic() + timeout)
    except WaitFailed as failed:
        if failed.container is None:
            failed.container = container.name
        raise


# --- watching the container ------------------------------------------------------------


def _ensure_running(container: WaitTarget) -> None:
    try:
        container.reload()
    except docker.errors.NotFound:
        raise WaitFailed("the container was removed", exited=True) from None
    reason = exit_reason(container.attrs.get("State") or {})
    if reason is not None:
        raise WaitFailed(f"the container {reason}", exited=True)


def _poll(
    container: WaitTarget,
    deadline: float,
    probe: Callable[[], str | None],
    *,
    interval: float = _POLL_INTERVAL,
) -> None:
    """Call ``probe`` until it returns ``None`` (ready); otherwise it returns why not yet.

    The container is inspected before every probe so that an exit ends the wait at once.
    """
    last = "nothing checked yet"
    while True:
        _ensure_running(container)
        note = probe()
        if note is None:
            return
        last = note
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            # The probe may have failed because the container just died: say so instead.
            _ensure_running(container)
            raise WaitFailed(f"timed out; last check: {last}", timed_out=True)
        time.sleep(min(interval, remaining))


def _remaining(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


def _exec_could_not_start(container: WaitTarget, exit_code: int | None, output: str) -> bool:
    """Whether an exec failed because its command cannot run in this container."""
    if exit_code not in (126, 127) or "OCI runtime exec failed" not in output:
        return False
    _ensure_running(container)  # an exec into a dying container fails as well
    return EXEC_CANNOT_RUN.search(output) is not None


# --- for_log ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LogWait(WaitStrategy):
    """Ready once ``times`` log lines (stdout or stderr) match ``pattern``; see :func:`for_log`."""

    pattern: str | re.Pattern[str]
    times: int = 1
    timeout: float | None = None

    def _regex(self) -> re.Pattern[str]:
        if isinstance(self.pattern, re.Pattern):
            return self.pattern
        return re.compile(re.escape(self.pattern))

    def describe(self) -> str:
        pattern = (
            f"re.compile({self.pattern.pattern!r})"
            if isinstance(self.pattern, re.Pattern)
            else repr(self.pattern)
        )
        extra = f", times={self.times}" if self.times != 1 else ""
        return f"for_log({pattern}{extra})"

    def wait(self, container: WaitTarget, deadline: float) -> None:
        counter = LineCounter(self._regex())
        try:
            # Followed logs end by themselves when the container stops, so no polling is
            # needed to notice an exit. Lines of an earlier run are not in them.
            stream = container.follow_logs()
        except docker.errors.APIError as exc:
            _ensure_running(container)
            raise WaitFailed(f"cannot read the container's logs: {exc.explanation}") from None
        ended = threading.Event()
        failure: list[BaseException] = []

        def pump() -> None:
            try:
                for chunk in stream:
                    counter.feed(chunk)
                    if counter.total() >= self.times:
                        return
            except BaseException as exc:  # reported by the waiting thread
                failure.append(exc)
            finally:
                ended.set()

        reader = threading.Thread(target=pump, name=f"for_log {container.name}", daemon=True)
        reader.start()
        finished = ended.wait(_remaining(deadline))
        stream.close()  # unblocks the reader when the deadline passed
        reader.join(timeout=5)
        seen = counter.total()
        if seen >= self.times:
            return
        progress = f"{seen} of {self.times} matching lines seen" if self.times > 1 else "no match"
        if not finished:
            raise WaitFailed(f"timed out; {progress}", timed_out=True)
        _ensure_running(container)
        if failure:
            raise WaitFailed(f"reading the logs failed: {failure[0]!r}; {progress}")
        raise WaitFailed(f"the log stream ended while the container runs; {progress}")


def for_log(
    pattern: str | re.Pattern[str], *, times: int = 1, timeout: float | None = None
) -> WaitStrategy:
    """Wait until ``times`` lines of the container's output match ``pattern``.

    A ``str`` is looked for literally as a substring of a line; pass a compiled
    :func:`re.compile` pattern for a regular expression (matched with ``search``). A line
    counts once however often it matches. The logs are followed as a stream, so the wait
    ends as soon as the line is written. After :meth:`Container.start` of a stopped
    container, only the new run's lines count.
    """
    if not isinstance(pattern, (str, re.Pattern)):
        raise TypeError(f"for_log() pattern must be a str or re.Pattern, not {pattern!r}")
    if not (pattern if isinstance(pattern, str) else pattern.pattern):
        raise ValueError("for_log() needs a non-empty pattern")
    if times < 1:
        raise ValueError(f"for_log() times must be at least 1, not {times}")
    return LogWait(pattern, times=times, timeout=_check_timeout(timeout))


# --- for_port --------------------------------------------------------------------------


@dataclass(frozen=True)
class PortWait(WaitStrategy):
    """Ready once something listens on the port(s); see :func:`for_port`."""

    port: str | None = None
    timeout: float | None = None
    #: The default wait's form: every published TCP port; UDP and SCTP ones are left
    #: alone, as nothing tells whether a service behind them is ready.
    tcp_only: bool = False

    def describe(self) -> str:
        return f"for_port({port_repr(self.port)})" if self.port else "for_port()"

    def _ports(self, container: WaitTarget) -> list[str]:
        if self.port is not None:
            return [self.port]
        published = sorted(container.ports)
        if self.tcp_only:
            published = [port for port in published if port.endswith("/tcp")]
        if not published:
            raise WaitFailed("the container publishes no ports to wait for")
        return published

    def wait(self, container: WaitTarget, deadline: float) -> None:
        _ensure_running(container)
        ports = self._ports(container)
        host_side: list[str] = []  # why the in-container check was given up, if it was
        if _prefers_host_probe(container, ports):
            host_side.append("podman keeps every exec session for minutes")

        def in_container() -> str | None:
            try:
                result = container.exec(["sh", "-c", SOCKET_TABLES_SCRIPT])
            except docker.errors.APIError as exc:
                return f"exec failed: {exc.explanation}"
            if _exec_could_not_start(container, result.exit_code, result.stdout):
                host_side.append(result.stdout.strip())
                return host()
            found = listening(result.stdout)
            for port in ports:
                if port not in found:
                    return f"nothing listens on {port} inside the container"
                if not found[port]:
                    return (
                        f"{port} listens only on loopback inside the container, which the "
                        "published port cannot reach"
                    )
            return None

        def host() -> str | None:
            published = container.ports
            for port in ports:
                if port.endswith(("/udp", "/sctp")):
                    continue  # nothing to connect to from the host; trust the container
                if port not in published:
                    raise WaitFailed(
                        f"{port} is not published and the image has no shell to check it "
                        f"inside the container ({host_side[0] if host_side else ''})"
                    )
                note = host_probe(*container.address(port), deadline)
                if note is not None:
                    return note
            return None

        _poll(container, deadline, lambda: host() if host_side else in_container())


def _prefers_host_probe(container: WaitTarget, ports: list[str]) -> bool:
    """On podman each exec leaves processes behind for minutes, so published TCP ports
    are checked from the test's side there (podman forwards ports without a proxy that
    accepts early, so a served connection means a listening service)."""
    published = container.ports
    if not all(port.endswith("/tcp") and port in published for port in ports):
        return False
    return container.on_podman


def for_port(port: int | str | None = None, *, timeout: float | None = None) -> WaitStrategy:
    """Wait until the container listens on ``port`` (every published port when ``None``).

    The check runs inside the container: an exec of ``sh`` reads ``/proc/net/tcp`` and
    ``/proc/net/tcp6`` (``udp`` for UDP ports) and looks for a listening socket that is
    not bound to loopback only. It is not fooled by docker-proxy, which accepts
    connections on the host port before the service listens, and works for unpublished
    ports too. Images without a shell fall back to a host-side check of published ports:
    a connection must bring data or stay open for a moment (docker-proxy closes it at once
    when nothing listens behind it); UDP ports cannot be checked that way and count as
    ready.
    """
    return PortWait(
        normalize_port(port) if port is not None else None, timeout=_check_timeout(timeout)
    )


# --- none ------------------------------------------------------------------------------


@dataclass(frozen=True)
class NoWait(WaitStrategy):
    """Ready as soon as it runs; see :func:`none`."""

    timeout: float | None = None

    def describe(self) -> str:
        return "none()"

    def wait(self, container: WaitTarget, deadline: float) -> None:
        _ensure_running(container)


def none() -> WaitStrategy:
    """Do not wait: the container is handed over as soon as it runs, even when it
    publishes ports (``wait=None``, the default, waits on its published TCP ports)."""
    return NoWait()


# --- for_http --------------------------------------------------------------------------


def _http_target(container: WaitTarget, port: str | None) -> tuple[str, int]:
    published = container.ports
    if port is None:
        tcp = sorted(p for p in published if p.endswith("/tcp"))
        if len(tcp) != 1:
            listed = ", ".join(tcp) or "none"
            raise WaitFailed(f"for_http() needs port= when the published TCP ports are: {listed}")
        port = tcp[0]
    if port not in published:
        listed = ", ".join(sorted(published)) or "none"
        raise WaitFailed(f"{port} is not published (published: {listed})")
    return container.address(port)


@dataclass(frozen=True)
class HttpWait(WaitStrategy):
    """Ready once ``GET path`` answers with ``status``; see :func:`for_http`."""

    path: str = "/"
    port: str | None = None
    status: int = 200
    timeout: float | None = None

    def describe(self) -> str:
        args = [repr(self.path)]
        if self.port is not None:
            args.append(f"port={port_repr(self.port)}")
        if self.status != 200:
            args.append(f"status={self.status}")
        return f"for_http({', '.join(args)})"

    def wait(self, container: WaitTarget, deadline: float) -> None:
        _ensure_running(container)
        host, port = _http_target(container, self.port)
        url = f"http://{f'[{host}]' if ':' in host else host}:{port}{self.path}"
        # No proxies: HTTP(S)_PROXY from the environment must not intercept the check.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), NoRedirects())

        def probe() -> str | None:
            timeout = max(0.05, min(2.0, _remaining(deadline)))
            try:
                with opener.open(url, timeout=timeout) as response:
                    status = int(response.status)
            except urllib.error.HTTPError as exc:
                status = exc.code
                exc.close()
            except (OSError, http.client.HTTPException) as exc:
                return f"GET {url}: {getattr(exc, 'reason', None) or exc!r}"
            return None if status == self.status else f"GET {url} -> {status}"

        _poll(container, deadline, probe)


def for_http(
    path: str = "/",
    *,
    port: int | str | None = None,
    status: int = 200,
    timeout: float | None = None,
) -> WaitStrategy:
    """Wait until ``GET http://host:published_port/path`` answers with ``status``.

    The request goes from the test's host through the published port, so it also proves
    that the port is reachable. ``port`` may be left out when exactly one TCP port is
    published. Redirects are not followed (ask for ``status=302`` to wait for one) and
    proxy settings in the environment are ignored.
    """
    if not path.startswith("/"):
        path = "/" + path
    if not 100 <= status <= 599:
        raise ValueError(f"for_http() status must be an HTTP status code, not {status}")
    normalized = normalize_port(port) if port is not None else None
    if normalized is not None and not normalized.endswith("/tcp"):
        raise ValueError(f"for_http() needs a TCP port, not {port!r}")
    return HttpWait(path, port=normalized, status=status, timeout=_check_timeout(timeout))


# --- for_healthy -----------------------------------------------------------------------


@dataclass(frozen=True)
class HealthyWait(WaitStrategy):
    """Ready once Docker reports the container ``healthy``; see :func:`for_healthy`."""

    timeout: float | None = None

    def describe(self) -> str:
        return "for_healthy()"

    def wait(self, container: WaitTarget, deadline: float) -> None:
        def probe() -> str | None:
            # _poll has just inspected the container.
            if not has_healthcheck(container.attrs):
                raise WaitFailed(
                    "neither the image nor the container defines a HEALTHCHECK; add one to "
                    "the image, pass healthcheck={...} to the container, or wait another way"
                )
            health = (container.attrs.get("State") or {}).get("Health") or {}
            status = health.get("Status") or "starting"
            if status == "healthy":
                return None
            last = (health.get("Log") or [{}])[-1]
            output = str(last.get("Output") or "").strip()
            detail = f" (last check: exit code {last.get('ExitCode')}, {output!r})" if last else ""
            # "unhealthy" is not final: the checks go on and a slow service may recover.
            return f"health is {status}{detail}"

        _poll(container, deadline, probe)


def for_healthy(*, timeout: float | None = None) -> WaitStrategy:
    """Wait until the container's HEALTHCHECK reports ``healthy``.

    Fails at once when neither the image nor the container defines a healthcheck. An
    ``unhealthy`` container is waited for further, since Docker goes on checking and a
    slow service can still turn healthy; a timeout names the last check's output.
    """
    return HealthyWait(timeout=_check_timeout(timeout))


# --- for_exec --------------------------------------------------------------------------


@dataclass(frozen=True)
class ExecWait(WaitStrategy):
    """Ready once ``cmd`` run in the container exits with 0; see :func:`for_exec`."""

    cmd: str | tuple[str, ...]
    timeout: float | None = None

    def describe(self) -> str:
        cmd = list(self.cmd) if isinstance(self.cmd, tuple) else self.cmd
        return f"for_exec({cmd!r})"

    def wait(self, container: WaitTarget, deadline: float) -> None:
        cmd = list(self.cmd) if isinstance(self.cmd, tuple) else self.cmd
        previous: list[str] = []  # what the finished runs said

        def probe() -> str | None:
            # A hanging command must not hold the wait past its deadline: run it aside.
            outcome: list[Any] = []

            def run() -> None:
                try:
                    outcome.append(container.exec(cmd))
                except BaseException as exc:
                    outcome.append(exc)

            runner = threading.Thread(target=run, name=f"for_exec {container.name}", daemon=True)
            runner.start()
            runner.join(_remaining(deadline) + 0.05)
            if not outcome:
                earlier = f" (the run before: {previous[-1]})" if previous else ""
                return f"the command did not finish before the deadline{earlier}"
            result = outcome[0]
            if isinstance(result, docker.errors.APIError):
                return f"exec failed: {result.explanation}"
            if isinstance(result, BaseException):
                raise result
            output = (result.stdout + result.stderr).strip()
            if _exec_could_not_start(container, result.exit_code, output):
                raise WaitFailed(f"the command cannot run in the container: {output}")
            if result.exit_code == 0:
                return None
            tail = output.splitlines()[-1] if output else ""
            previous.append(f"exit code {result.exit_code}" + (f": {tail}" if tail else ""))
            return previous[-1]

        _poll(container, deadline, probe)


def for_exec(cmd: str | Sequence[str], *, timeout: float | None = None) -> WaitStrategy:
    """Wait until ``cmd`` run inside the container exits with code 0.

    A ``str`` is split into words like a shell would, but no shell runs it; pass
    ``["sh", "-c", "..."]`` for shell syntax. Fails at once when the command cannot be
    started at all (not found, not executable).
    """
    if isinstance(cmd, str):
        if not cmd.strip():
            raise ValueError("for_exec() needs a command")
        return ExecWait(cmd, timeout=_check_timeout(timeout))
    words = tuple(cmd)
    if not words or not all(isinstance(word, str) for word in words):
        raise ValueError(f"for_exec() needs a command as a non-empty list of str, not {cmd!r}")
    return ExecWait(words, timeout=_check_timeout(timeout))


# --- all_of ----------------------------------------------------------------------------


@dataclass(frozen=True)
class AllOf(WaitStrategy):
    """Ready once every strategy is satisfied, in order; see :func:`all_of`."""

    strategies: tuple[WaitStrategy, ...]
    timeout: float | None = None

    def describe(self) -> str:
        return f"all_of({', '.join(s.describe() for s in self.strategies)})"

    def wait(self, container: WaitTarget, deadline: float) -> None:
        for strategy in self.strategies:
            own, own_timeout = deadline, None
            now = time.monotonic()
            if strategy.timeout is not None and now + strategy.timeout < deadline:
                own, own_timeout = now + strategy.timeout, strategy.timeout
            try:
                strategy.wait(container, own)
            except WaitFailed as exc:
                raise WaitFailed(
                    f"{strategy.describe()}: {exc.reason}",
                    exited=exc.exited,
                    timed_out=exc.timed_out,
                    timeout=exc.timeout or (own_timeout if exc.timed_out else None),
                ) from None


def all_of(*strategies: WaitStrategy, timeout: float | None = None) -> WaitStrategy:
    """Wait for each strategy in turn; all share ``timeout`` (and each keeps its own)."""
    if not strategies:
        raise ValueError("all_of() needs at least one strategy")
    for strategy in strategies:
        if not isinstance(strategy, WaitStrategy):
            raise TypeError(f"all_of() takes wait strategies, not {strategy!r}")
    return AllOf(tuple(strategies), timeout=_check_timeout(timeout))


def _check_timeout(timeout: float | None) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise ValueError(f"a wait timeout must be a positive number of seconds, not {timeout!r}")
    return float(timeout)
