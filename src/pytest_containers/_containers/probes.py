"""What the wait strategies look at, without a container: its inspect ``State`` read as
a reason it is not running, log lines counted as they stream, the kernel's socket tables
read for listening ports, a published port probed from the host, a port normalised.

Pure functions and small helpers, unit-tested on their own; :mod:`pytest_containers.wait`
applies them to a :class:`~pytest_containers.wait.WaitTarget`.
"""

from __future__ import annotations

import codecs
import ipaddress
import re
import socket
import time
import urllib.request
from typing import Any

__all__ = [
    "EXEC_CANNOT_RUN",
    "SOCKET_TABLES_SCRIPT",
    "LineCounter",
    "NoRedirects",
    "exit_reason",
    "has_healthcheck",
    "host_probe",
    "listening",
    "normalize_port",
    "port_repr",
]


def _remaining(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


def exit_reason(state: dict[str, Any]) -> str | None:
    """Why a container with inspect ``State`` ``state`` is not running, or ``None`` if it is."""
    if state.get("Running") and not state.get("Restarting") and not state.get("Paused"):
        return None
    status = state.get("Status") or "not running"
    if state.get("Paused"):
        return "is paused"
    code = state.get("ExitCode")
    if state.get("OOMKilled"):
        text = f"was OOM-killed (exit code {code})"
    elif status == "created":
        text = "never started"
    elif status == "restarting":
        text = f"is restarting after exiting with code {code}"
    elif status == "exited":
        text = f"exited with code {code}"
    else:
        text = f"is {status} (exit code {code})"
    if state.get("Error"):
        text += f": {state['Error']}"
    return text


# How the engine reports an exec whose executable is missing or cannot run (exit code
# 126 or 127), e.g. 'OCI runtime exec failed: exec failed: unable to start container
# process: exec: "sh": executable file not found in $PATH: unknown'. Other exec failures
# (such as a container that is just dying) do not match.
EXEC_CANNOT_RUN = re.compile(
    r'exec: "[^"]*": (executable file not found|stat [^:]*: no such file or directory'
    r"|permission denied)"
)


class LineCounter:
    """Counts log lines that match, fed with arbitrary chunks of bytes."""

    def __init__(self, pattern: re.Pattern[str]) -> None:
        self.pattern = pattern
        self.count = 0
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._partial = ""

    def feed(self, chunk: bytes) -> None:
        text = self._partial + self._decoder.decode(chunk)
        *lines, self._partial = text.split("\n")
        self.count += sum(1 for line in lines if self.pattern.search(line))

    def total(self) -> int:
        """Matches so far, counting a last line that has no newline yet."""
        return self.count + (1 if self._partial and self.pattern.search(self._partial) else 0)


# Prints the kernel's socket tables with only shell builtins, so it runs in busybox and in
# minimal Debian images alike. The lines of each table follow a "#tcp"-style header.
SOCKET_TABLES_SCRIPT = (
    "for t in tcp tcp6 udp udp6; do"
    ' if [ -r /proc/net/$t ]; then echo "#$t";'
    ' while read -r l; do echo "$l"; done < /proc/net/$t; fi; done'
)
_TCP_LISTEN = "0A"


def normalize_port(port: int | str) -> str:
    """``6379``, ``"6379"`` or ``"6379/tcp"`` -> ``"6379/tcp"``; ``"53/udp"`` stays."""
    if isinstance(port, bool) or not isinstance(port, (int, str)):
        raise TypeError(f"a port must be an int or a str like '6379/tcp', not {port!r}")
    text = str(port).strip().lower()
    number, _, protocol = text.partition("/")
    protocol = protocol or "tcp"
    if not number.isdigit() or not 0 < int(number) < 65536:
        raise ValueError(f"invalid port {port!r}: the number must be within 1-65535")
    if protocol not in ("tcp", "udp", "sctp"):
        raise ValueError(f"invalid port {port!r}: the protocol must be tcp, udp or sctp")
    return f"{int(number)}/{protocol}"


def port_repr(port: str) -> str:
    number, _, protocol = port.partition("/")
    return number if protocol == "tcp" else repr(port)


def _is_loopback(hex_address: str) -> bool:
    # /proc/net shows addresses as 32-bit words in the kernel's (little-endian) order.
    raw = b"".join(
        bytes.fromhex(hex_address[i : i + 8])[::-1] for i in range(0, len(hex_address), 8)
    )
    try:
        address = ipaddress.ip_address(raw)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def listening(tables: str) -> dict[str, bool]:
    """``"8080/tcp"`` -> whether something listens on it beyond loopback (``False``: only
    on loopback), for each port that has a listening TCP or bound UDP socket."""
    found: dict[str, bool] = {}
    table = ""
    for line in tables.splitlines():
        line = line.strip()
        if line.startswith("#"):
            table = line[1:]
            continue
        fields = line.split()
        if len(fields) < 4 or ":" not in fields[1] or not table:
            continue
        address, _, port_hex = fields[1].rpartition(":")
        protocol = table.rstrip("6")
        if protocol == "tcp" and fields[3] != _TCP_LISTEN:
            continue
        try:
            key = f"{int(port_hex, 16)}/{protocol}"
        except ValueError:
            continue
        found[key] = found.get(key, False) or not _is_loopback(address)
    return found


def host_probe(host: str, port: int, deadline: float) -> str | None:
    """Connect to a published port from the host; ``None`` when a service answers there.

    docker-proxy accepts the connection before the service listens and then closes it
    at once when it cannot reach the container, so a bare connect proves nothing. A
    connection that brings data, or that is still open after a short grace period, is
    taken as served; one closed or reset right away is not.
    """
    try:
        conn = socket.create_connection((host, port), timeout=min(1.0, _remaining(deadline)))
    except OSError as exc:
        return f"connecting to {host}:{port} failed: {exc}"
    with conn:
        conn.settimeout(0.25)
        try:
            data = conn.recv(1)
        except TimeoutError:
            return None
        except OSError as exc:
            return f"{host}:{port} accepted and then failed: {exc}"
        return None if data else f"{host}:{port} accepted and closed the connection at once"


class NoRedirects(urllib.request.HTTPRedirectHandler):
    # The status of the path asked for is what counts, not where it redirects to.
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def has_healthcheck(attrs: dict[str, Any]) -> bool:
    test = ((attrs.get("Config") or {}).get("Healthcheck") or {}).get("Test") or []
    return bool(test) and test[0] != "NONE"
