"""``reset=``: what a declaration may give (a command, or a callable taking the
container), running it, and how errors name it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:
    from pytest_containers._containers import Container

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


def run_reset(container: Container, reset: Reset) -> str | None:
    """Run ``reset`` on ``container``; None when it worked, else what went wrong (exit code
    and output tail, or the exception the callable raised)."""
    try:
        if callable(reset):
            reset(container)
            return None
        result = container.exec(list(reset))
    except Exception as error:
        return f"raised {type(error).__name__}: {tail(str(error))}"
    if result.exit_code != 0:
        return f"exit code {result.exit_code}, output: {tail(result.output)}"
    return None
