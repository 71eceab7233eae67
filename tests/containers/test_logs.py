"""Keeping the end of a log within a line and a byte budget (pure logic)."""

from __future__ import annotations

from pytest_containers._containers.logs import LogTail, keep_tail


def test_a_short_log_is_kept_whole() -> None:
    assert keep_tail([b"one\n", b"two\n"], lines=5, max_bytes=100) == LogTail("one\ntwo\n", False)


def test_a_line_more_than_asked_for_means_earlier_lines_exist() -> None:
    tail = keep_tail([b"a\nb\nc\nd\n"], lines=3, max_bytes=100)
    assert tail == LogTail("b\nc\nd\n", True)


def test_the_byte_cap_keeps_whole_last_lines_only() -> None:
    chunks = [b"x" * 50 + b"\n" for _ in range(10)] + [b"end\n"]
    tail = keep_tail(chunks, lines=100, max_bytes=120)
    assert tail.truncated
    assert tail.text == "x" * 50 + "\n" + "x" * 50 + "\nend\n"


def test_one_huge_line_is_cut_to_its_end() -> None:
    tail = keep_tail([b"y" * 1000 for _ in range(100)], lines=10, max_bytes=64)
    assert tail == LogTail("y" * 64, True)


def test_an_empty_log_is_empty() -> None:
    assert keep_tail([], lines=10, max_bytes=64) == LogTail("", False)
