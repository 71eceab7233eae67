"""The lock file without an engine: format, strict parsing, determinism, atomic writes."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from pytest_containers._base.image import Image
from pytest_containers._images.lockfile import (
    HEADER,
    LockFileError,
    Pin,
    merge_pins,
    pin_key,
    pins_from_images,
    read_lockfile,
    render_lockfile,
    write_lockfile,
)

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
D3 = "sha256:" + "3" * 64

PINS = [
    Pin("redis:7", None, D1),
    Pin("redis:7", "linux/arm64", D2),
    Pin("busybox:1.35", None, D3),
    Pin("registry.example.com:5000/team/app:1.0", None, D2),
    Pin("docker.io/library/redis:7", None, D3),
]


def _keyed(pins: list[Pin]) -> dict[str, Pin]:
    return {pin.key: pin for pin in pins}


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "containers.lock"
    write_lockfile(path, PINS)
    assert read_lockfile(path) == _keyed(PINS)


def test_output_is_deterministic_whatever_the_order() -> None:
    expected = render_lockfile(PINS)
    for seed in range(5):
        shuffled = PINS[:]
        random.Random(seed).shuffle(shuffled)
        assert render_lockfile(shuffled) == expected
    assert render_lockfile(PINS + PINS) == expected  # a pin seen twice is one line


def test_format_header_sorted_lines_trailing_newline() -> None:
    text = render_lockfile(PINS)
    assert text.startswith(HEADER)
    assert "pytest --container-lock=update" in HEADER
    assert all(line.startswith("#") for line in HEADER.splitlines())
    assert text.endswith("\n")
    assert not text.endswith("\n\n")
    body = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert body == [
        f"busybox:1.35  {D3}",
        f"docker.io/library/redis:7  {D3}",
        f"redis:7  {D1}",
        f"redis:7 [linux/arm64]  {D2}",
        f"registry.example.com:5000/team/app:1.0  {D2}",
    ]


def test_empty_lock_file_has_the_header_only(tmp_path: Path) -> None:
    path = tmp_path / "containers.lock"
    write_lockfile(path, [])
    assert path.read_text() == HEADER + "\n"
    assert read_lockfile(path) == {}


def test_missing_file_reads_as_no_pins(tmp_path: Path) -> None:
    assert read_lockfile(tmp_path / "containers.lock") == {}


def test_platform_entries_are_keyed_by_normalized_platform(tmp_path: Path) -> None:
    path = tmp_path / "containers.lock"
    path.write_text(f"redis:7  {D1}\nredis:7 [Linux/AARCH64]  {D2}\nredis:7 [linux/arm/v7]  {D3}\n")
    pins = read_lockfile(path)
    assert pin_key("redis:7", "linux/arm64") == "redis:7 [linux/arm64]"
    assert pins[pin_key("redis:7", None)] == Pin("redis:7", None, D1)
    assert pins[pin_key("redis:7", "linux/aarch64")] == Pin("redis:7", "linux/arm64", D2)
    assert pins["redis:7 [linux/arm/v7]"].digest == D3
    # Written back normalized.
    assert f"redis:7 [linux/arm64]  {D2}\n" in render_lockfile(pins.values())


def test_comments_blank_lines_and_crlf_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "containers.lock"
    path.write_bytes(f"# mine\r\n\r\n   \r\nredis:7\t{D1}  \r\n# end\r\n".encode())
    assert read_lockfile(path) == {"redis:7": Pin("redis:7", None, D1)}


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("redis:7", "malformed line"),
        (f"redis:7  {D1}  extra", "malformed line"),
        (f"redis:7 [linux/arm64] [x]  {D1}", "malformed line"),
        ("redis:7  sha256:1234", "not ALGORITHM:HEX"),
        ("redis:7  sha256:" + "a" * 40, "exactly 64 lowercase hex digits"),
        ("redis:7  md5:" + "a" * 32, "not supported"),
        (f"Redis:7  {D1}", "lowercase"),
        (f"redis:7 [linux]  {D1}", "invalid platform"),
        (f"redis@{D2}  {D1}", "already has a digest"),
    ],
)
def test_malformed_line_names_the_line_and_what_to_do(
    tmp_path: Path, line: str, problem: str
) -> None:
    path = tmp_path / "containers.lock"
    path.write_text(f"# header\n\nbusybox:1.35  {D3}\n{line}\nredis:6  {D2}\n")
    with pytest.raises(LockFileError) as caught:
        read_lockfile(path)
    error = caught.value
    assert error.line == 4
    assert error.path == path
    assert f"{path}:4:" in str(error)
    assert problem in str(error)
    assert "pytest --container-lock=update" in str(error)


def test_a_key_pinned_twice_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "containers.lock"
    path.write_text(f"redis:7  {D1}\nbusybox:1  {D2}\nredis:7  {D1}\n")
    with pytest.raises(LockFileError, match="pinned twice") as caught:
        read_lockfile(path)
    assert caught.value.line == 3
    assert "lines 1 and 3" in str(caught.value)


def test_not_utf8_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "containers.lock"
    path.write_bytes(b"redis:7  \xff\xfe\n")
    with pytest.raises(LockFileError, match="UTF-8"):
        read_lockfile(path)


def test_render_refuses_what_would_not_read_back() -> None:
    with pytest.raises(LockFileError, match="two digests"):
        render_lockfile([Pin("redis:7", None, D1), Pin("redis:7", None, D2)])
    with pytest.raises(LockFileError):
        render_lockfile([Pin("redis 7", None, D1)])
    with pytest.raises(LockFileError):
        render_lockfile([Pin("redis:7", None, "sha256:nothex")])


def test_merge_update_keeps_unseen_pins_and_lets_the_run_win() -> None:
    existing = _keyed([Pin("redis:7", None, D1), Pin("busybox:1", None, D1)])
    seen = [Pin("redis:7", None, D2), Pin("postgres:16", None, D3)]
    assert merge_pins(existing, seen, prune=False) == _keyed(
        [Pin("redis:7", None, D2), Pin("busybox:1", None, D1), Pin("postgres:16", None, D3)]
    )


def test_merge_with_prune_keeps_only_what_the_run_saw() -> None:
    existing = _keyed([Pin("redis:7", None, D1), Pin("busybox:1", None, D1)])
    seen = [Pin("redis:7", None, D2), Pin("redis:7", "linux/arm64", D3)]
    assert merge_pins(existing, seen, prune=True) == _keyed(seen)
    assert merge_pins(existing, [], prune=True) == {}


def test_merge_refuses_two_digests_seen_for_one_key() -> None:
    seen = [Pin("redis:7", None, D1), Pin("redis:7", None, D1), Pin("redis:7", None, D2)]
    with pytest.raises(LockFileError, match="two digests for redis:7"):
        merge_pins({}, seen, prune=False)


def test_unchanged_content_is_not_rewritten(tmp_path: Path) -> None:
    path = tmp_path / "containers.lock"
    write_lockfile(path, PINS)
    before = path.stat()
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns - 10**9))  # one second back
    old = path.stat()
    write_lockfile(path, reversed(PINS))
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (old.st_ino, old.st_mtime_ns)

    write_lockfile(path, [*PINS[1:], Pin("redis:7", None, D3)])
    changed = path.stat()
    assert changed.st_mtime_ns != old.st_mtime_ns
    assert read_lockfile(path)["redis:7"].digest == D3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["containers.lock"]  # no temp left


def test_write_keeps_the_file_mode_and_gives_new_files_the_umask(tmp_path: Path) -> None:
    path = tmp_path / "containers.lock"
    previous = os.umask(0o022)
    try:
        write_lockfile(path, PINS)
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == 0o644
    path.chmod(0o664)
    write_lockfile(path, PINS[:2])
    assert path.stat().st_mode & 0o777 == 0o664


def test_failed_write_leaves_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "containers.lock"
    write_lockfile(path, PINS)
    before = path.read_text()

    def broken(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError, match="No space"):
        write_lockfile(path, PINS[:1])
    assert path.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["containers.lock"]


def test_pins_from_images_skips_builds_and_written_digests() -> None:
    images = [
        Image("redis:7", "127.0.0.1:5555/library/redis:7", "sha256:" + "a" * 64, D1),
        Image("redis:7", "x", "sha256:" + "b" * 64, D2, platform="linux/arm64"),
        Image("app:dev", "docker.io/library/app:dev", "sha256:" + "c" * 64, None, source="built"),
        Image(f"busybox@{D3}", f"docker.io/library/busybox@{D3}", "sha256:" + "d" * 64, D3),
    ]
    assert pins_from_images(images) == [
        Pin("redis:7", None, D1),
        Pin("redis:7", "linux/arm64", D2),
    ]
