#!/usr/bin/env python3
"""A kubedock stand-in for the test environment: a Docker API on a unix socket that
forwards to the real engine and answers, where kubedock differs, as kubedock does.

    scripts/kubedock-standin.py --listen /path/kubedock.sock [--engine /var/run/docker.sock]

kubedock (github.com/joyrex2001/kubedock) serves the Docker API on top of Kubernetes.
What this stand-in takes from its source (internal/server/routes/docker.go,
routes/docker/system.go, config/system.go, routes/common/logs.go, backend/logs.go,
util/ioproxy/ioproxy.go, routes/common/exec.go, routes/docker/networks.go):

* ``/info`` answers ``ID com.joyrex2001.kubedock``, ``Name kubedock``, ``ServerVersion``
  (kubedock's own version), ``OperatingSystem kubernetes``, ``MemTotal 0``, ``Labels``;
  ``/version`` answers ``Version``, ``ApiVersion`` and ``MinAPIVersion`` all ``1.25``
  and no ``Components``; ``/_ping`` answers ``OK`` with ``API-Version: 1.25``. Clients
  that negotiate (docker-py, the docker CLI) then talk ``/v1.25/`` paths, which the real
  engine accepts. kubedock strips any ``/v1.NN`` prefix before routing; so does this.
* ``POST /build``, ``POST /images/load``, ``POST /images/{name}/tag``, the volumes API
  (``GET /volumes``, ``/volumes/{id}``, ``POST /volumes/create``, ``DELETE``),
  ``POST /containers/prune`` and a container's ``top``, ``changes``, ``export``,
  ``stats``, ``update``, ``pause``, ``unpause`` answer ``501 Not Implemented`` with an
  empty body, as kubedock's ``httputil.NotImplemented`` does.
* Logs: kubedock reads the pod's log, where Kubernetes has merged stdout and stderr,
  ignores the ``stdout``/``stderr`` parameters and frames everything as stdout (stream
  1 of the multiplexed format). This asks the engine for both and rewrites every
  frame's stream to 1.
* Exec with environment variables answers ``400 {"message": "env variables not
  supported"}``, as kubedock does; exec output keeps stdout and stderr apart there too.
* Everything else (containers, exec start and attach, which hijack the connection,
  pulls, networks, events) is forwarded to the engine byte for byte.

Where it differs from kubedock, for practical reasons:

* Networks are the engine's: kubedock keeps them in memory, flattens them (every pod
  reaches every other) and makes a Kubernetes Service of each alias of a container that
  declares ports, reporting 127.0.0.1 as every container's address. Here aliases resolve
  through the engine's DNS whether or not ports are declared, and addresses are real.
* Pulls really pull (kubedock only records the name and answers "Download complete"),
  and image inspect answers the engine's data, not kubedock's made-up one.
* Volumes and bind mounts are the engine's, not copied one way at start.
* A TTY container's log is passed through unframed (kubedock frames it too).

Python's standard library only; one thread per client connection. Each forwarded
request gets a connection of its own to the engine and ``Connection: close``, so that
every request on a client's connection is routed here, never tunnelled past it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import socket
import socketserver
import sys
import threading
import urllib.parse
from collections.abc import Iterator

API_VERSION = "1.25"
#: kubedock's own version, as its /info's ServerVersion says it.
KUBEDOCK_VERSION = "0.18.0-standin"

INFO = {
    "ID": "com.joyrex2001.kubedock",
    "Name": "kubedock",
    "ServerVersion": KUBEDOCK_VERSION,
    "OperatingSystem": "kubernetes",
    "MemTotal": 0,
    "Labels": [],
}
VERSION = {
    "Version": API_VERSION,
    "ApiVersion": API_VERSION,
    "MinAPIVersion": API_VERSION,
    "GitCommit": "standin",
    "BuildTime": "standin",
    "GoVersion": "none",
    "Os": "linux",
    "Arch": "amd64",
}

#: (method, path pattern) kubedock answers 501 Not Implemented, versions stripped.
NOT_IMPLEMENTED = [
    (method, re.compile(pattern))
    for method, pattern in [
        ("POST", r"/build"),
        ("POST", r"/images/load"),
        ("POST", r"/images/.+/tag"),
        ("GET", r"/volumes"),
        ("GET", r"/volumes/[^/]+"),
        ("DELETE", r"/volumes/[^/]+"),
        ("POST", r"/volumes/create"),
        ("POST", r"/containers/prune"),
        ("GET", r"/containers/[^/]+/(top|changes|export|stats|attach/ws)"),
        ("POST", r"/containers/[^/]+/(update|pause|unpause)"),
    ]
]
_VERSIONED = re.compile(r"^/v1\.[0-9]+(?=/)")
_LOGS = re.compile(r"^/containers/([^/]+)/logs$")
_EXEC_CREATE = re.compile(r"^/containers/([^/]+)/exec$")


class Request:
    """A request's head as read from the client, and the bytes read past it."""

    def __init__(self, head: bytes, rest: bytes) -> None:
        lines = head.decode("latin-1").split("\r\n")
        self.method, self.target, self.protocol = lines[0].split(" ", 2)
        self.headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                self.headers.append((name.strip(), value.strip()))
        self.rest = rest
        parts = urllib.parse.urlsplit(self.target)
        self.path = _VERSIONED.sub("", parts.path)
        self.query = parts.query

    def header(self, name: str) -> str:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return ""

    def head_bytes(self, *, target: str | None = None, close: bool = True) -> bytes:
        """The head to send the engine; ``close`` asks it to end the connection after
        its answer (hop-by-hop ``Connection`` replaced)."""
        lines = [f"{self.method} {target or self.target} {self.protocol}"]
        for name, value in self.headers:
            if close and name.lower() in ("connection", "keep-alive"):
                continue
            lines.append(f"{name}: {value}")
        if close:
            lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def read_head(conn: socket.socket, buffer: bytes = b"") -> tuple[bytes, bytes] | None:
    """The head (up to the blank line) and what came after it; None at end of input."""
    while b"\r\n\r\n" not in buffer:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        buffer += chunk
        if len(buffer) > 1 << 20:
            raise ValueError("request head too long")
    head, _, rest = buffer.partition(b"\r\n\r\n")
    return head, rest


def read_body(conn: socket.socket, request: Request) -> bytes:
    """The request's whole body (Content-Length or chunked); the client must be read to
    its end before an answer, or it sees a reset instead of the answer."""
    data = request.rest
    if request.header("Transfer-Encoding").lower() == "chunked":
        body = b""
        while True:
            while b"\r\n" not in data:
                data += _recv(conn)
            size_line, _, data = data.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            while len(data) < size + 2:
                data += _recv(conn)
            body += data[:size]
            data = data[size + 2 :]
            if size == 0:
                return body
    length = int(request.header("Content-Length") or 0)
    while len(data) < length:
        data += _recv(conn)
    return data[:length]


def _recv(conn: socket.socket) -> bytes:
    chunk = conn.recv(65536)
    if not chunk:
        raise ConnectionError("the client closed mid-request")
    return chunk


def respond(conn: socket.socket, status: str, body: bytes = b"", **headers: str) -> None:
    lines = [f"HTTP/1.1 {status}", f"Content-Length: {len(body)}", "Connection: close"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)


def respond_json(conn: socket.socket, status: str, data: object) -> None:
    respond(conn, status, json.dumps(data).encode(), Content_Type="application/json")


class Handler(socketserver.BaseRequestHandler):
    engine: str = "/var/run/docker.sock"

    def handle(self) -> None:
        conn: socket.socket = self.request
        try:
            found = read_head(conn)
            if found is None:
                return
            self.route(conn, Request(*found))
        except (OSError, ValueError):
            pass  # a client or the engine went away; nothing to tell anyone
        finally:
            with contextlib.suppress(OSError):
                conn.close()

    def engine_connection(self) -> socket.socket:
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        upstream.connect(self.engine)
        return upstream

    def route(self, conn: socket.socket, request: Request) -> None:
        method, path = request.method, request.path
        logs = _LOGS.match(path)
        if path == "/_ping" and method in ("GET", "HEAD"):
            respond(conn, "200 OK", b"OK", API_Version=API_VERSION, Content_Type="text/plain")
        elif path == "/info" and method == "GET":
            respond_json(conn, "200 OK", INFO)
        elif path == "/version" and method == "GET":
            respond_json(conn, "200 OK", VERSION)
        elif any(method == m and pattern.fullmatch(path) for m, pattern in NOT_IMPLEMENTED):
            read_body(conn, request)
            respond(conn, "501 Not Implemented")
        elif method == "POST" and _EXEC_CREATE.match(path):
            self.exec_create(conn, request)
        elif method == "GET" and logs is not None:
            self.logs(conn, request, logs.group(1))
        else:
            self.forward(conn, request)

    def exec_create(self, conn: socket.socket, request: Request) -> None:
        body = read_body(conn, request)
        try:
            env = json.loads(body or b"{}").get("Env")
        except ValueError:
            env = None
        if env:
            respond_json(conn, "400 Bad Request", {"message": "env variables not supported"})
            return
        request.rest = body
        request.headers = [
            (name, value)
            for name, value in request.headers
            if name.lower() not in ("content-length", "transfer-encoding")
        ] + [("Content-Length", str(len(body)))]
        self.forward(conn, request)

    def forward(self, conn: socket.socket, request: Request) -> None:
        """Send the request on to the engine and pump bytes both ways until the engine
        is done: a plain answer (the engine closes after it), a stream, or a hijacked
        connection (attach, exec start), whose stdin goes on flowing to the engine."""
        hijack = bool(request.header("Upgrade"))
        upstream = self.engine_connection()
        try:
            upstream.sendall(request.head_bytes(close=not hijack) + request.rest)
            pump = threading.Thread(target=_pump, args=(conn, upstream), daemon=True)
            pump.start()
            _pump(upstream, conn)
        finally:
            with contextlib.suppress(OSError):
                upstream.close()

    def logs(self, conn: socket.socket, request: Request, container: str) -> None:
        """Both streams, every frame marked stdout: kubedock's merged pod log."""
        query = [
            (key, value)
            for key, value in urllib.parse.parse_qsl(request.query, keep_blank_values=True)
            if key not in ("stdout", "stderr")
        ] + [("stdout", "1"), ("stderr", "1")]
        target = urllib.parse.urlsplit(request.target).path + "?" + urllib.parse.urlencode(query)
        tty = self.is_tty(container)
        upstream = self.engine_connection()
        try:
            upstream.sendall(request.head_bytes(target=target))
            found = read_head(upstream)
            if found is None:
                return
            head, rest = found
            status = head.split(b"\r\n", 1)[0]
            if b" 200 " not in status + b" " or tty:
                conn.sendall(head + b"\r\n\r\n" + rest)
                _pump(upstream, conn)
                return
            chunked = b"transfer-encoding: chunked" in head.lower()
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.docker.raw-stream\r\n"
                b"Connection: close\r\n\r\n"
            )
            merge = _Merger(conn)
            body = _dechunk(upstream, rest) if chunked else _raw(upstream, rest)
            for data in body:
                merge.feed(data)
        finally:
            with contextlib.suppress(OSError):
                upstream.close()

    def is_tty(self, container: str) -> bool:
        upstream = self.engine_connection()
        try:
            quoted = urllib.parse.quote(container)
            upstream.sendall(
                f"GET /containers/{quoted}/json HTTP/1.1\r\nHost: docker\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            data = b""
            while chunk := upstream.recv(65536):
                data += chunk
        finally:
            upstream.close()
        return b'"Tty":true' in data


class _Merger:
    """Rewrites a multiplexed stream as it passes: every frame's stream byte becomes 1."""

    def __init__(self, out: socket.socket) -> None:
        self.out = out
        self.head = b""
        self.left = 0  # payload bytes of the current frame still to pass

    def feed(self, data: bytes) -> None:
        output = bytearray()
        while data:
            if self.left:
                take = data[: self.left]
                output += take
                self.left -= len(take)
                data = data[len(take) :]
                continue
            need = 8 - len(self.head)
            self.head += data[:need]
            data = data[need:]
            if len(self.head) == 8:
                output += b"\x01" + self.head[1:]
                self.left = int.from_bytes(self.head[4:8], "big")
                self.head = b""
        if output:
            self.out.sendall(bytes(output))


def _raw(upstream: socket.socket, rest: bytes) -> Iterator[bytes]:
    if rest:
        yield rest
    while chunk := upstream.recv(65536):
        yield chunk


def _dechunk(upstream: socket.socket, data: bytes) -> Iterator[bytes]:
    """The payload of a chunked body, as it comes."""
    while True:
        while b"\r\n" not in data:
            chunk = upstream.recv(65536)
            if not chunk:
                return
            data += chunk
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            return
        while len(data) < size + 2:
            chunk = upstream.recv(65536)
            if not chunk:
                yield data[:size]
                return
            data += chunk
        yield data[:size]
        data = data[size + 2 :]


def _pump(source: socket.socket, sink: socket.socket) -> None:
    """Copy until ``source`` ends, then end ``sink``'s direction (a half close, so that
    an exec's stdin can end while its output still flows)."""
    try:
        while chunk := source.recv(65536):
            sink.sendall(chunk)
    except OSError:
        pass
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, help="the unix socket to serve on")
    parser.add_argument("--engine", default="/var/run/docker.sock", help="the engine's socket")
    args = parser.parse_args()
    Handler.engine = args.engine
    with contextlib.suppress(FileNotFoundError):
        os.unlink(args.listen)
    server = Server(args.listen, Handler)
    os.chmod(args.listen, 0o660)
    # SIGTERM (topology.sh --stop, a test's fixture) ends it cleanly, socket removed.
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(f"kubedock stand-in on {args.listen} -> {args.engine}", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(args.listen)
    return 0


if __name__ == "__main__":
    sys.exit(main())
