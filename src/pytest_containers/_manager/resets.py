"""``reset=``: what a declaration may give (a command, or a callable taking the
container), running it, and how errors name it."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeAlias, cast

if TYPE_CHECKING:
    import docker

    from pytest_containers._containers.container import Container
    from pytest_containers._engine.streams import ShellSession

#: ``reset=``: a command run in the container, or a callable taking it.
Reset: TypeAlias = "Sequence[str] | Callable[[Container], object]"


def tail(output: str, limit: int = 200) -> str:
    """The end of ``output`` on one line."""
    text = " | ".join(line for line in output.strip().splitlines() if line.strip())
    return text if len(text) <= limit else "..." + text[-limit:]


def checked_reset(reset: object) -> Reset:
    """``reset=`` as declarations keep it: a command (a tuple of words) or a callable.
    Raises ValueError saying what it takes."""
    if callable(reset):
        return reset
    if isinstance(reset, (list, tuple)) and reset and all(isinstance(word, str) for word in reset):
        return tuple(reset)
    raise ValueError(
        "reset= takes a command, e.g. reset=['redis-cli', 'FLUSHALL'], or a callable taking "
        f"the Container, not {reset!r}"
    )


def describe_reset(reset: Reset) -> str:
    """How an error names a reset: the callable's name, or the command."""
    return getattr(reset, "__name__", repr(reset)) if callable(reset) else repr(list(reset))


def run_reset(container: Container, reset: Reset, shells: ResetShells | None = None) -> str | None:
    """Run ``reset`` on ``container`` (a command through ``shells`` when given); None when
    it worked, else what went wrong (exit code and output tail, or the exception the
    callable raised)."""
    try:
        if callable(reset):
            reset(container)
            return None
        ran = shells.run(container, list(reset)) if shells is not None else None
        if ran is None:
            result = container.exec(list(reset))
            ran = result.exit_code, result.output
    except Exception as error:
        return f"raised {type(error).__name__}: {tail(str(error))}"
    exit_code, output = ran
    if exit_code != 0:
        return f"exit code {exit_code}, output: {tail(output)}"
    return None


class ResetShells:
    """A shell session per container for its command resets (see
    :class:`~pytest_containers._engine.streams.ShellSession`): a reset then costs a few
    milliseconds instead of an exec's fifty. Opened at a container's first reset; a
    container whose shell cannot be had (no ``sh`` in the image, an ssh engine) or whose
    session ends is reset by exec from then on. :meth:`close` when the container goes,
    so that no socket stays open."""

    def __init__(self) -> None:
        self._sessions: dict[str, ShellSession | None] = {}
        self._lock = threading.Lock()

    def run(self, container: Container, command: list[str]) -> tuple[int, str] | None:
        """``command``'s exit code and output, or None: exec it instead."""
        from pytest_containers._engine.streams import ShellClosed, ShellSession, is_ssh_client

        with self._lock:
            known = container.id in self._sessions
            session = self._sessions.get(container.id)
        if known and session is None:
            return None
        client = cast("docker.DockerClient", container.raw.client)
        if session is None:
            try:
                # docker-py's socket over ssh is another beast: exec there, as before.
                if is_ssh_client(client):
                    raise ShellClosed("ssh")
                session = ShellSession(client, container.id)
            except Exception:  # no sh, no hijack: the exec works all the same
                session = None
            with self._lock:
                self._sessions[container.id] = session
            if session is None:
                return None
        try:
            code, out, err = session.run(command)
        except ShellClosed:
            with self._lock:
                self._sessions[container.id] = None
            return None  # the command may not have run: exec says how it goes now
        return code, (out + err).decode(errors="replace")

    def close(self, container_id: str) -> None:
        with self._lock:
            session = self._sessions.pop(container_id, None)
        if session is not None:
            session.close()

    def close_all(self) -> None:
        with self._lock:
            sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            if session is not None:
                session.close()
