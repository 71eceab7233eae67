"""Faster than starting containers by hand: 8 tests, each needing a clean redis (it checks
that a key is absent, then sets it), run serially as a pytest subprocess, the plugin
against a hand-written docker-py suite that starts one container per test (create, start,
stream the logs until redis is ready, remove), measured side by side (alternating) in one
run. Three figures, each the ratio of median wall times (plugin / hand-written):

* function scope: the plugin's marker, one container per test (removal in the background,
  the next test's container started while this one runs). Target <= 0.8.
* the same with a 0.3 s sleep in each test, on both sides. Target <= 0.6.
* ``scope="session", reset=["redis-cli", "FLUSHALL"]``: one container, flushed before each
  test but the first. Target <= 0.35.
* the same with ``reuse=True`` and ``--container-reuse``, a second run: the container the
  warm-up run kept is taken again, flushed before the first test too. Target <= 0.25, and
  0 containers created by the measured runs (counted from the engine's events).

Every container it starts is removed at the end, even on failure.

    .venv/bin/python bench/speed.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import cast

import docker

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from startup import (  # noqa: E402
    BENCH_LABEL,
    HAND_REDIS_FIXTURES,
    REDIS_READY,
    RUN_LABEL,
    Cleanup,
    Run,
    run_suite,
    suite_environment,
)

from pytest_containers._manager.reuse import REUSE_DIR_LABEL  # noqa: E402
from tests.testenv import MIRROR_OPTION, REDIS, REGISTRY  # noqa: E402

CHECK = """
def check_clean(address):
    with socket.create_connection(address, timeout=5) as connection:
        connection.sendall(b"GET seen\\r\\n")
        assert connection.recv(64) == b"$-1\\r\\n", "not a clean redis"
        connection.sendall(b"SET seen 1\\r\\n")
        assert connection.recv(64) == b"+OK\\r\\n"
    time.sleep(float(os.environ["PCTBENCH_SLEEP"]))
"""

PLUGIN_SUITE = f"""\
import os, socket, time

import pytest

from pytest_containers import wait
{CHECK}

@pytest.mark.parametrize("n", range(8))
@pytest.mark.container({REDIS!r}, ports=[6379], wait=wait.for_log({REDIS_READY!r}){{extra}})
def test_clean(container, n):
    check_clean(container.address(6379))
"""

HAND_SUITE = f"""\
import os, socket, time

import docker
import docker.errors
import pytest

IMAGE = {f"{REGISTRY}/library/{REDIS}"!r}
LABELS = {{{BENCH_LABEL!r}: os.environ["PCTBENCH_ID"]}}
{CHECK}

{HAND_REDIS_FIXTURES}

@pytest.mark.parametrize("n", range(8))
def test_clean(redis, n):
    check_clean(redis)
"""

#: (figure, the suite's variant, sleep per test, target ratio)
SCENARIOS = (
    ("function scope, serial", "", 0.0, 0.8),
    ("function scope, 0.3 s sleep per test", "", 0.3, 0.6),
    ('scope="session", reset=["redis-cli", "FLUSHALL"]', "session-reset", 0.0, 0.35),
    ('second run with reuse=True and reset=["redis-cli", "FLUSHALL"]', "reuse", 0.0, 0.25),
)
RESET = ', scope="session", reset=["redis-cli", "FLUSHALL"]'
REUSE = RESET + ", reuse=True"


def created(client: docker.DockerClient, since: float, labels: list[str]) -> int:
    """How many containers the engine created since ``since`` with any of ``labels``."""
    # The engine takes fractional seconds; the stubs say int.
    until = cast("int", time.time() + 0.5)
    filters = {"type": "container", "event": "create"}
    return sum(
        1
        for label in labels
        for _ in client.events(
            since=cast("int", since), until=until, filters={**filters, "label": label}, decode=True
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3, help="runs of each suite per figure")
    args = parser.parse_args()
    client = docker.from_env(timeout=120)
    cleanup = Cleanup()
    base = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    results: list[tuple[str, float, float, float]] = []
    reuse_labels: list[str] = []
    try:
        with tempfile.TemporaryDirectory(prefix="pctbench-speed-") as tmp:
            root = Path(tmp)
            suites = {
                "function": PLUGIN_SUITE.replace("{extra}", ""),
                "session-reset": PLUGIN_SUITE.replace("{extra}", RESET),
                "reuse": PLUGIN_SUITE.replace("{extra}", REUSE),
                "hand": HAND_SUITE,
            }
            for name, source in suites.items():
                (root / name).mkdir()
                (root / name / "pytest.ini").write_text("[pytest]\n")
                (root / name / "test_redis.py").write_text(source)
            cache_dir = root / "cache"
            reuse_label = f"{REUSE_DIR_LABEL}={os.path.abspath(cache_dir)}"
            reuse_labels.append(reuse_label)

            def plugin(directory: Path, env: dict[str, str]) -> Run:
                run_id = uuid.uuid4().hex
                cleanup.run_ids.append(run_id)
                options = [MIRROR_OPTION, f"--container-cache-dir={cache_dir}"]
                if directory.name == "reuse":
                    options.append("--container-reuse")
                return run_suite(directory, [*base, *options, f"--testrunuid={run_id}"], env)

            def hand(env: dict[str, str]) -> Run:
                return run_suite(root / "hand", [*base, "-p", "no:containers"], env)

            for figure, variant, sleep, target in SCENARIOS:
                env = suite_environment(cleanup.bench_id, root / "pycache")
                env["PCTBENCH_SLEEP"] = str(sleep)
                directory = root / (variant or "function")
                plugin(directory, env)  # warm up: byte-code, the image cache's state
                hand(env)
                mine: list[float] = []
                theirs: list[float] = []
                since = time.time()
                for index in range(args.rounds):
                    if index % 2:
                        theirs.append(hand(env)[0])
                        mine.append(plugin(directory, env)[0])
                    else:
                        mine.append(plugin(directory, env)[0])
                        theirs.append(hand(env)[0])
                ratio = statistics.median(mine) / statistics.median(theirs)
                results.append((figure, statistics.median(mine), statistics.median(theirs), ratio))
                verdict = "ok" if ratio <= target else "MISSED"
                made = ""
                if variant == "reuse":
                    # The plugin's runs only: their own labels, and the reused ones'.
                    labels = [reuse_label] + [f"{RUN_LABEL}={r}" for r in cleanup.run_ids]
                    count = created(client, since, labels)
                    verdict += "" if count == 0 else ", MISSED"
                    made = f", {count} containers created by the measured plugin runs"
                print(
                    f"{figure}: plugin {statistics.median(mine):.2f} s, hand-written "
                    f"{statistics.median(theirs):.2f} s, ratio {ratio:.2f}{made} "
                    f"(target <= {target}: {verdict})",
                    flush=True,
                )
    finally:
        # Reused containers carry no run label: they go by their cache dir's.
        for label in reuse_labels:
            for entry in client.api.containers(all=True, filters={"label": label}):
                with contextlib.suppress(docker.errors.APIError):
                    client.api.remove_container(entry["Id"], force=True, v=True)
        removed = cleanup.remove(client)
        if removed:
            print(f"removed {removed} leftover container(s)")
        client.close()


if __name__ == "__main__":
    main()
