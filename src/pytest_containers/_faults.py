"""Engine faults, told apart and said in one line.

* **The engine went away** (stopped, restarted, its socket gone): :func:`engine_gone`
  recognises the connection errors docker-py and requests raise, and an
  :class:`EngineGuard` waits a bounded grace period for the engine to answer again
  before an action is retried once, so that a quick restart costs no test; after that,
  one short :class:`~pytest_containers.errors.EngineUnavailableError`, and later actions
  fail at once instead of each waiting again.
* **A container was killed, OOM-killed or removed from outside**: :func:`container_fault`
  asks the engine what became of it and says which, as a
  :class:`~pytest_containers.errors.ContainerError`.

pytest-free; docker-py and requests are imported only when a fault is examined.

Branch coverage is under 90% (89%): a few rare answers of a dying engine (a paused
container, a kill by another signal, an engine back while a grace period runs) are
classified but not provoked; ``tests/test_engine_faults.py`` stops a second dockerd
for the common ones.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, TypeVar

from pytest_containers.errors import ContainerError, EngineUnavailableError

if TYPE_CHECKING:
    import docker

    from pytest_containers._containers import Container

__all__ = ["EngineGuard", "container_fault", "engine_gone", "test_fault"]

T = TypeVar("T")

#: How often the guard asks a silent engine whether it is back.
_POLL = 0.2


def _causes(error: BaseException) -> Iterable[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def engine_gone(error: BaseException) -> bool:
    """Whether ``error`` (or what caused it) says the engine could not be reached: a
    refused or reset connection, a missing socket, a connection dropped mid-answer. An
    answer from the engine (an API error), even an error, is not that."""
    import docker.errors
    import requests.exceptions

    for cause in _causes(error):
        if isinstance(cause, docker.errors.APIError):
            return False
        if isinstance(
            cause,
            (
                requests.exceptions.ConnectionError,
                requests.exceptions.ChunkedEncodingError,
                ConnectionError,  # refused, reset, aborted, broken pipe
                FileNotFoundError,  # the unix socket is gone
            ),
        ):
            return True
        if isinstance(cause, docker.errors.DockerException) and "Connection" in str(cause):
            return True
        if type(cause).__name__ == "ProtocolError":  # urllib3's, when the engine dies mid-call
            return True
    return False


class EngineGuard:
    """Runs engine actions so that an engine that went away is waited for, within
    ``grace`` seconds, and then reported in one line.

    ``ping`` raises when the engine does not answer. ``location`` says where the engine
    was (for the message). Thread-safe: threads that hit the same outage wait together,
    and once the grace ran out without an answer, the engine counts as gone: later actions
    ask once more (one ping) and fail at once if it is still silent.
    """

    def __init__(self, ping: Callable[[], object], *, grace: float, location: str) -> None:
        self._ping = ping
        self.grace = grace
        self.location = location
        self._lock = threading.Lock()
        #: True once the engine stayed silent for a whole grace period.
        self.gone = False
        #: How many outages the engine came back from.
        self.recovered = 0

    def run(self, action: Callable[[], T], *, what: str) -> T:
        """``action()``; if the engine went away during it, wait for the engine and run
        it once more. Raises :class:`EngineUnavailableError` when the engine does not come
        back; other errors pass through."""
        try:
            result = action()
        except Exception as error:
            if not engine_gone(error):
                raise
            cause = error
        else:
            self.gone = False  # it answered: whatever it was, it is back
            return result
        if not self.wait():
            raise self.unavailable(what, cause) from None
        try:
            return action()
        except Exception as error:
            if engine_gone(error):
                raise self.unavailable(what, error) from None
            raise

    def wait(self) -> bool:
        """Whether the engine answers, waiting up to the grace period for it (only once
        per outage: after that, one ping)."""
        with self._lock:
            if self.gone:
                if self._answers():
                    self.gone = False
                    self.recovered += 1
                    return True
                return False
            deadline = time.monotonic() + self.grace
            while True:
                if self._answers():
                    self.recovered += 1
                    return True
                if time.monotonic() >= deadline:
                    self.gone = True
                    return False
                time.sleep(_POLL)

    def _answers(self) -> bool:
        try:
            self._ping()
        except Exception:
            return False
        return True

    def unavailable(self, what: str, error: BaseException | None = None) -> EngineUnavailableError:
        """The one-line error for an engine that did not come back."""
        reason = f" ({_short(error)})" if error is not None else ""
        return EngineUnavailableError(
            f"the Docker engine at {self.location} stopped answering while {what}{reason} "
            f"and did not come back within {self.grace:g} s (--container-engine-grace); "
            "start it again, and rerun the tests"
        )

    def lost(self, what: str, error: BaseException | None = None) -> EngineUnavailableError:
        """The one-line error for an action that cannot be retried (a test's own call)
        when the engine went away under it."""
        reason = f" ({_short(error)})" if error is not None else ""
        return EngineUnavailableError(
            f"the Docker engine at {self.location} stopped answering while {what}{reason}; "
            f"the tests after it wait up to {self.grace:g} s (--container-engine-grace) for "
            "it to come back"
        )


def _short(error: BaseException) -> str:
    """The innermost words of a connection error, without urllib3's object reprs."""
    innermost = list(_causes(error))[-1]
    text = str(innermost) or type(innermost).__name__
    if "(" in text and "Errno" in text:
        text = text[text.rfind("[Errno") :].rstrip(")'\"")
    return text[:120]


def container_fault(
    client: docker.DockerClient, container_id: str, name: str, *, image: str | None = None
) -> ContainerError | None:
    """What became of a container that should be running, as a one-line error, or None
    when it runs: removed from outside, OOM-killed, killed, or exited on its own."""
    import docker.errors

    try:
        attrs = client.api.inspect_container(container_id)
    except docker.errors.NotFound:
        return ContainerError(
            f"the container {name} was removed from outside (docker rm) while in use",
            image=image,
            container=name,
        )
    state = attrs.get("State") or {}
    if state.get("Running") and not state.get("Paused"):
        return None
    code = state.get("ExitCode")
    if state.get("OOMKilled"):
        what = (
            f"was OOM-killed (out of memory, exit code {code}); give it more memory "
            "(mem_limit=...) or make it use less"
        )
    elif state.get("Paused"):
        what = "was paused from outside (docker pause)"
    elif code == 137:
        what = "was killed from outside (SIGKILL, exit code 137: docker kill or the kernel)"
    elif isinstance(code, int) and code > 128:
        what = f"was killed by signal {code - 128} (exit code {code})"
    else:
        what = f"has exited (exit code {code}, status {state.get('Status')})"
    return ContainerError(f"the container {name} {what}", image=image, container=name)


def test_fault(
    client: docker.DockerClient,
    engine: EngineGuard,
    error: BaseException,
    used: Iterable[Container],
) -> ContainerError | None:
    """What a test's error says about the engine or its containers, in one line: the
    engine went away, or one of the containers it ``used`` was killed, OOM-killed or
    removed from outside. None when it says neither (the test's own failure)."""
    import docker.errors

    if engine_gone(error):
        return engine.lost("the test ran", error)
    if not isinstance(error, docker.errors.APIError):
        return None
    for container in used:
        try:
            found = container_fault(client, container.id, container.name, image=container.image.ref)
        except Exception:
            return None
        if found is not None:
            return found
    return None
