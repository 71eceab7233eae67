"""What pytest prints of containers, for plugin.py's hooks: the header, the sections a
failed test's report gets (its containers' logs), and the terminal summary (the sweep,
kept containers, the images and the lock file)."""

from __future__ import annotations

import os
from typing import Any

import pytest

from pytest_containers._suite.fixtures import EngineSkip, used_containers_key
from pytest_containers._suite.session import run_images
from pytest_containers._suite.state import PluginState, plugin_state

#: When each test began, to show only what broader-scoped containers logged during it.
test_started_key = pytest.StashKey[float]()


def header_lines(config: pytest.Config) -> list[str]:
    from pytest_containers._engine.connection import describe_access, describe_engine

    state = plugin_state(config)
    settings = state.settings
    mirror = f", mirror {settings.mirror}" if settings.mirror else ""
    if state.lockfile_exists or settings.lock != "auto":
        pins = f"{len(state.pins)} pins" if state.lockfile_exists else "not there yet"
        lock = f", lock file {state.lockfile} ({pins}, {settings.lock})"
    else:
        lock = ""
    archive = f", archive {settings.archive}" if settings.archive else ""
    from pytest_containers._manager.reuse import describe_reuse

    reuse = describe_reuse(settings.reuse, settings.reuse_ttl)
    return [
        f"containers: {describe_engine()}, pull {settings.pull}{mirror}{lock}{archive}",
        f"containers: tests dial {describe_access(settings.host)}",
        *([reuse] if reuse else []),
    ]


def complete_report(item: pytest.Item, call: pytest.CallInfo[None], report: Any) -> None:
    """A skip for want of an engine points at the test; a failed test's report gets the
    logs of the containers it used."""
    if (
        report.skipped
        and isinstance(report.longrepr, tuple)
        and call.excinfo is not None
        and call.excinfo.errisinstance(EngineSkip)
    ):
        # Point at the test, as pytest does for its own skip markers, not into _suite/fixtures.py.
        path, line = item.reportinfo()[:2]
        report.longrepr = (os.fspath(path), (line or 0) + 1, report.longrepr[2])
    used = item.stash.get(used_containers_key, [])
    if not (report.failed and used):
        return
    state = plugin_state(item.config)
    lines = state.settings.log_lines
    kept = state.settings.keep in ("failed", "always")
    from pytest_containers._suite.run_report import report_section

    for container in used:
        if state.has_manager:
            state.manager().mark_failed(container)
        if lines > 0:
            report.sections.append(
                report_section(
                    container,
                    lines=lines,
                    test_started=item.stash.get(test_started_key, None),
                    kept=kept,
                )
            )


def terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    state = plugin_state(config)
    # Each under its own separator: right after pytest's failure sections, a bare line
    # would read as the last lines of the last failed test's report.
    swept = _sweep_lines(config, state)
    if swept or state.cleanup_errors:
        terminalreporter.write_sep("-", "containers: cleanup")
        for line in swept:
            terminalreporter.write_line(line)
        for message in state.cleanup_errors:
            terminalreporter.write_line(f"containers: could not remove {message}", yellow=True)
    from pytest_containers._manager.reuse import reuse_summary

    reuse = reuse_summary(
        state.reused, state.reuse_swept, enabled=state.settings.reuse, ttl=state.settings.reuse_ttl
    )
    if reuse:
        terminalreporter.write_sep("-", "containers: reuse")
        for line in reuse:
            terminalreporter.write_line(line)
    if state.kept:
        terminalreporter.write_sep("-", "containers: kept for debugging")
        for kept in state.kept:
            terminalreporter.write_line(f"{kept['name']}  ({kept['image']})")
        names = " ".join(str(kept["name"]) for kept in state.kept)
        terminalreporter.write_line(f"remove them with: docker rm -f {names}")
    if not state.has_manager and not state.worker_images:
        return
    from pytest_containers._suite.run_report import summary_lines, unpinned

    images = run_images(state)
    if not images:
        return
    terminalreporter.write_sep("-", "containers: images")
    for line in summary_lines(images):
        terminalreporter.write_line(line)
    if state.lock_update is not None:
        terminalreporter.write_line(f"{state.lockfile}: {state.lock_update.describe()}")
    elif state.lockfile_exists:
        loose = unpinned(images, state.pins)
        if loose:
            terminalreporter.write_line(
                f"not pinned in {state.lockfile}: {', '.join(loose)}; pin them with "
                "pytest --container-lock=update",
                yellow=True,
            )


def _sweep_lines(config: pytest.Config, state: PluginState) -> list[str]:
    """One line for what the start-up sweeps of this run's processes removed; with -v,
    what each dead run lost. Workers may have raced for the same run: merged by name."""
    from pytest_containers._cleanup.sweep import RemovedRun, SweepResult

    merged: dict[str, dict[str, set[str]]] = {}
    reasons: dict[str, str] = {}
    for record in state.swept:
        run_id = str(record["run_id"])
        reasons.setdefault(run_id, str(record.get("reason") or ""))
        kinds = merged.setdefault(run_id, {})
        for kind in ("containers", "networks", "volumes"):
            kinds.setdefault(kind, set()).update(map(str, record.get(kind) or ()))  # type: ignore[call-overload]
    result = SweepResult(
        removed=[
            RemovedRun(
                run_id,
                containers=tuple(sorted(kinds["containers"])),
                networks=tuple(sorted(kinds["networks"])),
                volumes=tuple(sorted(kinds["volumes"])),
                reason=reasons[run_id],
            )
            for run_id, kinds in sorted(merged.items())
        ]
    )
    headline = result.headline()
    if headline is None:
        return []
    lines = [f"containers: {headline}"]
    if config.get_verbosity() > 0:
        lines += [f"  {line}" for line in result.describe() if line.startswith("removed")]
    return lines
