"""The image a test runs on, as the image cache resolved it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Image:
    """An image present in the engine.

    ``ref`` is the reference as the test declared it (``redis:7``), ``resolved_ref`` the
    one the engine was asked for after any mirror or pin, ``id`` the engine's image id and
    ``digest`` the registry's content digest (``sha256:…``; ``None`` for a local build).
    ``source`` says how it got there: ``"pulled"``, ``"present"``, ``"loaded"`` (from an
    image archive) or ``"built"``; ``seconds`` how long that took. ``pinned`` is true when
    a lock file pin chose the digest (``resolved_ref`` then ends in ``@`` and it), and
    ``note`` says what else a person should know, e.g. that the registry could not be
    reached and the archived copy was used, or that archiving the image failed.
    """

    ref: str
    resolved_ref: str
    id: str
    digest: str | None = None
    platform: str | None = None
    source: str = "present"
    seconds: float = 0.0
    pinned: bool = False
    note: str | None = None
