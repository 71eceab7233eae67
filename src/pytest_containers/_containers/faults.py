"""Engine faults, told apart and said in one line.

* **The engine went away** (stopped, restarted, its socket gone): :func:`engine_gone`
  recognises the connection errors docker-py and requests raise, and an
  :class:`EngineRecovery` waits a bounded grace period for the engine to answer again
  before an action is retried once, so that a quick restart costs no test; after that,
  one short :class:`~pytest_containers.errors.EngineUnavailableError`, and later actions
  fail at once instead of each waiting again. :func:`retry_unsent` does the same for
  every request of a client that never reached the engine (:func:`never_sent`), the
  tests' own calls included; a request that failed after it went out is not sent again.
* **A container was killed, OOM-killed or removed from outside**: :func:`container_fault`
  asks the engine what became of it and says which, as a
  :class:`~pytest_containers.errors.ContainerError`; a SIGKILL is checked against the
  engine's own ``oom`` event, which can come after the exit was recorded.

pytest-free; docker-py and requests are imported only when a fault is examined.
"""

from __future__ import annotations

import functools
import math
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from pytest_containers.errors import ContainerError, EngineUnavailableError

if TYPE_CHECKING:
    import docker

    from pytest_containers._containers.container import Container

__all__ = [
    "EngineRecovery",
    "container_fault",
    "engine_gone",
    "never_sent",
    "oom_killed",
    "retry_unsent",
    "test_fault",
]

T = TypeVar("T")

#: How often the guard asks a silent engine whether it is back.
_POLL = 0.2
#: How long after a SIGKILL of a container with a memory limit the engine may still
#: report that it was the OOM killer (dockerd handles the two events in either order).
OOM_EVENT_DELAY = 5.0


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


def never_sent(error: BaseException) -> bool:
    """Whether ``error`` says that a request never reached the engine: its connection
    could not be made (refused, the unix socket missing, a tcp connect that failed or
    timed out). Sending it again is safe whatever it does. A request that failed later (a
    reply lost, a stream cut, a reset after it went out) may have been acted on: False."""
    import requests.exceptions
    import urllib3.exceptions

    causes = list(_causes(error))
    # requests wraps every transport failure; a FileNotFoundError of its own (a file to
    # upload) is not the socket's.
    if not any(isinstance(cause, requests.exceptions.ConnectionError) for cause in causes):
        return False
    # ECONNREFUSED and ENOENT come from connect() only; urllib3 names a failed tcp
    # connect (NewConnectionError is a ConnectTimeoutError).
    return any(
        isinstance(
            cause,
            (urllib3.exceptions.ConnectTimeoutError, ConnectionRefusedError, FileNotFoundError),
        )
        for cause in causes
    )


class _Pinging(threading.local):
    """Whether this thread is asking the engine whether it answers (see EngineRecovery)."""

    active = False


class EngineRecovery:
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
        self._pinging = _Pinging()

    @property
    def pinging(self) -> bool:
        """Whether this thread is inside the guard's own ping: a request it makes must not
        wait for the engine again (see :func:`retry_unsent`)."""
        return self._pinging.active

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
                if self.answers():
                    self.gone = False
                    self.recovered += 1
                    return True
                return False
            deadline = time.monotonic() + self.grace
            while True:
                if self.answers():
                    self.recovered += 1
                    return True
                if time.monotonic() >= deadline:
                    self.gone = True
                    return False
                time.sleep(_POLL)

    def answers(self) -> bool:
        """Whether the engine answers a ping now (one try, never retried)."""
        self._pinging.active = True
        try:
            self._ping()
        except Exception:
            return False
        finally:
            self._pinging.active = False
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


def retry_unsent(client: docker.DockerClient, guard: EngineRecovery) -> None:
    """Have every request of ``client`` that never reached the engine (see
    :func:`never_sent`) wait for the engine as ``guard`` does and go again, within the
    guard's grace: the tests' own calls through their Container handles as well as the
    plugin's, streams included. docker-py's APIClient is a requests Session, whose
    ``send`` every call goes through. Once per client."""
    api = client.api
    send = api.send
    if hasattr(send, "__wrapped__"):
        return

    @functools.wraps(send)
    def send_until_sent(request: Any, **kwargs: Any) -> Any:
        deadline = time.monotonic() + guard.grace
        retried = False
        while True:
            try:
                return send(request, **kwargs)
            except Exception as error:
                # The guard's own ping says whether the engine answers: it is not retried.
                if guard.pinging or not never_sent(error) or time.monotonic() >= deadline:
                    raise
                if retried:
                    time.sleep(_POLL)  # the ping got through and this did not: no busy loop
                if not guard.wait():
                    raise
                retried = True

    api.send = send_until_sent  # type: ignore[method-assign]


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
    if oom_killed(client, attrs):
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


def oom_killed(client: docker.DockerClient, attrs: dict[str, Any]) -> bool:
    """Whether the engine's final word on a container (``attrs``, as inspected) is that
    the OOM killer ended it: ``State.OOMKilled``, or else an ``oom`` event around a
    SIGKILL exit.

    dockerd takes ``OOMKilled`` from what it knows when it handles the exit, and may
    handle the cgroup's OOM after that (on a busy machine it does): the event is then its
    only record. Asked only of a container with a memory limit, so that other kills stay
    fast, over a window that ends :data:`OOM_EVENT_DELAY` seconds after the exit, so that
    a plain kill of such a container costs at most that."""
    from pytest_containers._engine.connection import docker_time

    state = attrs.get("State") or {}
    if state.get("OOMKilled"):
        return True
    if state.get("ExitCode") != 137 or not (attrs.get("HostConfig") or {}).get("Memory"):
        return False
    exited = docker_time(state.get("FinishedAt"))
    if exited is None:
        return False
    started = docker_time(state.get("StartedAt")) or 0.0
    try:
        events = client.api.events(
            since=int(max(started, exited - OOM_EVENT_DELAY)),  # whole seconds, as it takes
            until=math.ceil(exited + OOM_EVENT_DELAY),
            filters={"container": attrs["Id"], "event": "oom"},
            decode=True,
        )
    except Exception:  # an engine without the events API: the state is all there is
        return False
    try:
        return any(True for _ in events)  # the first one ends the wait
    except Exception:
        return False
    finally:
        events.close()


def _from_engine(client: docker.DockerClient, error: BaseException) -> bool:
    """Whether ``error`` came from a request to ``client``'s engine. A test's own
    ``open()`` of a missing file, or its own connection to a server in a container that
    was refused, is the test's failure, not a sign that the engine went away."""
    import docker.errors
    import requests.exceptions

    base = str(client.api.base_url)
    for cause in _causes(error):
        if isinstance(cause, docker.errors.DockerException):
            return True
        if isinstance(cause, requests.exceptions.RequestException):
            url = str(getattr(cause.request, "url", None) or "")
            return url.startswith(base)
    return False


def test_fault(
    client: docker.DockerClient,
    engine: EngineRecovery,
    error: BaseException,
    used: Iterable[Container],
) -> ContainerError | None:
    """What a test's error says about the engine or its containers, in one line: the
    engine went away, or one of the containers it ``used`` was killed, OOM-killed or
    removed from outside. None when it says neither (the test's own failure)."""
    import docker.errors

    # A connection error that is not the engine's own (the test's socket, its file) says
    # nothing about the engine, unless the engine does not answer either.
    if engine_gone(error) and (_from_engine(client, error) or not engine.answers()):
        if engine.gone and never_sent(error):
            # Its call waited the whole grace period already (see retry_unsent).
            return engine.unavailable("the test ran", error)
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
