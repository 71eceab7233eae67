from __future__ import annotations

from pytest_containers._progress import PullReporter
from pytest_containers._pull import PullProgress


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_quick_pull_writes_nothing() -> None:
    lines: list[str] = []
    clock = FakeClock()
    report = PullReporter(lines.append, clock)
    report(PullProgress("redis:7", 0, 2, 0, 10))
    clock.now += 0.3
    report(PullProgress("redis:7", 2, 2, 10, 10, done=True))
    assert lines == []


def test_a_slow_pull_says_what_is_pulled_now_and_then_and_when_it_ends() -> None:
    lines: list[str] = []
    clock = FakeClock()
    report = PullReporter(lines.append, clock)
    report(PullProgress("redis:7", 0, 3, 0, 30_000_000))
    for _ in range(30):  # ten seconds of progress events, three a second
        clock.now += 1 / 3
        report(PullProgress("redis:7", 1, 3, 12_000_000, 30_000_000))
    report(PullProgress("redis:7", 3, 3, 30_000_000, 30_000_000, done=True))
    assert lines[0] == "containers: pulling redis:7: 1/3 layers, 12.0 MB of 30.0 MB"
    assert 2 <= len(lines) <= 4
    assert lines[-1] == "containers: pulled redis:7, 30.0 MB in 10.0 s"
