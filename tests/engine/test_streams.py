"""Streams from the engine that the plugin cuts off: a stalled pull's, a failed build's,
a log wait's at its deadline. Against the real engine: the cut must wake a thread that
is blocked reading the socket, which only a real connection shows."""

from __future__ import annotations

import contextlib
import io
import tarfile
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from typing import TypeVar

import docker
import pytest

from pytest_containers._base.image import Image
from pytest_containers._containers.container import Container
from pytest_containers._engine.connection import docker_time
from pytest_containers._engine.streams import EngineStream, ShellClosed, ShellSession
from pytest_containers._manager.resets import ResetShells, run_reset
from tests.testenv import Starter

T = TypeVar("T")


def test_engine_timestamps_become_unix_times() -> None:
    assert docker_time("1970-01-01T00:00:10Z") == 10.0
    assert docker_time("1970-01-01T00:00:10.5Z") == 10.5
    # Nanoseconds are kept to what a float holds; a zone other than Z counts too.
    assert docker_time("2024-05-01T12:00:00.123456789Z") == pytest.approx(
        1714564800.123456789, abs=1e-6
    )
    assert docker_time("2024-05-01T14:00:00+02:00") == docker_time("2024-05-01T12:00:00Z")


@pytest.mark.parametrize("value", ["0001-01-01T00:00:00Z", "", "yesterday", None, 12])
def test_go_zero_time_and_non_timestamps_are_none(value: object) -> None:
    assert docker_time(value) is None


def _bare(stream: Iterable[T]) -> Iterator[T]:
    """``stream`` as a bare generator, as docker-py returns a pull's and a build's (its
    events and logs streams would shut their socket down on close() by themselves)."""
    return (entry for entry in stream)


def _follow(client: docker.DockerClient, container_id: str) -> Iterator[bytes]:
    return _bare(client.api.logs(container_id, stream=True, follow=True, stdout=True))


@pytest.mark.docker
def test_abort_wakes_a_reader_blocked_on_a_silent_stream(
    docker_client: docker.DockerClient,
) -> None:
    # Events of a label nothing has: the engine answers, then sends nothing, like a
    # stalled pull. docker-py reads it as it reads a pull's or a build's stream.
    nothing = {"label": f"pytest-containers.test-silence={uuid.uuid4().hex}"}
    stream = EngineStream(docker_client)
    opened = threading.Event()
    read: list[object] = []

    def reader() -> None:
        entries = stream.open(lambda: _bare(docker_client.api.events(filters=nothing)))
        opened.set()
        # Blocks until the stream is cut; the cut read ends, or fails however http.client
        # fails mid-read (a puller reports that only when it has not given up itself).
        with contextlib.suppress(Exception):
            read.extend(entries)

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    assert opened.wait(30)
    # Let the reader get into its read: one that has not blocked yet would notice even a
    # mere close(), which does not wake a blocked read (checked by breaking _cut).
    time.sleep(0.5)
    stream.abort()
    thread.join(30)
    assert not thread.is_alive()
    assert read == []


@pytest.fixture
def talking(busybox: Image, start: Starter) -> Container:
    """A container that says hello, then nothing."""
    return start(busybox, command=["sh", "-c", "echo hello; sleep 300"])


@pytest.mark.docker
def test_a_stream_aborted_before_the_engine_answered_yields_nothing(
    docker_client: docker.DockerClient, talking: Container
) -> None:
    stream = EngineStream(docker_client)
    stream.abort()
    assert list(stream.open(lambda: _follow(docker_client, talking.id))) == []


@pytest.mark.docker
def test_an_open_stream_reads_what_the_engine_sends(
    docker_client: docker.DockerClient, talking: Container
) -> None:
    stream = EngineStream(docker_client)
    first = next(stream.open(lambda: _follow(docker_client, talking.id)))
    stream.abort()
    assert first == b"hello\n"


# --- a shell kept open -------------------------------------------------------------------


@pytest.mark.docker
def test_a_shell_session_runs_commands_with_their_output_and_exit_codes(
    docker_client: docker.DockerClient, busybox: Image, start: Starter
) -> None:
    container = start(busybox, command=["sleep", "300"])
    session = ShellSession(docker_client, container.id)
    try:
        assert session.run(["sh", "-c", "echo out; echo err >&2; exit 3"]) == (
            3,
            b"out\n",
            b"err\n",
        )
        assert session.run(["echo", "-n", "no newline"]) == (0, b"no newline", b"")
        # Quoted as words, never as shell syntax; stdin is not the session's.
        assert session.run(["echo", "it's $HOME; `x`"]) == (0, b"it's $HOME; `x`\n", b"")
        assert session.run(["cat"]) == (0, b"", b"")
        code, out, err = session.run(["no-such-command"])
        assert (code, out) == (127, b"")
        assert b"no-such-command" in err
        big = session.run(
            ["sh", "-c", "i=0; while [ $i -lt 2000 ]; do echo line-$i; i=$((i+1)); done"]
        )
        assert big[1].splitlines() == [f"line-{i}".encode() for i in range(2000)]
        # One shell ran them all: the engine saw one exec since the container started.
        assert _shells(docker_client, container) == ["sh"]
    finally:
        session.close()
    deadline = time.monotonic() + 10
    while _shells(docker_client, container) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _shells(docker_client, container) == []  # the shell ended with the session


def _shells(client: docker.DockerClient, container: Container) -> list[str]:
    """The processes in ``container`` besides its own ``sleep``."""
    top = client.api.top(container.id, ps_args="-o pid,args")
    return [row[-1] for row in top["Processes"] if not row[-1].startswith("sleep")]


@pytest.mark.docker
def test_an_image_without_a_shell_is_reset_by_exec(
    docker_client: docker.DockerClient, start: Starter
) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add("/bin/busybox", arcname="busybox")  # no /bin/sh
    name = f"pct-nosh-{uuid.uuid4().hex[:12]}"
    docker_client.api.import_image_from_data(buffer.getvalue(), repository=name, tag="1")
    try:
        image = Image(ref=f"{name}:1", resolved_ref=f"{name}:1",
                      id=str(docker_client.images.get(f"{name}:1").id))  # fmt: skip
        container = start(image, command=["/busybox", "sleep", "300"])
        with pytest.raises(ShellClosed):
            ShellSession(docker_client, container.id, answer_timeout=5)
        shells = ResetShells()
        assert shells.run(container, ["/busybox", "true"]) is None  # exec it instead
        assert run_reset(container, ("/busybox", "false"), shells) == "exit code 1, output: "
        assert run_reset(container, ("/busybox", "true"), shells) is None
        shells.close_all()
    finally:
        start.remove_all()
        docker_client.images.remove(f"{name}:1", force=True)


@pytest.mark.docker
def test_a_reset_shell_whose_container_died_falls_back_to_exec(
    docker_client: docker.DockerClient, busybox: Image, start: Starter
) -> None:
    container = start(busybox, command=["sleep", "300"])
    shells = ResetShells()
    assert shells.run(container, ["true"]) == (0, "")
    docker_client.api.kill(container.id)
    failure = run_reset(container, ("true",), shells)
    assert failure is not None
    assert failure.startswith("raised "), failure
    shells.close_all()
