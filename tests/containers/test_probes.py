"""What the waits read off a container, without one: pure."""

from __future__ import annotations

from typing import Any

import pytest

from pytest_containers._containers.probes import exit_reason, normalize_port


@pytest.mark.parametrize(
    ("state", "reason"),
    [
        ({"Running": True, "Status": "running"}, None),
        ({"Running": True, "Paused": True, "Status": "paused"}, "is paused"),
        (
            {"Status": "exited", "ExitCode": 137, "OOMKilled": True},
            "was OOM-killed (exit code 137)",
        ),
        ({"Status": "created"}, "never started"),
        (
            {"Running": True, "Restarting": True, "Status": "restarting", "ExitCode": 1},
            "is restarting after exiting with code 1",
        ),
        ({"Status": "exited", "ExitCode": 3}, "exited with code 3"),
        ({"Status": "dead", "ExitCode": 0}, "is dead (exit code 0)"),
        ({}, "is not running (exit code None)"),
        (
            {"Status": "created", "Error": "exec: no such file"},
            "never started: exec: no such file",
        ),
    ],
)
def test_exit_reason_says_why_a_container_is_not_running(
    state: dict[str, Any], reason: str | None
) -> None:
    assert exit_reason(state) == reason


@pytest.mark.parametrize(
    ("port", "error", "says"),
    [
        (True, TypeError, "must be an int or a str"),
        (6379.0, TypeError, "must be an int or a str"),
        ("http", ValueError, "1-65535"),
        (0, ValueError, "1-65535"),
        ("53/quic", ValueError, "tcp, udp or sctp"),
    ],
)
def test_a_port_that_is_none_says_so(port: Any, error: type[Exception], says: str) -> None:
    with pytest.raises(error, match=says):
        normalize_port(port)


def test_ports_are_normalised() -> None:
    assert normalize_port(" 6379/TCP ") == "6379/tcp"
    assert normalize_port("0053/udp") == "53/udp"
