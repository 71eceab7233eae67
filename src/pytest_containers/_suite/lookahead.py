"""``--container-lookahead``, for plugin.py's hooks: which tests this process runs next,
and starting their function-scoped containers while the current test runs.
"""

from __future__ import annotations

import contextlib

import pytest

from pytest_containers._suite.fixtures import ahead_specs
from pytest_containers._suite.state import plugin_state

_upcoming_key = pytest.StashKey[list[pytest.Item]]()
_positions_key = pytest.StashKey[dict[str, int]]()


def note_upcoming(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """Remember the tests after ``item`` whose containers may start ahead."""
    state = plugin_state(item.config)
    count = state.settings.lookahead
    upcoming: list[pytest.Item] = []
    if count and nextitem is not None:
        upcoming = [nextitem]
        if count > 1 and not state.is_worker:  # a worker knows only its next test
            items = item.session.items
            positions = item.session.stash.get(_positions_key, None)
            if positions is None:
                positions = {other.nodeid: i for i, other in enumerate(items)}
                item.session.stash[_positions_key] = positions
            at = positions.get(nextitem.nodeid)
            if at is not None:
                upcoming += items[at + 1 : at + count]
    item.stash[_upcoming_key] = upcoming


def start_upcoming(item: pytest.Item) -> None:
    """Start the containers of the tests noted for ``item`` (once per test)."""
    state = plugin_state(item.config)
    if not state.has_manager or not state.manager().touched_engine:
        return  # no container yet in this process: nothing to win
    manager = state.manager()
    for upcoming in item.stash.get(_upcoming_key, []):
        if upcoming.get_closest_marker("skip") is not None:
            continue
        with contextlib.suppress(Exception):  # its own start meets the error in its turn
            specs = ahead_specs(upcoming)
            if specs:
                manager.ahead.start(upcoming.nodeid, specs)


def drop_untaken(item: pytest.Item) -> None:
    """What was started ahead for ``item`` and not taken goes (it was skipped, or stopped
    before its containers)."""
    state = plugin_state(item.config)
    if state.has_manager:
        state.manager().ahead.drop(item.nodeid)
