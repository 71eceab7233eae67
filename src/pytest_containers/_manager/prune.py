"""``--container-prune``: remove what dead runs left on the engine, and stale builds of
this project, then report. Core: no pytest here; the plugin passes the settings, the
project's root and where lines go.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pytest_containers._base.settings import Settings
from pytest_containers.errors import ContainerError

#: Exit codes, as pytest's ExitCode numbers them (this module does not import pytest).
_OK, _FAILED, _USAGE = 0, 1, 4


def run_prune(settings: Settings, root: Path, *, every: bool, say: Callable[[str], object]) -> int:
    """Prune dead runs' resources and this project's builds (all of them with ``every``,
    else all but the newest of each context and those of the last day); the exit code."""
    from pytest_containers._base.locks import default_cache_dir, ensure_private_dir
    from pytest_containers._cleanup.sweep import sweep_dead_runs
    from pytest_containers._engine.connection import connect
    from pytest_containers._images.build import (
        PRUNE_KEEP_NEWEST,
        PRUNE_OLDER_THAN,
        prune_stale_builds,
    )

    try:
        client = connect()
        cache_dir = ensure_private_dir(settings.cache_dir or default_cache_dir())
    except ContainerError as error:
        say(f"pytest-containers: {error}")
        return _USAGE
    result = sweep_dead_runs(client, cache_dir, own_run_id=None, spare_kept=False)
    lines = result.describe()
    if result.files_pruned:
        lines.append(f"deleted {result.files_pruned} file(s) of dead runs from {cache_dir}")
    from pytest_containers._manager.reuse import prune_lines

    lines.extend(prune_lines(client, cache_dir))
    for line in lines:
        say(f"pytest-containers: {line}")
    # Builds of this project (contexts under the rootdir): with "stale", the newest of
    # each and the recent ones stay.
    kept: list[tuple[str, str]] = []
    pruned = prune_stale_builds(
        client,
        keep_newest=0 if every else PRUNE_KEEP_NEWEST,
        older_than=None if every else PRUNE_OLDER_THAN,
        under=root,
        kept_out=kept,
    )
    say(f"pytest-containers: removed {len(pruned)} built image(s) of {root}")
    if kept:
        reasons: dict[str, int] = {}
        for _tag, why in kept:
            reasons[why] = reasons.get(why, 0) + 1
        why = "; ".join(f"{reason}: {count}" for reason, count in reasons.items())
        advice = "" if every else "; --container-prune=all removes them too"
        say(f"pytest-containers: kept {len(kept)} built image(s) ({why}){advice}")
    return _OK if not result.errors else _FAILED
