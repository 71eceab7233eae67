"""Streams from the engine that this process must be able to cut off.

* :func:`follow_logs` follows a container's output on every transport (docker-py cannot
  cancel a stream over ssh, so there the logs are polled).
* :class:`EngineStream` runs one of docker-py's streaming calls (a pull's or a build's
  progress) and keeps the HTTP response under it, so that :meth:`EngineStream.abort` can
  cut the connection from any thread: the engine then cancels the pull or the build, and
  a thread blocked reading the stream wakes up. The response is taken from requests'
  public response hook, in the thread that makes the call, not from docker-py's
  internals.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar, cast

import requests

from pytest_containers._engine.endpoint import Endpoint

if TYPE_CHECKING:
    import docker
    import docker.models.containers

__all__ = ["EngineStream", "LogFollower", "follow_logs"]

T = TypeVar("T")


# --- a pull's or a build's stream -----------------------------------------------------------


class _Capture(threading.local):
    """The responses the current thread's calls received while a capture is on."""

    responses: list[requests.Response] | None = None


_CAPTURE = _Capture()
_HOOKED_LOCK = threading.Lock()


def _remember(response: requests.Response, *args: Any, **kwargs: Any) -> requests.Response:
    captured = _CAPTURE.responses
    if captured is not None:
        captured.append(response)
    return response


def _hook(client: docker.DockerClient) -> None:
    """Have ``client``'s session hand every response to :func:`_remember` (docker-py's
    APIClient is a requests Session; the hook does nothing unless a capture is on). An
    API object that is no Session has no response to cut: the stream then only closes."""
    hooks = getattr(client.api, "hooks", None)
    if not isinstance(hooks, dict):
        return
    with _HOOKED_LOCK:
        chain = hooks.setdefault("response", [])
        if _remember not in chain:
            chain.append(_remember)


def _cut(response: requests.Response) -> None:
    """Cut the connection under ``response``: close() alone does not wake a thread
    blocked in a read, a shutdown of the socket does."""
    connection = getattr(response.raw, "connection", None)
    sock = getattr(connection, "sock", None)
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
    # Best effort: the connection may be half gone already.
    with contextlib.suppress(Exception):
        response.close()


class EngineStream:
    """One streaming call to the engine that another thread (or a ``finally``) can abort.

    Make it, then :meth:`open` it with the call in the thread that reads it; :meth:`abort`
    works before, during and after :meth:`open`: aborted before the engine answered, the
    stream is cut as soon as the answer comes.
    """

    def __init__(self, client: docker.DockerClient) -> None:
        self._client = client
        self._lock = threading.Lock()
        self._response: requests.Response | None = None
        self._entries: Iterator[Any] | None = None
        self._aborted = False

    def open(self, call: Callable[[], Iterator[T]]) -> Iterator[T]:
        """Run ``call`` (a docker-py call on ``client.api`` with ``stream=True``) and
        return its entries; an aborted stream yields nothing more."""
        _hook(self._client)
        captured: list[requests.Response] = []
        _CAPTURE.responses = captured
        try:
            entries = call()
        finally:
            _CAPTURE.responses = None
        with self._lock:
            self._response = captured[-1] if captured else None
            self._entries = entries
            aborted = self._aborted
        if aborted:
            self.abort()
            return iter(())
        return entries

    def abort(self) -> None:
        """Cut the stream: the engine cancels what it was doing for it."""
        with self._lock:
            self._aborted = True
            response, entries = self._response, self._entries
        if response is not None:
            _cut(response)
        close = getattr(entries, "close", None)
        if close is not None:
            # A generator another thread is running cannot be closed; cutting the
            # response has ended it already.
            with contextlib.suppress(Exception):
                close()


# --- following logs on every transport --------------------------------------------------------


class LogFollower:
    """A container's output as it comes, and a :meth:`close` that ends the iteration from
    another thread. Over ssh docker-py cannot cut a stream, so there the logs are polled."""

    def __init__(
        self,
        raw: docker.models.containers.Container,
        *,
        since: float | None,
        poll_interval: float = 0.2,
    ) -> None:
        self._raw = raw
        self._since = since
        self._poll_interval = poll_interval
        self._closed = threading.Event()
        self._stream: Any = None
        self._polling = is_ssh_client(raw.client)
        if not self._polling:
            self._stream = raw.logs(stream=True, follow=True, stdout=True, stderr=True, since=since)

    def __iter__(self) -> Iterator[bytes]:
        if self._stream is not None:
            yield from self._stream
            return
        yield from self._poll()

    def _poll(self) -> Iterator[bytes]:
        seen = 0
        while not self._closed.is_set():
            data: bytes = self._raw.logs(stdout=True, stderr=True, since=self._since)
            if len(data) > seen:
                yield data[seen:]
                seen = len(data)
            self._raw.reload()
            if self._raw.status not in ("running", "created", "restarting"):
                # One last read: the final lines may have come with the exit.
                data = self._raw.logs(stdout=True, stderr=True, since=self._since)
                if len(data) > seen:
                    yield data[seen:]
                return
            self._closed.wait(self._poll_interval)

    def close(self) -> None:
        self._closed.set()
        if self._stream is not None:
            close: Callable[[], None] = self._stream.close
            with contextlib.suppress(Exception):  # already ended, or cannot cancel
                close()


def is_ssh_client(client: Any) -> bool:
    api = getattr(client, "api", client)
    endpoint = getattr(client, "pytest_containers_endpoint", None)
    if isinstance(endpoint, Endpoint):
        return endpoint.scheme == "ssh"
    return "ssh" in str(getattr(api, "base_url", ""))


def follow_logs(
    raw: docker.models.containers.Container, *, since: float | None = None
) -> LogFollower:
    """Follow ``raw``'s output (from ``since``, a Unix time); see :class:`LogFollower`."""
    return LogFollower(raw, since=since)


# --- exec output, whole -------------------------------------------------------------------


def run_exec(
    client: docker.DockerClient,
    container_id: str,
    command: str | list[str],
    *,
    environment: dict[str, str] | None,
    user: str,
    workdir: str | None,
) -> tuple[int, bytes, bytes]:
    """Run ``command`` in the container: its exit code, stdout and stderr.

    docker-py hijacks the connection and reads the output from the raw socket, past the
    HTTP reader's buffer: over tcp, output that came in the same packet as the response's
    head is lost (a short command's often is). Without ``Upgrade`` the engine sends the
    same stream as a body that ends when the connection closes, read whole here. Over ssh
    docker-py's own way stays (its channel has no such buffer).
    """
    import docker.errors

    api = client.api
    created = api.exec_create(
        container_id,
        command,
        stdout=True,
        stderr=True,
        environment=environment,
        user=user,
        workdir=workdir,
    )
    exec_id = str(created["Id"])
    if is_ssh_client(client):
        output = api.exec_start(exec_id, demux=True)
        stdout, stderr = output if isinstance(output, tuple) else (output, None)
        out, err = stdout or b"", stderr or b""
    else:
        url = f"{api.base_url}/v{api.api_version}/exec/{exec_id}/start"
        response = api.post(url, json={"Detach": False, "Tty": False}, timeout=None)
        try:
            try:
                response.raise_for_status()
            except requests.exceptions.HTTPError as error:
                # As docker-py's own calls raise it (NotFound, APIError), for the callers.
                docker.errors.create_api_error_from_http_exception(error)
            out, err = _demux(response.content)
        finally:
            response.close()
    exit_code = api.exec_inspect(exec_id).get("ExitCode")
    return (int(exit_code) if exit_code is not None else -1), out, err


def _demux(data: bytes) -> tuple[bytes, bytes]:
    """The engine's multiplexed stream (frames of an 8-byte head: the stream, 1 for
    stdout and 2 for stderr, then the length, big-endian, in bytes 4 to 8) split into
    stdout and stderr."""
    streams: dict[int, list[bytes]] = {1: [], 2: []}
    at = 0
    while at + 8 <= len(data):
        kind, size = _frame_head(data[at : at + 8])
        streams.setdefault(kind, []).append(data[at + 8 : at + 8 + size])
        at += 8 + size
    return b"".join(streams[1]), b"".join(streams[2])


def _frame_head(head: bytes) -> tuple[int, int]:
    """A multiplexed frame's stream (1 stdout, 2 stderr) and payload size."""
    return head[0], int.from_bytes(head[4:8], "big")


# --- a shell kept open for commands run again and again ----------------------------------


#: Linux's TCP_QUICKACK (None elsewhere: there the reads just wait for delayed acks).
_TCP_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)


class ShellClosed(Exception):
    """The shell session ended, or never answered: run the command another way."""


class ShellSession:
    """One ``sh`` kept running in a container by an exec with stdin, running commands one
    after another.

    An exec costs the engine a runtime call (about 50 ms on Docker, most of a reset's
    time); a command the open shell runs costs one process in the container. For
    ``reset=``, which runs before every test. Each command runs in a subshell with stdin
    from ``/dev/null``, then the shell prints a random marker and the exit code on stdout
    and the marker on stderr, which end its output. Nothing comes from the shell before
    the first command, so no output is lost to the HTTP reader's buffer (see
    :func:`run_exec`).

    Raises :class:`ShellClosed` when the shell does not answer a first ``true`` within
    ``answer_timeout`` seconds (an image without ``sh``, an engine that does not hijack),
    and from :meth:`run` when the session ended before the command's end.
    """

    def __init__(
        self, client: docker.DockerClient, container_id: str, *, answer_timeout: float = 10.0
    ) -> None:
        api = client.api
        created = api.exec_create(container_id, ["sh"], stdin=True, stdout=True, stderr=True)
        holder = api.exec_start(str(created["Id"]), socket=True)
        self._holder = holder
        # docker-py hands unix and tcp sockets over wrapped in a SocketIO.
        self._socket = cast("socket.socket", getattr(holder, "_sock", holder))
        self._buffer = b""
        self._lock = threading.Lock()
        family = getattr(self._socket, "family", None)
        self._tcp = _TCP_QUICKACK is not None and family in (socket.AF_INET, socket.AF_INET6)
        try:
            code, _, _ = self.run(["true"], timeout=answer_timeout)
        except (OSError, ShellClosed) as error:
            self.close()
            raise ShellClosed(f"the shell did not answer: {error}") from None
        if code != 0:
            self.close()
            raise ShellClosed(f"the shell's `true` exited with {code}")

    def run(self, command: list[str], *, timeout: float | None = None) -> tuple[int, bytes, bytes]:
        """Run ``command``: its exit code, stdout and stderr."""
        import shlex
        import uuid

        marker = f"pct-{uuid.uuid4().hex}".encode()
        script = (
            f"( {shlex.join(command)} ) </dev/null; "
            f"printf '\\n%s %s\\n' {marker.decode()} \"$?\"; "
            f"printf '\\n%s\\n' {marker.decode()} >&2\n"
        )
        with self._lock:
            try:
                self._socket.settimeout(timeout)
                self._socket.sendall(script.encode())
                streams: dict[int, bytes] = {1: b"", 2: b""}
                code: int | None = None
                while code is None or b"\n" + marker + b"\n" not in streams[2]:
                    kind, payload = self._frame()
                    streams[kind] = streams.get(kind, b"") + payload
                    if code is None:
                        code = _marked_code(streams[1], marker)
            except (OSError, ShellClosed) as error:
                self.close()
                raise ShellClosed(str(error) or type(error).__name__) from None
        out = streams[1][: streams[1].rindex(b"\n" + marker + b" ")]
        err = streams[2][: streams[2].rindex(b"\n" + marker + b"\n")]
        return code, out, err

    def _frame(self) -> tuple[int, bytes]:
        kind, size = _frame_head(self._read(8))
        return kind, self._read(size)

    def _read(self, size: int) -> bytes:
        while len(self._buffer) < size:
            self._quick_ack()
            chunk = self._socket.recv(65536)
            if not chunk:
                raise ShellClosed("the shell session ended")
            self._buffer += chunk
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data

    def _quick_ack(self) -> None:
        """Over tcp, acknowledge at once: the engine writes a frame's head and its body
        apart, and Nagle holds the body until the head's ack, which Linux delays by up to
        40 ms. Linux turns quick acks off again by itself, hence before each read."""
        if self._tcp and _TCP_QUICKACK is not None:
            with contextlib.suppress(OSError):
                self._socket.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)

    def close(self) -> None:
        """End the session: the shell reads the end of its input and exits."""
        for closing in (self._socket, self._holder):
            with contextlib.suppress(Exception):
                closing.close()


def _marked_code(stdout: bytes, marker: bytes) -> int | None:
    """The exit code the shell printed after ``marker`` on stdout, once it is all there."""
    at = stdout.rfind(b"\n" + marker + b" ")
    if at < 0:
        return None
    rest = stdout[at + len(marker) + 2 :]
    end = rest.find(b"\n")
    return int(rest[:end]) if end > 0 else None
