"""The engine module: where the engine is, what it is, and the address tests dial."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import docker
import pytest

from pytest_containers._engine.connection import (
    DEFAULT_SOCKET,
    Endpoint,
    EngineIdentity,
    EngineInfo,
    _info_from_version,
    connect,
    container_id_candidates,
    context_id,
    decide_access,
    describe_engine,
    endpoint_environ,
    engine_identity,
    identify_engine,
    own_container_id,
    resolve_endpoint,
)
from pytest_containers.errors import EngineUnavailableError

ID = "3f" * 32
OTHER = "a1" * 32


def make_context(config_dir: Path, name: str, host: str, *, tls: bool = False) -> None:
    """A context in the docker CLI's store, as `docker context create` writes it."""
    meta = config_dir / "contexts" / "meta" / context_id(name)
    meta.mkdir(parents=True)
    endpoint: dict[str, object] = {"Host": host, "SkipTLSVerify": False}
    (meta / "meta.json").write_text(
        json.dumps({"Name": name, "Metadata": {}, "Endpoints": {"docker": endpoint}})
    )
    if tls:
        material = config_dir / "contexts" / "tls" / context_id(name) / "docker"
        material.mkdir(parents=True)
        for pem in ("ca.pem", "cert.pem", "key.pem"):
            (material / pem).write_text("not a real certificate\n")


# --- finding the engine --------------------------------------------------------------------


def test_docker_host_wins_over_everything(tmp_path: Path) -> None:
    make_context(tmp_path, "remote", "tcp://10.9.8.7:2375")
    environ = {
        "DOCKER_HOST": "tcp://127.0.0.2:2375",
        "DOCKER_CONTEXT": "remote",
        "DOCKER_CONFIG": str(tmp_path),
    }
    endpoint = resolve_endpoint(environ)
    assert (endpoint.url, endpoint.source, endpoint.tls) == (
        "tcp://127.0.0.2:2375",
        "DOCKER_HOST",
        None,
    )


def test_docker_tls_variables_turn_tls_on(tmp_path: Path) -> None:
    environ = {
        "DOCKER_HOST": "tcp://build-box:2376",
        "DOCKER_TLS_VERIFY": "1",
        "DOCKER_CERT_PATH": str(tmp_path),
    }
    endpoint = resolve_endpoint(environ)
    assert endpoint.tls is not None
    assert (endpoint.tls.cert_dir, endpoint.tls.verify) == (tmp_path, True)
    assert endpoint_environ(endpoint) == {
        "DOCKER_HOST": "tcp://build-box:2376",
        "DOCKER_CERT_PATH": str(tmp_path),
        "DOCKER_TLS_VERIFY": "1",
    }


def test_docker_context_selects_a_context_from_the_store(tmp_path: Path) -> None:
    make_context(tmp_path, "ci", "tcp://127.0.0.2:2375", tls=True)
    endpoint = resolve_endpoint({"DOCKER_CONTEXT": "ci", "DOCKER_CONFIG": str(tmp_path)})
    assert endpoint.url == "tcp://127.0.0.2:2375"
    assert endpoint.source == "docker context 'ci', DOCKER_CONTEXT"
    assert endpoint.tls is not None
    assert endpoint.tls.cert_dir == tmp_path / "contexts" / "tls" / context_id("ci") / "docker"
    assert endpoint.tried == ("DOCKER_HOST: not set",)


def test_current_context_in_config_json_is_followed(tmp_path: Path) -> None:
    make_context(tmp_path, "remote", "ssh://ci@build-box")
    (tmp_path / "config.json").write_text(json.dumps({"currentContext": "remote"}))
    endpoint = resolve_endpoint({"DOCKER_CONFIG": str(tmp_path)})
    assert endpoint.url == "ssh://ci@build-box"
    assert f"currentContext in {tmp_path / 'config.json'}" in endpoint.source


def test_the_default_context_means_the_sockets(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"currentContext": "default"}))
    runtime = tmp_path / "run"
    (runtime / "podman").mkdir(parents=True)
    (runtime / "podman" / "podman.sock").touch()
    endpoint = resolve_endpoint({"DOCKER_CONFIG": str(tmp_path), "XDG_RUNTIME_DIR": str(runtime)})
    candidates = [endpoint, *endpoint.fallbacks]
    urls = [candidate.url for candidate in candidates]
    assert f"unix://{runtime}/podman/podman.sock" in urls
    if Path(DEFAULT_SOCKET[len("unix://") :]).exists():
        assert urls[0] == DEFAULT_SOCKET
    assert f"the rootless Docker socket unix://{runtime}/docker.sock: no such file" in (
        endpoint.tried
    )


def test_a_missing_context_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(EngineUnavailableError, match=r"docker context 'gone' \(DOCKER_CONTEXT\)"):
        resolve_endpoint({"DOCKER_CONTEXT": "gone", "DOCKER_CONFIG": str(tmp_path)})


def test_a_dead_engine_error_lists_every_source_tried(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    endpoint = resolve_endpoint({"DOCKER_CONFIG": str(tmp_path)})
    dead = Endpoint(f"unix://{tmp_path}/nothing.sock", "the default socket", None, endpoint.tried)
    with pytest.raises(EngineUnavailableError) as caught:
        connect(dead, connect_timeout=1)
    message = str(caught.value)
    assert "DOCKER_HOST: not set" in message
    assert "docker context: none selected" in message
    assert f"unix://{tmp_path}/nothing.sock (the default socket):" in message
    assert "--container-doctor" in message


def test_a_refused_tcp_engine_is_reported_not_raised_raw() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(EngineUnavailableError, match=f"tcp://127.0.0.1:{port} \\(DOCKER_HOST\\)"):
        connect(Endpoint(f"tcp://127.0.0.1:{port}", "DOCKER_HOST"), connect_timeout=1)


# --- what the engine is ------------------------------------------------------------------------


def test_podman_is_told_from_its_version_components() -> None:
    podman = {
        "Version": "4.3.1",
        "Components": [{"Name": "Podman Engine", "Version": "4.3.1"}],
    }
    docker_engine = {"Version": "20.10.24", "Components": [{"Name": "Engine"}]}
    assert _info_from_version(podman) == EngineInfo("Podman", "4.3.1")
    assert _info_from_version(docker_engine) == EngineInfo("Docker", "20.10.24")


DOCKER_VERSION = {"Version": "20.10.24", "Components": [{"Name": "Engine"}]}
PODMAN_VERSION = {"Version": "4.3.1", "Components": [{"Name": "Podman Engine"}]}


def test_dockers_own_id_names_the_engine() -> None:
    info = {"ID": "ABCD:EFGH", "Name": "host", "DockerRootDir": "/var/lib/docker"}
    identity = identify_engine(info, DOCKER_VERSION, "unix:///var/run/docker.sock")
    assert identity == EngineIdentity("docker-ABCD:EFGH", "the engine's ID", own_id=True)
    # The same daemon through another endpoint (a tcp proxy, a context) is the same engine.
    assert identify_engine(info, DOCKER_VERSION, "tcp://127.0.0.2:2375") == identity


def test_podman_is_named_by_its_storage_root_not_its_random_id() -> None:
    def podman(info_id: str, root: str = "/var/lib/containers/storage") -> EngineIdentity:
        info = {"ID": info_id, "Name": "host", "DockerRootDir": root}
        return identify_engine(info, PODMAN_VERSION, "unix:///run/podman/podman.sock")

    # Podman answers a new ID on every /info; the identity does not follow it.
    assert podman("1111").key == podman("2222").key
    assert not podman("1111").own_id
    assert podman("1111").source == "its name and storage root (host, /var/lib/containers/storage)"
    # Rootless podman on the same host keeps its images elsewhere: another engine.
    assert podman("1111").key != podman("1111", "/home/u/.local/share/containers/storage").key


def test_an_engine_without_a_storage_root_is_named_by_its_name_and_endpoint() -> None:
    info = {"ID": "random", "Name": "kubedock", "OperatingSystem": "kubernetes"}
    here = identify_engine(info, {"ApiVersion": "1.25"}, "tcp://127.0.0.1:2475")
    there = identify_engine(info, {"ApiVersion": "1.25"}, "tcp://127.0.0.1:2476")
    assert here.key != there.key
    assert here.source == "its name and endpoint (kubedock, tcp://127.0.0.1:2475)"


def test_an_engine_that_says_nothing_is_named_by_its_endpoint() -> None:
    for info, version in ((None, None), ({}, DOCKER_VERSION), ({"ID": ""}, None)):
        identity = identify_engine(info, version, "unix:///tmp/engine.sock")
        assert identity.key == identify_engine(None, None, "unix:///tmp/engine.sock").key
        assert identity.source.startswith("its endpoint (unix:///tmp/engine.sock)")
    assert (
        identify_engine(None, None, "unix:///tmp/other.sock").key
        != identify_engine(None, None, "unix:///tmp/engine.sock").key
    )


@pytest.mark.docker
def test_the_engine_identity_is_the_same_in_every_process(
    docker_client: docker.DockerClient,
) -> None:
    here = engine_identity(docker_client)
    code = (
        "import docker; from pytest_containers._engine.connection import engine_identity; "
        "print(engine_identity(docker.from_env()).key)"
    )
    elsewhere = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout.strip()
    assert elsewhere == here.key
    assert here.key == f"docker-{docker_client.info()['ID']}" or not here.own_id


@pytest.mark.docker
def test_the_header_names_the_engine_and_where_it_was_found() -> None:
    line = describe_engine()
    endpoint = resolve_endpoint()
    assert line.endswith(f"at {endpoint.describe()}")
    assert line.startswith(("Docker ", "Podman "))


def test_the_header_says_what_was_tried_when_nothing_answers(tmp_path: Path) -> None:
    line = describe_engine(environ={"DOCKER_HOST": f"unix://{tmp_path}/none.sock"})
    assert line == f"not answering at unix://{tmp_path}/none.sock (DOCKER_HOST)"


def test_the_header_probes_ipv6_literal_hosts_without_brackets() -> None:
    try:
        listener = socket.socket(socket.AF_INET6)
        listener.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    with listener:
        listener.listen()
        port = listener.getsockname()[1]
        reply = (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 21\r\n\r\n"
            b'{"Version": "99.1.0"}'
        )
        import threading

        def serve() -> None:
            connection, _ = listener.accept()
            with connection:
                connection.recv(4096)
                connection.sendall(reply)

        server = threading.Thread(target=serve, daemon=True)
        server.start()
        line = describe_engine(environ={"DOCKER_HOST": f"tcp://[::1]:{port}"})
        server.join(5)
    # It answered /version only: its identity can come from nothing but its endpoint.
    assert line == (
        f"Docker 99.1.0 at tcp://[::1]:{port} (DOCKER_HOST), known by its endpoint "
        f"(tcp://[::1]:{port}): /info gave no ID, name or storage root"
    )


# --- where the tests dial ----------------------------------------------------------------------


def no_container() -> None:
    return None


def test_a_local_engine_is_dialled_on_loopback() -> None:
    for url in (DEFAULT_SOCKET, "tcp://127.0.0.1:2375", "tcp://[::1]:2375", "ssh://me@localhost"):
        access = decide_access(Endpoint(url, "DOCKER_HOST"), None, {}, no_container)
        assert (access.mode, access.host, access.bind_ip) == ("published", "127.0.0.1", "127.0.0.1")


def test_a_remote_engine_is_dialled_at_its_host_and_publishes_everywhere() -> None:
    access = decide_access(Endpoint("tcp://127.0.0.2:2375", "DOCKER_HOST"), None, {}, no_container)
    assert (access.mode, access.host, access.bind_ip) == ("published", "127.0.0.2", "")
    assert "remote" in access.reason
    access = decide_access(Endpoint("tcp://[fd00::5]:2375", "x"), None, {}, no_container)
    assert access.host == "fd00::5"


def test_an_ssh_alias_is_dialled_at_its_ssh_config_hostname(tmp_path: Path) -> None:
    pytest.importorskip("paramiko")
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh" / "config").write_text(
        "Host build-box\n    HostName 192.0.2.10\n    User ci\n"
    )
    endpoint = Endpoint("ssh://build-box", "DOCKER_HOST")
    access = decide_access(endpoint, None, {"HOME": str(tmp_path)}, no_container)
    assert (access.host, access.bind_ip) == ("192.0.2.10", "")


def test_an_override_wins_and_testcontainers_override_is_read() -> None:
    endpoint = Endpoint(DEFAULT_SOCKET, "the default socket")
    access = decide_access(endpoint, "10.0.0.5", {}, no_container)
    assert (access.host, access.bind_ip, access.reason) == (
        "10.0.0.5",
        "",
        "set by --container-host",
    )
    environ = {"TESTCONTAINERS_HOST_OVERRIDE": "host.docker.internal"}
    access = decide_access(endpoint, None, environ, no_container)
    assert access.host == "host.docker.internal"
    assert access.reason == "set by TESTCONTAINERS_HOST_OVERRIDE"
    # A loopback override of a local engine keeps ports on loopback.
    assert decide_access(endpoint, "127.0.0.1", {}, no_container).bind_ip == "127.0.0.1"


def test_tests_in_a_container_dial_containers_on_its_network() -> None:
    endpoint = Endpoint(DEFAULT_SOCKET, "the default socket")
    access = decide_access(endpoint, None, {}, lambda: (ID, "bridge"))
    assert (access.mode, access.network, access.own_container) == ("network", "bridge", ID)
    assert "network 'bridge'" in access.describe()
    on_host_network = decide_access(endpoint, None, {}, lambda: (ID, None))
    assert (on_host_network.mode, on_host_network.host) == ("published", "127.0.0.1")


# --- am I in a container? ----------------------------------------------------------------------


def test_container_ids_come_from_the_hostname_mount_cgroup_and_hostname() -> None:
    mountinfo = textwrap.dedent(f"""\
        600 500 0:50 / / rw,relatime - overlay overlay rw
        620 600 254:1 /var/lib/docker/containers/{ID}/hostname /etc/hostname rw - ext4 /dev/vda1 rw
        """)
    assert container_id_candidates(mountinfo=mountinfo) == [ID]
    cgroup = f"12:pids:/docker/{OTHER}\n0::/system.slice/docker-{OTHER}.scope\n"
    assert container_id_candidates(cgroup=cgroup) == [OTHER]
    assert container_id_candidates(hostname="3f3f3f3f3f3f") == ["3f3f3f3f3f3f"]
    podman = f"700 600 0:60 /containers/storage/overlay-containers/{ID}/userdata/hostname "
    assert container_id_candidates(mountinfo=podman + "/etc/hostname rw - tmpfs x rw") == [ID]


def test_a_hosts_view_of_other_containers_mounts_is_no_evidence() -> None:
    # On a machine that runs an engine, its containers' shm mounts show in mountinfo.
    mountinfo = f"900 30 0:70 / /var/lib/docker/containers/{ID}/mounts/shm rw - tmpfs shm rw\n"
    assert container_id_candidates(mountinfo=mountinfo, hostname="build-box") == []


@pytest.mark.docker
def test_this_process_is_not_taken_for_a_container(docker_client: docker.DockerClient) -> None:
    # Even with containers running (their mounts visible here), the engine confirms none.
    assert own_container_id(docker_client) is None


@pytest.mark.docker
def test_the_watchdog_environment_reaches_the_same_engine() -> None:
    endpoint = resolve_endpoint()
    environ = {**os.environ, **endpoint_environ(endpoint)}
    environ.pop("DOCKER_CONTEXT", None)
    code = "import docker; print(docker.from_env().version()['Version'])"
    found = subprocess.run(
        [sys.executable, "-c", code], env=environ, capture_output=True, text=True, timeout=60
    )
    assert found.returncode == 0, found.stderr
    client = connect(endpoint)
    try:
        assert found.stdout.strip() == client.version()["Version"]
    finally:
        client.close()


def test_an_exec_stream_is_split_into_stdout_and_stderr() -> None:
    from pytest_containers._engine.streams import _demux

    def frame(kind: int, data: bytes) -> bytes:
        return bytes([kind, 0, 0, 0]) + len(data).to_bytes(4, "big") + data

    stream = frame(1, b"out\n") + frame(2, b"err\n") + frame(1, b"") + frame(1, b"more")
    assert _demux(stream) == (b"out\nmore", b"err\n")
    assert _demux(b"") == (b"", b"")
    assert _demux(frame(1, b"cut") + b"\x01\x00") == (b"cut", b"")  # a torn head is left out
