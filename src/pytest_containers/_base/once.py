"""Once per run: the recipe by which a pull, a build, a run-scoped container (and next a
migration or a snapshot) is made by one process while every other asker waits and then
uses what it made.

Threads, xdist workers and concurrent pytest runs on one host may all ask for the same
thing at the same moment. They agree through two files in the cache directory, given by
the caller per thing (per engine and reference, per build key): a lock file (an OS lock,
:func:`~pytest_containers._base.locks.exclusive`) and a state file (a JSON record,
replaced atomically, :func:`~pytest_containers._base.locks.write_json_atomic`).

:meth:`OncePerRun.get` is the whole contract; the image cache, the builder and the run
scope satisfy it with their own ``find`` and ``make``:

1. ``find()`` first, without the lock: whatever it returns (not ``None``) is the answer,
   and nothing is locked, read or written. The common case, a thing already there, waits
   for no one.
2. ``refuse()``, if given, may then return an error to raise at once rather than wait for
   the lock (a pull policy that forbids pulling, with nothing to load).
3. The lock is taken, waiting up to ``timeout`` seconds; running out raises
   :class:`~pytest_containers.errors.ContainerError` naming ``what`` and the lock file. A
   holder that died, however it died, held nothing: the kernel dropped its lock.
4. ``find()`` again: whoever held the lock before may have made the thing meanwhile.
5. This run's record (:meth:`OncePerRun.recorded`): when it records a failure, the error is
   raised again (``replay``) and ``make`` is not called. A failure of another run is not
   replayed: a later run tries again. A missing, empty, truncated or non-object state
   file is no record.
6. ``make()``. Its result is recorded as this run's success (``describe(result)``) and
   returned. An error that ``failure(error)`` describes is recorded as this run's failure
   and raised; any other exception (a policy refusal, a context that changed, an
   interrupt) is raised unrecorded, so the next asker tries again.

A record is ``{"run_id", "time", "error", **about, **describe(result)}``, ``error``
being ``None`` or ``failure(error)``. A cache directory that cannot take a record (full,
read-only) fails nothing by itself: a success is returned all the same (the record's loss
is logged), a failure is raised with what the cache said appended to its message.

The callbacks run in the caller's thread, ``find`` up to twice and the rest at most once;
``make`` runs with the lock held, and with it the other threads of the process wait too.

Engine-free and pytest-free: what is made, and how, is the caller's.
"""

from __future__ import annotations

import copy
import datetime
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from pytest_containers._base.locks import exclusive, read_json, write_json_atomic
from pytest_containers.errors import CacheDirError, ContainerError

__all__ = ["OncePerRun"]

T = TypeVar("T")

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OncePerRun:
    """One thing made at most once per run: ``lock_path`` and ``state_path`` are its files,
    ``run_id`` the run asking (the xdist ``testrun_uid``, the same in all its workers),
    ``timeout`` the longest wait for the lock in seconds, ``what`` the thing as a lock
    timeout names it (``"the image redis:7"``). ``about`` is written in every record, to
    say what it is of (the reference, the tag) to whoever reads the file."""

    lock_path: Path
    state_path: Path
    run_id: str
    timeout: float
    what: str
    about: Mapping[str, object] = field(default_factory=dict)

    def recorded(self) -> dict[str, object] | None:
        """This run's record, or ``None``: no record, another run's, or no usable one."""
        record = read_json(self.state_path)
        if record is None or record.get("run_id") != self.run_id:
            return None
        return record

    def get(
        self,
        *,
        find: Callable[[], T | None],
        make: Callable[[], T],
        describe: Callable[[T], Mapping[str, object]],
        failure: Callable[[ContainerError], Mapping[str, object] | None],
        replay: Callable[[Mapping[str, object]], BaseException],
        refuse: Callable[[], BaseException | None] | None = None,
    ) -> tuple[T, bool]:
        """The thing, and whether this call made it; see the module's docstring.

        ``describe`` gives what to record of a success; ``failure`` what to record of an
        error of ``make`` (``None``: not a failure to share); ``replay`` turns that record
        back into the error to raise.
        """
        found = find()
        if found is not None:
            return found, False
        if refuse is not None and (refusal := refuse()) is not None:
            raise refusal
        with exclusive(self.lock_path, timeout=self.timeout, what=self.what):
            found = find()
            if found is not None:
                return found, False
            recorded = (self.recorded() or {}).get("error")
            if isinstance(recorded, dict):
                raise replay(recorded)
            try:
                made = make()
            except ContainerError as error:
                fields = failure(error)
                unrecorded = None if fields is None else self._record_failure(error, fields)
                if unrecorded is None:
                    raise
                raise unrecorded from None
            self._record({**describe(made), "error": None})
            return made, True

    def _record(self, fields: Mapping[str, object]) -> None:
        """Write this run's record; raises :class:`CacheDirError`, logged for a success."""
        record = {
            **self.about,
            **fields,
            "run_id": self.run_id,
            "time": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        }
        try:
            write_json_atomic(self.state_path, record)
        except CacheDirError as problem:
            if fields.get("error") is not None:
                raise
            _log.warning("%s: not recorded: %s", self.what, problem.message)

    def _record_failure(
        self, error: ContainerError, fields: Mapping[str, object]
    ) -> ContainerError | None:
        """Record ``error``; when the cache cannot, ``error`` saying so."""
        try:
            self._record({"error": dict(fields)})
        except CacheDirError as problem:
            # copy.copy rebuilds any ContainerError, whatever its class's keywords.
            unrecorded = copy.copy(error)
            unrecorded.message = (
                f"{error.message} (and the cache could not record it: {problem.message})"
            )
            unrecorded.args = (unrecorded.message,)
            return unrecorded
        return None
