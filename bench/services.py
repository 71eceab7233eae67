"""Do independent services start concurrently?

Starts, through the plugin's core (the code the session start runs), a redis service
alone, a busybox service that sleeps about a second before it logs "ready" alone, and the
two together, alternating, and prints the median wall time to ready of each side by side
and the ratio of "both" to the slower one alone. The target is a ratio within 1.2: two
services cost what the slower one costs. Images are pulled before the first round.

    .venv/bin/python bench/services.py [--rounds 7] [--sleep 1.0]

The mirror is read from PYTEST_CONTAINERS_MIRROR (``eval "$(scripts/testenv.sh)"``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import uuid
from pathlib import Path

from pytest_containers import service, wait
from pytest_containers._base.settings import Settings
from pytest_containers._manager.manager import ContainerManager
from pytest_containers._manager.services import Service, start_services, stop_services

REDIS = service(
    "redis:7", name="redis", ports=[6379], wait=wait.for_log("Ready to accept connections")
)


def slow_service(sleep: float) -> Service:
    return service(
        "busybox:1.35",
        name="slow",
        command=["sh", "-c", f"sleep {sleep:g}; echo ready; sleep 600"],
        wait=wait.for_log("ready"),
    )


def time_to_ready(manager: ContainerManager, services: list[Service]) -> float:
    started = time.perf_counter()
    running = start_services(manager, services, base_dir=Path.cwd())
    elapsed = time.perf_counter() - started
    stop_services(manager, running)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--sleep", type=float, default=1.0, help="seconds before 'ready'")
    args = parser.parse_args()
    slow = slow_service(args.sleep)
    mirror = os.environ.get("PYTEST_CONTAINERS_MIRROR") or None
    manager = ContainerManager(Settings(mirror=mirror), run_id=uuid.uuid4().hex, worker="bench")
    cases = {"redis alone": [REDIS], "slow alone": [slow], "both": [REDIS, slow]}
    times: dict[str, list[float]] = {name: [] for name in cases}
    try:
        for declared in (REDIS, slow):  # warm: the pulls are not what is measured
            manager.image(declared.display)
        for _ in range(args.rounds):
            for name, services in cases.items():
                times[name].append(time_to_ready(manager, services))
    finally:
        manager.close()
        manager.remove_run_containers()
        manager.guard.stop()
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, median in medians.items():
        spread = ", ".join(f"{value:.2f}" for value in times[name])
        print(f"{name:<12} {median:6.2f} s  (median of {args.rounds}: {spread})")
    slower = max(medians["redis alone"], medians["slow alone"])
    ratio = medians["both"] / slower
    verdict = "within" if ratio <= 1.2 else "ABOVE"
    print(
        f"both / slower alone = {medians['both']:.2f} / {slower:.2f} = {ratio:.2f} ({verdict} 1.2)"
    )


if __name__ == "__main__":
    main()
