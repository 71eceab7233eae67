"""What the plugin costs a suite that uses no container.

Runs a generated suite of 1,000 trivial tests with the plugin and with ``-p no:containers``,
alternating the two, and prints the median wall time and CPU time (user + system, of the
pytest process) of each and their ratios. The target is a ratio within 1.05. CPU time is the
steadier figure on a busy machine; wall time is what a user waits.

    .venv/bin/python bench/overhead.py [--tests 1000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def write_suite(directory: Path, tests: int) -> None:
    per_file = 100
    for index in range(0, tests, per_file):
        body = "".join(
            f"def test_{n}():\n    assert {n} == {n}\n\n"
            for n in range(index, min(index + per_file, tests))
        )
        (directory / f"test_plain_{index // per_file}.py").write_text(body)


def run_pytest(directory: Path, *extra: str, env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU seconds of one pytest run."""
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *extra]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run(
        command, cwd=directory, capture_output=True, text=True, check=False, env=env
    )
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise SystemExit(f"pytest failed ({result.returncode}):\n{result.stdout}{result.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return elapsed, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tests", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        write_suite(directory, args.tests)
        (directory / "pytest.ini").write_text("[pytest]\n")
        # An installed plugin has its byte-code compiled; an editable checkout under
        # PYTHONDONTWRITEBYTECODE would recompile it in every run. Both sides share a cache.
        env = {**os.environ, "PYTHONPYCACHEPREFIX": str(directory / ".pycache")}
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        run_pytest(directory, env=env)  # warm the file cache and byte-code
        with_plugin: list[tuple[float, float]] = []
        without_plugin: list[tuple[float, float]] = []
        for _ in range(args.rounds):
            with_plugin.append(run_pytest(directory, env=env))
            without_plugin.append(run_pytest(directory, "-p", "no:containers", env=env))
    print(f"{args.tests} tests without containers, median of {args.rounds} rounds")
    for index, what in enumerate(("wall", "cpu")):
        on = statistics.median(times[index] for times in with_plugin)
        off = statistics.median(times[index] for times in without_plugin)
        print(
            f"  {what:<4}  with pytest-containers {on:.3f} s, with -p no:containers {off:.3f} s,"
            f" ratio {on / off:.3f} (target <= 1.05)"
        )


if __name__ == "__main__":
    main()
