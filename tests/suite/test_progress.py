from __future__ import annotations

import contextlib
from pathlib import Path

from pytest_containers._images.pull import PullProgress
from pytest_containers._suite.progress import PullReporter
from pytest_containers._suite.terminal import TerminalLines


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


def test_a_dropped_line_is_tried_again_at_the_next_event() -> None:
    lines: list[str] = []
    watching = False
    clock = FakeClock()

    def write(text: str) -> bool:
        if watching:
            lines.append(text)
        return watching

    report = PullReporter(write, clock)
    report(PullProgress("redis:7", 0, 3, 0, 30))
    clock.now += 1.5
    report(PullProgress("redis:7", 1, 3, 10, 30))  # nobody watches: dropped
    watching = True
    clock.now += 0.5
    report(PullProgress("redis:7", 2, 3, 20, 30))  # not 5 s later: now
    assert lines == ["containers: pulling redis:7: 2/3 layers, 0.0 MB of 0.0 MB"]


class FakeWriter:
    def __init__(self, *, tty: bool = False) -> None:
        self.hasmarkup = tty
        self.width_of_current_line = 0


class FakeReporter:
    """Records what is written, and keeps pytest's line state like its reporter does."""

    def __init__(self, writer: FakeWriter, current: object = None) -> None:
        self.writer = writer
        self.currentfspath = current
        self.startpath = Path("/project")
        self.out = ""

    def write(self, content: str, *, flush: bool = False) -> None:
        self.out += content
        self.writer.width_of_current_line = len(self.out.rpartition("\n")[2])

    def write_line(self, line: str) -> None:
        self.write(line + "\n")

    def flush(self) -> None:
        pass


def _lines(reporter: FakeReporter, *, waiting: bool = True) -> TerminalLines:
    lines = TerminalLines(reporter, reporter.writer, None, only_while_waiting=True)
    with lines.waiting() if waiting else contextlib.nullcontext():
        assert lines.write_line("containers: pulling x") is waiting
    return lines


def test_a_line_is_dropped_when_the_test_does_not_wait_for_the_plugin() -> None:
    reporter = FakeReporter(FakeWriter())
    _lines(reporter, waiting=False)
    assert reporter.out == ""


def test_a_fresh_line_is_just_written() -> None:
    reporter = FakeReporter(FakeWriter())
    _lines(reporter)
    assert reporter.out == "containers: pulling x\n"


def test_the_file_line_of_default_verbosity_goes_on_below_ours() -> None:
    reporter = FakeReporter(FakeWriter(), Path("/project/tests/test_x.py"))
    reporter.write("tests/test_x.py ..")
    _lines(reporter)
    assert reporter.out == "tests/test_x.py ..\ncontainers: pulling x\ntests/test_x.py "
    assert reporter.currentfspath == Path("/project/tests/test_x.py")


def test_a_verbose_test_line_on_a_terminal_is_replaced_and_written_again() -> None:
    reporter = FakeReporter(FakeWriter(tty=True), "test_x.py::test_a ")
    reporter.write("test_x.py::test_a ")
    _lines(reporter)
    assert reporter.out.endswith("\r\x1b[Kcontainers: pulling x\ntest_x.py::test_a ")


def test_a_verbose_test_line_in_a_log_is_left_for_pytest_to_write_again() -> None:
    reporter = FakeReporter(FakeWriter(), "test_x.py::test_a ")
    reporter.write("test_x.py::test_a ")
    _lines(reporter)
    assert reporter.out == "test_x.py::test_a \ncontainers: pulling x"
    assert reporter.currentfspath == -2  # pytest ends our line and writes its own again


def test_xdist_dots_go_on_on_the_next_line() -> None:
    reporter = FakeReporter(FakeWriter())
    reporter.write("...")
    _lines(reporter)
    assert reporter.out == "...\ncontainers: pulling x\n"
