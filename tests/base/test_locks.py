"""Machine-wide locks and state files (real processes and threads, no Docker)."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_containers._base.locks import (
    default_cache_dir,
    ensure_private_dir,
    exclusive,
    key_path,
    read_json,
    write_json_atomic,
)
from pytest_containers.errors import ContainerError

# Workers wait for a "go" file so that they really contend rather than run one by one.
CONTENDER = """
import os, sys, time
from pathlib import Path
from pytest_containers._base.locks import exclusive

lock, log, go, rounds = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
while not go.exists():
    time.sleep(0.005)
for _ in range(rounds):
    with exclusive(lock, timeout=60, what="the test image"):
        with open(log, "a") as stream:
            stream.write(f"start {os.getpid()}\\n")
        time.sleep(0.002)
        with open(log, "a") as stream:
            stream.write(f"end {os.getpid()}\\n")
"""

HOLDER = """
import sys, time
from pathlib import Path
from pytest_containers._base.locks import exclusive

with exclusive(Path(sys.argv[1]), timeout=10, what="the test image"):
    print("held", flush=True)
    time.sleep(120)
"""


def run_python(code: str, *args: object, stdout: int | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], text=True, stdout=stdout)


@pytest.fixture
def lock_path(tmp_path: Path) -> Path:
    return tmp_path / "locks" / "image.lock"


@pytest.fixture
def holder(lock_path: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process that holds ``lock_path`` until it is killed."""
    proc = run_python(HOLDER, lock_path, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "held"
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


# --- exclusive -------------------------------------------------------------------------


def test_the_lock_file_survives_release(lock_path: Path) -> None:
    with exclusive(lock_path, timeout=5, what="redis:7"):
        assert lock_path.exists()
    # Deleting it would let a waiter and a newcomer lock different inodes.
    assert lock_path.exists()
    inode = lock_path.stat().st_ino
    with exclusive(lock_path, timeout=5, what="redis:7"):
        pass
    assert lock_path.stat().st_ino == inode


def test_the_lock_directory_is_created_when_missing(lock_path: Path) -> None:
    assert not lock_path.parent.exists()
    with exclusive(lock_path, timeout=5, what="redis:7"):
        pass
    assert lock_path.parent.is_dir()


def test_a_lock_held_by_another_process_times_out_with_a_clear_error(
    lock_path: Path, holder: subprocess.Popen[str]
) -> None:
    started = time.monotonic()
    with (
        pytest.raises(ContainerError) as caught,
        exclusive(lock_path, timeout=0.3, what="docker.io/library/redis:7"),
    ):
        pytest.fail("acquired a lock another process holds")
    assert time.monotonic() - started < 5
    message = str(caught.value)
    assert message.startswith(
        "timed out after 0 s waiting for the lock on docker.io/library/redis:7"
    )
    assert str(lock_path) in message
    assert "another pytest run may be stuck pulling it" in message


def test_a_process_killed_while_holding_the_lock_does_not_keep_it(
    lock_path: Path, holder: subprocess.Popen[str]
) -> None:
    with pytest.raises(ContainerError), exclusive(lock_path, timeout=0.2, what="redis"):
        pass
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=10)
    assert holder.returncode == -signal.SIGKILL
    started = time.monotonic()
    with exclusive(lock_path, timeout=10, what="redis"):
        assert time.monotonic() - started < 2
    assert lock_path.exists()


def test_processes_contending_for_the_lock_never_overlap(tmp_path: Path, lock_path: Path) -> None:
    log, go = tmp_path / "log", tmp_path / "go"
    log.touch()
    workers = [run_python(CONTENDER, lock_path, log, go, 15) for _ in range(4)]
    try:
        go.touch()
        for worker in workers:
            assert worker.wait(timeout=120) == 0
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    lines = log.read_text().splitlines()
    assert len(lines) == 4 * 15 * 2
    # Every start is followed directly by the same process's end.
    for start, end in zip(lines[::2], lines[1::2], strict=True):
        assert start.startswith("start ")
        assert end == "end " + start.removeprefix("start ")
    assert len({line.split()[1] for line in lines}) == 4


def test_threads_of_one_process_exclude_each_other(lock_path: Path) -> None:
    inside: list[int] = []
    overlaps: list[int] = []
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def work() -> None:
        try:
            start.wait()
            for _ in range(20):
                with exclusive(lock_path, timeout=30, what="redis"):
                    inside.append(threading.get_ident())
                    if len(inside) > 1:
                        overlaps.append(len(inside))
                    time.sleep(0.001)
                    inside.pop()
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    assert not overlaps


def test_a_lock_held_by_another_thread_times_out_with_a_clear_error(lock_path: Path) -> None:
    held, done = threading.Event(), threading.Event()

    def hold() -> None:
        with exclusive(lock_path, timeout=5, what="redis"):
            held.set()
            done.wait(30)

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert held.wait(10)
        started = time.monotonic()
        with (
            pytest.raises(ContainerError, match="waiting for the lock on redis") as caught,
            exclusive(lock_path, timeout=0.2, what="redis"),
        ):
            pytest.fail("acquired a lock another thread holds")
        assert time.monotonic() - started < 5
        assert str(lock_path) in str(caught.value)
    finally:
        done.set()
        thread.join(10)
    with exclusive(lock_path, timeout=5, what="redis"):
        pass


def test_a_thread_waits_for_another_threads_lock_to_be_released(lock_path: Path) -> None:
    order: list[str] = []
    held = threading.Event()

    def hold() -> None:
        with exclusive(lock_path, timeout=5, what="redis"):
            held.set()
            time.sleep(0.2)
            order.append("holder released")

    thread = threading.Thread(target=hold)
    thread.start()
    assert held.wait(10)
    with exclusive(lock_path, timeout=10, what="redis"):
        order.append("waiter acquired")
    thread.join(10)
    assert order == ["holder released", "waiter acquired"]


def test_the_holding_thread_may_take_the_same_lock_again(lock_path: Path) -> None:
    with exclusive(lock_path, timeout=1, what="redis"):
        with exclusive(lock_path, timeout=1, what="redis"):
            pass
        # Still held after the inner block: another thread cannot take it.
        errors: list[BaseException] = []

        def try_lock() -> None:
            try:
                with exclusive(lock_path, timeout=0.1, what="redis"):
                    pass
            except ContainerError as error:
                errors.append(error)

        thread = threading.Thread(target=try_lock)
        thread.start()
        thread.join(10)
        assert len(errors) == 1


def test_a_lock_file_held_by_another_process_does_not_block_another_file(
    lock_path: Path, holder: subprocess.Popen[str]
) -> None:
    # The holder keeps image.lock; its neighbour in the same directory is free at once.
    started = time.monotonic()
    with exclusive(lock_path.with_name("other.lock"), timeout=2, what="other"):
        assert time.monotonic() - started < 2
    assert holder.poll() is None  # still holding image.lock all along


def test_a_lock_file_held_by_another_thread_does_not_block_another_file(
    lock_path: Path,
) -> None:
    # On two threads: one thread taking both files would pass even if they were one lock,
    # since the holding thread may re-enter it.
    held, done = threading.Event(), threading.Event()

    def hold() -> None:
        with exclusive(lock_path, timeout=5, what="redis"):
            held.set()
            done.wait(30)

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert held.wait(10)
        started = time.monotonic()
        with exclusive(lock_path.with_name("other.lock"), timeout=2, what="other"):
            assert time.monotonic() - started < 2
    finally:
        done.set()
        thread.join(10)


def test_the_lock_is_released_when_the_block_raises(lock_path: Path) -> None:
    with pytest.raises(RuntimeError), exclusive(lock_path, timeout=1, what="redis"):
        raise RuntimeError("boom")
    probe = run_python(
        "import sys; from pathlib import Path\n"
        "from pytest_containers._base.locks import exclusive\n"
        "with exclusive(Path(sys.argv[1]), timeout=5, what='redis'): pass",
        lock_path,
    )
    assert probe.wait(timeout=30) == 0


# --- state files -----------------------------------------------------------------------


def test_a_state_file_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    data: dict[str, object] = {"image": "redis:7", "digest": None, "n": 3, "tags": ["a", "b"]}
    write_json_atomic(path, data)
    assert read_json(path) == data
    write_json_atomic(path, {"image": "redis:8"})
    assert read_json(path) == {"image": "redis:8"}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_a_failed_write_leaves_the_old_state_and_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    write_json_atomic(path, {"image": "redis:7"})
    with pytest.raises(TypeError):
        write_json_atomic(path, {"unserializable": object()})
    assert read_json(path) == {"image": "redis:7"}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_a_missing_state_file_reads_as_none(tmp_path: Path) -> None:
    assert read_json(tmp_path / "missing.json") is None
    assert read_json(tmp_path / "no-such-dir" / "missing.json") is None


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"   \n",
        b"{",
        b'{"image": "redis:7", "dig',
        b"not json",
        b"[1, 2]",
        b"null",
        b"42",
        b'"text"',
        b"\xff\xfe\x00garbage",
        b"[" * 100_000,
    ],
    ids=[
        "empty",
        "blank",
        "open-brace",
        "truncated",
        "not-json",
        "array",
        "null",
        "number",
        "string",
        "binary",
        "deeply-nested",
    ],
)
def test_a_corrupt_state_file_reads_as_none(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(content)
    assert read_json(path) is None


def test_a_corrupt_state_file_can_be_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(b'{"trunc')
    assert read_json(path) is None
    write_json_atomic(path, {"ok": True})
    assert read_json(path) == {"ok": True}


def test_a_reader_never_sees_a_half_written_state_file(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    big = {"layers": ["x" * 1000] * 200}
    write_json_atomic(path, big)
    stop = threading.Event()
    seen: list[object] = []

    def write() -> None:
        while not stop.is_set():
            write_json_atomic(path, big)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        for _ in range(200):
            seen.append(read_json(path))
    finally:
        stop.set()
        writer.join(10)
    assert all(record == big for record in seen)


def test_state_files_are_json_people_can_read(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    write_json_atomic(path, {"b": 1, "a": 2})
    assert json.loads(path.read_text()) == {"a": 2, "b": 1}
    assert path.read_text().endswith("\n")


# --- directories -----------------------------------------------------------------------


def test_ensure_private_dir_creates_the_directory_with_mode_0700(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "cache"
    old = os.umask(0)
    try:
        assert ensure_private_dir(path) == path
    finally:
        os.umask(old)
    assert path.is_dir()
    assert stat.S_IMODE(path.stat().st_mode) == 0o700


def test_ensure_private_dir_leaves_an_existing_directory_alone(tmp_path: Path) -> None:
    path = tmp_path / "shared"
    path.mkdir()
    path.chmod(0o755)
    assert ensure_private_dir(path) == path
    assert stat.S_IMODE(path.stat().st_mode) == 0o755


def test_ensure_private_dir_under_a_regular_file_raises_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    path = blocker / "cache"
    with pytest.raises(ContainerError) as caught:
        ensure_private_dir(path)
    message = str(caught.value)
    assert str(path) in message
    assert "--container-cache-dir" in message
    assert "permissions" in message


def test_ensure_private_dir_on_an_existing_file_raises_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "cache"
    path.write_text("")
    with pytest.raises(ContainerError, match="--container-cache-dir") as caught:
        ensure_private_dir(path)
    assert str(path) in str(caught.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write to a 0500 directory")
def test_ensure_private_dir_on_a_read_only_directory_raises_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "ro"
    path.mkdir(mode=0o500)
    try:
        with pytest.raises(ContainerError, match="not writable"):
            ensure_private_dir(path)
    finally:
        path.chmod(0o700)


def test_ensure_private_dir_on_an_unwritable_directory_raises_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Root ignores permission bits, so stand in for a read-only directory.
    monkeypatch.setattr(os, "access", lambda *args, **kwargs: False)
    with pytest.raises(ContainerError, match="not writable") as caught:
        ensure_private_dir(tmp_path)
    assert str(tmp_path) in str(caught.value)
    assert "--container-cache-dir" in str(caught.value)


def test_the_default_cache_dir_follows_xdg_cache_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "pytest-containers"


@pytest.mark.parametrize("value", [None, "", "relative/cache"])
def test_the_default_cache_dir_falls_back_to_home_dot_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, value: str | None
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    if value is None:
        monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    else:
        monkeypatch.setenv("XDG_CACHE_HOME", value)
    assert default_cache_dir() == tmp_path / ".cache" / "pytest-containers"


# --- key paths -------------------------------------------------------------------------


def test_a_key_path_is_a_readable_slug_plus_a_short_hash(tmp_path: Path) -> None:
    path = key_path(tmp_path, "docker.io/library/redis:7", suffix=".lock")
    assert path.parent == tmp_path
    slug, _, rest = path.name.rpartition("-")
    assert slug == "docker.io_library_redis_7"
    digest, _, suffix = rest.partition(".")
    assert len(digest) == 12
    assert all(c in "0123456789abcdef" for c in digest)
    assert suffix == "lock"


def test_a_key_path_is_stable(tmp_path: Path) -> None:
    first = key_path(tmp_path, "docker.io/library/redis", "7", suffix=".json")
    assert first == key_path(tmp_path, "docker.io/library/redis", "7", suffix=".json")
    assert first.name.startswith("docker.io_library_redis_7-")


def test_different_keys_get_different_paths_even_with_the_same_slug(tmp_path: Path) -> None:
    names = {
        key_path(tmp_path, *parts, suffix=".lock").name
        for parts in [("a/b", "c"), ("a", "b/c"), ("a_b_c",), ("a:b", "c"), ("a", "b", "c")]
    }
    assert len(names) == 5


def test_a_key_path_never_leaves_its_directory(tmp_path: Path) -> None:
    for parts in [("../../etc/passwd",), ("/abs",), ("..",), ("",), ()]:
        path = key_path(tmp_path, *parts, suffix=".lock")
        assert path.parent == tmp_path
        assert not path.name.startswith(".")
        assert "/" not in path.name


def test_a_long_key_is_truncated_but_stays_unique(tmp_path: Path) -> None:
    first = key_path(tmp_path, "x" * 500 + "1", suffix=".lock")
    second = key_path(tmp_path, "x" * 500 + "2", suffix=".lock")
    assert first != second
    assert len(first.name) < 120


@pytest.mark.parametrize(("suffix", "ending"), [(".lock", ".lock"), ("lock", ".lock"), ("", "")])
def test_the_suffix_gets_its_dot(tmp_path: Path, suffix: str, ending: str) -> None:
    name = key_path(tmp_path, "redis", suffix=suffix).name
    assert name.endswith(ending)
    assert name.removesuffix(ending).rpartition("-")[0] == "redis"
