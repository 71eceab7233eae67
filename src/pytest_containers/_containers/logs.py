"""A bounded tail of a container's log, for failure reports.

A service may write hundreds of megabytes of logs; a report needs its end. The engine is
asked for the last lines only (``tail``), optionally only those written since a moment,
and the answer is read as a stream of which at most ``max_bytes`` are kept, so that neither
pytest's memory nor the terminal sees the whole log.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

#: The defaults of --container-log-lines and of the byte cap of each container's log.
DEFAULT_LOG_LINES = 200
MAX_LOG_BYTES = 64 * 1024


@dataclass(frozen=True)
class LogTail:
    """The end of a log: ``text``, and whether lines or bytes were left out before it."""

    text: str
    truncated: bool


def keep_tail(chunks: Any, *, lines: int, max_bytes: int) -> LogTail:
    """The last ``lines`` lines and at most ``max_bytes`` bytes of ``chunks`` (an iterable
    of bytes), reading them one by one. The caller asked the engine for ``lines + 1``
    lines: a line more than wanted means that earlier lines exist."""
    kept = bytearray()
    cut = False
    for chunk in chunks:
        kept += chunk
        if len(kept) > max_bytes:
            del kept[: len(kept) - max_bytes]
            cut = True
    ending = kept.endswith(b"\n")
    body = kept[:-1] if ending else kept
    parts = bytes(body).split(b"\n")
    if len(parts) > lines:
        parts = parts[len(parts) - lines :]
        cut = True
    elif cut and len(parts) > 1:
        parts = parts[1:]  # the first line was cut by the byte cap: drop what is left of it
    text = b"\n".join(parts).decode(errors="replace")
    if not parts or parts == [b""]:
        text = ""
    return LogTail(text + ("\n" if ending and text else ""), cut)


def read_log_tail(
    api: Any, container_id: str, *, lines: int, max_bytes: int, since: float | None = None
) -> LogTail:
    """The last ``lines`` lines (at most ``max_bytes`` bytes) of a container's stdout and
    stderr, from ``since`` (a Unix time) on if given. ``api`` is docker-py's APIClient."""
    if lines <= 0:
        return LogTail("", truncated=True)
    stream = api.logs(
        container_id,
        stdout=True,
        stderr=True,
        stream=True,
        follow=False,
        tail=lines + 1,
        since=since if since is None or since > 0 else None,
    )
    try:
        return keep_tail(stream, lines=lines, max_bytes=max_bytes)
    finally:
        with contextlib.suppress(Exception):
            stream.close()
