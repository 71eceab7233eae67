"""Once per run, with real file locks, threads and processes (no Docker): the thing made
is a file, ``make`` counts its calls in a log that every process appends to."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_containers._base.locks import exclusive
from pytest_containers._base.once import OncePerRun
from pytest_containers.errors import ContainerError, ImageBuildError
from tests.testenv import ROOT, run_together

# The thing, as every test and child makes it: a file holding a value. make() appends a
# line to "makes" first, fails when the "fail" file exists, and sleeps "slow" seconds.
THING = """
import os, time
from pathlib import Path
from pytest_containers._base.once import OncePerRun
from pytest_containers.errors import ContainerError


def ask(directory, run_id, *, timeout=30.0, refuse=None):
    directory = Path(directory)
    once = OncePerRun(
        directory / "thing.lock",
        directory / "thing.json",
        run_id=run_id,
        timeout=timeout,
        what="the thing",
        about={"of": "thing"},
    )

    def find():
        thing = directory / "thing"
        return thing.read_text() if thing.exists() else None

    def make():
        with open(directory / "makes", "a") as log:
            log.write(f"{os.getpid()} {run_id}\\n")
        slow = directory / "slow"
        if slow.exists():
            time.sleep(float(slow.read_text()))
        if (directory / "fail").exists():
            raise ContainerError(f"no thing in {run_id}")
        (directory / "thing").write_text(f"made by {run_id}")
        return f"made by {run_id}"

    return once.get(
        find=find,
        make=make,
        describe=lambda value: {"value": value},
        failure=lambda error: {"message": error.message},
        replay=lambda fields: ContainerError(str(fields["message"])),
        refuse=refuse,
    )
"""

_namespace: dict[str, Any] = {}
exec(compile(THING, "<thing>", "exec"), _namespace)
ask = _namespace["ask"]

CHILD = (
    THING
    + """
import json, sys
cfg = json.loads(sys.argv[1])
print("ready", flush=True)
go = Path(cfg["go"])
while not go.exists():
    time.sleep(0.002)
try:
    value, made = ask(cfg["directory"], cfg["run_id"])
    out = {"value": value, "made": made}
except ContainerError as error:
    out = {"error": error.message}
print(json.dumps(out), flush=True)
"""
)

# A process that takes the lock and dies in make(): it writes "making", then sleeps.
DIES_MAKING = (
    THING
    + """
import sys
def hang():
    print("making", flush=True)
    time.sleep(120)
OncePerRun(Path(sys.argv[1]) / "thing.lock", Path(sys.argv[1]) / "thing.json", run_id="run-1",
           timeout=10, what="the thing").get(
    find=lambda: None, make=hang, describe=lambda value: {}, failure=lambda error: {},
    replay=lambda fields: ContainerError("replayed"),
)
"""
)


def makes(directory: Path) -> list[str]:
    log = directory / "makes"
    return log.read_text().splitlines() if log.exists() else []


def record(directory: Path) -> dict[str, Any]:
    data = json.loads((directory / "thing.json").read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture
def held_lock(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process that holds the thing's lock until it is killed."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from pathlib import Path\n"
            "from pytest_containers._base.locks import exclusive\n"
            "with exclusive(Path(sys.argv[1]), timeout=10, what='the thing'):\n"
            "    print('held', flush=True)\n"
            "    time.sleep(120)\n",
            str(tmp_path / "thing.lock"),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT / "src")),
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        yield holder
    finally:
        holder.kill()
        holder.wait(10)
        if holder.stdout is not None:
            holder.stdout.close()


# -- one process -------------------------------------------------------------------------


def test_a_thing_is_made_once_recorded_then_found(tmp_path: Path) -> None:
    assert ask(tmp_path, "run-1") == ("made by run-1", True)
    assert ask(tmp_path, "run-1") == ("made by run-1", False)
    assert ask(tmp_path, "run-2") == ("made by run-1", False)
    assert len(makes(tmp_path)) == 1
    written = record(tmp_path)
    assert written["run_id"] == "run-1"
    assert (written["of"], written["value"], written["error"]) == ("thing", "made by run-1", None)
    assert written["time"]


def test_what_is_there_is_found_without_waiting_for_the_lock(
    tmp_path: Path, held_lock: subprocess.Popen[str]
) -> None:
    (tmp_path / "thing").write_text("there already")
    started = time.monotonic()
    assert ask(tmp_path, "run-1", timeout=10) == ("there already", False)
    assert time.monotonic() - started < 2
    assert not makes(tmp_path)


def test_a_lock_wait_that_runs_out_names_what_waited(
    tmp_path: Path, held_lock: subprocess.Popen[str]
) -> None:
    with pytest.raises(ContainerError, match="waiting for the lock on the thing") as caught:
        ask(tmp_path, "run-1", timeout=0.3)
    assert str(tmp_path / "thing.lock") in caught.value.message
    assert not makes(tmp_path)


def test_a_refusal_is_raised_at_once_rather_than_after_the_wait(
    tmp_path: Path, held_lock: subprocess.Popen[str]
) -> None:
    started = time.monotonic()
    with pytest.raises(ContainerError, match="not allowed"):
        ask(tmp_path, "run-1", timeout=10, refuse=lambda: ContainerError("not allowed"))
    assert time.monotonic() - started < 2
    # No refusal: it waits for the lock, as usual.
    with pytest.raises(ContainerError, match="timed out"):
        ask(tmp_path, "run-1", timeout=0.3, refuse=lambda: None)


def test_a_recorded_failure_is_replayed_in_the_run_and_retried_by_the_next(
    tmp_path: Path,
) -> None:
    (tmp_path / "fail").touch()
    with pytest.raises(ContainerError, match="no thing in run-1"):
        ask(tmp_path, "run-1")
    assert record(tmp_path)["error"] == {"message": "no thing in run-1"}
    (tmp_path / "fail").unlink()  # whatever failed is fixed: the run does not try again
    with pytest.raises(ContainerError, match="no thing in run-1") as again:
        ask(tmp_path, "run-1")
    assert again.value.__cause__ is None
    assert len(makes(tmp_path)) == 1
    # The next run tries again, and its success replaces the failure.
    assert ask(tmp_path, "run-2") == ("made by run-2", True)
    assert len(makes(tmp_path)) == 2
    assert record(tmp_path)["error"] is None


def test_an_error_that_is_no_failure_to_share_is_not_recorded(tmp_path: Path) -> None:
    once = OncePerRun(
        tmp_path / "thing.lock", tmp_path / "thing.json", run_id="run-1", timeout=5, what="x"
    )
    calls: list[str] = []

    def make() -> str:
        calls.append("make")
        raise ImageBuildError("not this time")

    for _ in range(2):
        with pytest.raises(ImageBuildError, match="not this time"):
            once.get(
                find=lambda: None,
                make=make,
                describe=lambda value: {},
                failure=lambda error: None,
                replay=lambda fields: AssertionError("replayed"),
            )
    assert calls == ["make", "make"]
    assert not (tmp_path / "thing.json").exists()


@pytest.mark.parametrize(
    "content", ["", '{"run_id": "run-1", "err', "[1, 2]", "\xff\xfe not json", "null"]
)
def test_a_corrupt_state_file_counts_as_no_record(tmp_path: Path, content: str) -> None:
    (tmp_path / "fail").touch()
    with pytest.raises(ContainerError):
        ask(tmp_path, "run-1")
    (tmp_path / "fail").unlink()
    (tmp_path / "thing.json").write_bytes(content.encode("latin-1"))
    assert ask(tmp_path, "run-1") == ("made by run-1", True)  # made, not replayed
    assert record(tmp_path)["error"] is None


def test_a_cache_dir_that_cannot_take_a_record_fails_nothing_by_itself(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A state file in a directory that is not there: every write of it fails.
    once = OncePerRun(
        tmp_path / "thing.lock",
        tmp_path / "gone" / "thing.json",
        run_id="run-1",
        timeout=5,
        what="the thing",
    )

    def ask_once(make: Callable[[], str]) -> tuple[str, bool]:
        return once.get(
            find=lambda: None,
            make=make,
            describe=lambda value: {"value": value},
            failure=lambda error: {"message": error.message},
            replay=lambda fields: AssertionError("replayed"),
        )

    assert ask_once(lambda: "made") == ("made", True)
    assert "the thing: not recorded: cannot write" in caplog.text

    def fail() -> str:
        raise ImageBuildError("the step failed", image="build:app", step="Step 2/3 : RUN x")

    with pytest.raises(ImageBuildError) as caught:
        ask_once(fail)
    error = caught.value
    assert error.message.startswith("the step failed (and the cache could not record it: ")
    assert str(tmp_path / "gone" / "thing.json") in error.message
    assert (error.image, error.step) == ("build:app", "Step 2/3 : RUN x")
    assert str(error) == error.message


def test_threads_asking_at_once_make_it_once(tmp_path: Path) -> None:
    (tmp_path / "slow").write_text("0.2")
    barrier = threading.Barrier(6)
    results: list[tuple[str, bool]] = []

    def work() -> None:
        barrier.wait()
        results.append(ask(tmp_path, "run-1"))

    threads = [threading.Thread(target=work) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(made for _, made in results) == [False] * 5 + [True]
    assert {value for value, _ in results} == {"made by run-1"}
    assert len(makes(tmp_path)) == 1


# -- several processes -------------------------------------------------------------------


def test_processes_asking_at_once_make_it_once(tmp_path: Path) -> None:
    (tmp_path / "slow").write_text("0.5")  # all of them ask while it is being made
    configs = [{"directory": str(tmp_path), "run_id": run_id} for run_id in ["run-1"] * 4]
    results = run_together(CHILD, configs, tmp_path / "go")
    assert sorted(result["made"] for result in results) == [False, False, False, True]
    assert len({result["value"] for result in results}) == 1
    assert len(makes(tmp_path)) == 1


def test_processes_of_a_run_share_its_failure_and_the_next_run_retries(tmp_path: Path) -> None:
    (tmp_path / "slow").write_text("0.5")
    (tmp_path / "fail").touch()
    configs = [{"directory": str(tmp_path), "run_id": "run-1"} for _ in range(3)]
    results = run_together(CHILD, configs, tmp_path / "go-1")
    assert results == [{"error": "no thing in run-1"}] * 3
    assert len(makes(tmp_path)) == 1

    (tmp_path / "fail").unlink()
    configs = [{"directory": str(tmp_path), "run_id": run_id} for run_id in ["run-1", "run-2"]]
    results = run_together(CHILD, configs, tmp_path / "go-2")
    by_run = {config["run_id"]: result for config, result in zip(configs, results, strict=True)}
    assert by_run["run-2"] == {"value": "made by run-2", "made": True}
    # run-1 replays its failure unless run-2 made the thing before run-1 looked again.
    assert by_run["run-1"] in (
        {"error": "no thing in run-1"},
        {"value": "made by run-2", "made": False},
    )
    assert len(makes(tmp_path)) == 2


def test_a_holder_killed_while_making_does_not_block_the_next(tmp_path: Path) -> None:
    dying = subprocess.Popen(
        [sys.executable, "-c", DIES_MAKING, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT / "src")),
    )
    try:
        assert dying.stdout is not None
        assert dying.stdout.readline().strip() == "making"
        with pytest.raises(ContainerError, match="timed out"):
            ask(tmp_path, "run-1", timeout=0.3)
        os.kill(dying.pid, signal.SIGKILL)
        assert dying.wait(10) == -signal.SIGKILL
    finally:
        if dying.poll() is None:
            dying.kill()
            dying.wait()
        if dying.stdout is not None:
            dying.stdout.close()
    started = time.monotonic()
    # The same run: the dead holder recorded nothing, so nothing is replayed.
    assert ask(tmp_path, "run-1", timeout=10) == ("made by run-1", True)
    assert time.monotonic() - started < 2
    with exclusive(tmp_path / "thing.lock", timeout=1, what="the thing"):
        pass
