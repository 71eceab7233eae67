"""The test environment's server images (scripts/testenv.sh, testenv/servers/): pulled from
the local registry under the official names, each takes the official image's variables
and behaves as code written for the official image expects: postgres and mariadb make
their user and database on a first start (from a temporary server that clients cannot
reach), run /docker-entrypoint-initdb.d and refuse to start without a password; rabbitmq
makes its default user and answers its command line tools; nats answers /healthz; and
memcached runs as memcache with the arguments given."""

from __future__ import annotations

import contextlib
import io
import socket
import struct
import tarfile
import time
import urllib.error
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import docker
import docker.errors
import pytest
from docker.models.containers import Container

from tests.testenv import LABELS, REGISTRY, SETTINGS, http_get

pytestmark = pytest.mark.docker

T = TypeVar("T")
Run = Callable[..., Container]

#: The postgres server's line, logged once by the first start's temporary server and once
#: by the real one.
PG_READY = "database system is ready to accept connections"


def seed(name: str) -> tuple[str, str]:
    """The image's repository in the local registry and the first tag settings.env names."""
    key = f"TESTENV_{name.upper()}"
    return f"{REGISTRY}/{SETTINGS[f'{key}_REPO']}", SETTINGS[f"{key}_TAGS"].split()[0]


def tar_of(files: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture
def run(docker_client: docker.DockerClient, no_leftovers: None) -> Iterator[Run]:
    """``run(name, initdb={file: text}, **create_keywords)``: pull the seed image ``name``,
    create a container of it labelled as this suite's, copy the ``initdb`` files into its
    /docker-entrypoint-initdb.d and start it. Afterwards every one is removed, with its
    anonymous volumes, whatever happened."""
    made: list[Container] = []

    def start(name: str, initdb: dict[str, str] | None = None, **keywords: Any) -> Container:
        repository, tag = seed(name)
        docker_client.images.pull(repository, tag=tag)
        container = docker_client.containers.create(
            f"{repository}:{tag}", labels=LABELS, **keywords
        )
        made.append(container)
        if initdb:
            container.put_archive("/docker-entrypoint-initdb.d", tar_of(initdb))
        container.start()
        return container

    try:
        yield start
    finally:
        for container in made:
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True, v=True)


def text_logs(container: Container) -> str:
    return bytes(container.logs()).decode(errors="replace")


def until(container: Container, what: str, check: Callable[[], T | None], seconds: float) -> T:
    """Poll ``check`` until it returns something (not None, not False): that. Fails after
    ``seconds`` or as soon as the container is no longer running, with its log."""
    deadline = time.monotonic() + seconds
    while True:
        found = check()
        if found is not None and found is not False:
            return found
        container.reload()
        if container.status != "running":
            pytest.fail(f"{what}: the container is {container.status}:\n{text_logs(container)}")
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {seconds} s:\n{text_logs(container)}")
        time.sleep(0.2)


def run_in(container: Container, command: list[str], **keywords: Any) -> tuple[int, str]:
    """Run ``command`` in the container (docker exec): its exit status and output."""
    status, output = container.exec_run(command, **keywords)
    assert status is not None
    assert isinstance(output, bytes)
    return status, output.decode(errors="replace")


def succeeds(container: Container, command: list[str]) -> bool:
    return run_in(container, command)[0] == 0


def host_port(container: Container, port: int) -> int:
    """The port on the host's 127.0.0.1 that ``port`` of the container is published on."""
    container.reload()
    bindings = container.ports[f"{port}/tcp"]
    assert bindings, f"{port} is not published"
    return int(bindings[0]["HostPort"])


def published(port: int) -> dict[str, tuple[str, None]]:
    return {f"{port}/tcp": ("127.0.0.1", None)}


def exchange(port: int, request: bytes, answer_ends: Callable[[bytes], bool]) -> bytes:
    """Send ``request`` to the host's 127.0.0.1:``port`` and read until ``answer_ends``."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(request)
        answer = b""
        while not answer_ends(answer):
            chunk = connection.recv(65536)
            if not chunk:
                break
            answer += chunk
        return answer


# --- postgres -----------------------------------------------------------------------------


def test_postgres_inits_behind_a_temporary_server_then_serves_its_database_over_tcp(
    run: Run,
) -> None:
    pg = run(
        "postgres",
        environment={
            "POSTGRES_USER": "app",
            "POSTGRES_PASSWORD": "pg pass",
            "POSTGRES_DB": "orders",
        },
        command=["postgres", "-c", "fsync=off"],
        ports=published(5432),
        initdb={
            "01-schema.sql": "CREATE TABLE seeded (id int); INSERT INTO seeded VALUES (1);",
            # Not executable: sourced, with the variables and the temporary server at hand.
            "02-more.sh": 'psql -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d "$POSTGRES_DB" '
            '-c "INSERT INTO seeded VALUES (2)"\n',
        },
    )

    def ready_twice() -> str | None:
        logs = text_logs(pg)
        return logs if logs.count(PG_READY) >= 2 else None

    logs = until(pg, "postgres ready twice", ready_twice, 90)
    # The first "ready" was the temporary server's, before the init was over.
    assert logs.count(PG_READY) == 2
    done = logs.index("PostgreSQL init process complete; ready for start up.")
    assert logs.index(PG_READY) < done < logs.rindex(PG_READY)
    assert "running /docker-entrypoint-initdb.d/01-schema.sql" in logs
    assert "sourcing /docker-entrypoint-initdb.d/02-more.sh" in logs

    query = (
        "SELECT current_user, current_database(), string_agg(id::text, ',' ORDER BY id) FROM seeded"
    )
    status, output = run_in(
        pg,
        [
            "psql",
            "-h",
            "127.0.0.1",
            "-U",
            "app",
            "-d",
            "orders",
            "-tA",
            "-c",
            query,
            "-c",
            "SHOW fsync",
        ],
        environment={"PGPASSWORD": "pg pass"},
    )
    assert (status, output.split()) == (0, ["app|orders|1,2", "off"]), output
    # From another address than the container's own loopback a password is asked for, as
    # the official image's pg_hba.conf asks.
    status, output = run_in(
        pg,
        ["sh", "-c", 'psql -h "$(hostname -i)" -U app -d orders -c "SELECT 1"'],
        environment={"PGPASSWORD": "wrong"},
    )
    assert status != 0
    assert 'password authentication failed for user "app"' in output
    # The real server listens on the published port: an SSLRequest gets its one-byte "no".
    assert exchange(host_port(pg, 5432), struct.pack("!ii", 8, 80877103), bool) == b"N"


def test_postgres_takes_server_options_alone_and_trusts_all_when_told(run: Run) -> None:
    pg = run(
        "postgres",
        environment={"POSTGRES_HOST_AUTH_METHOD": "trust"},
        command=["-c", "fsync=off"],
        tmpfs={"/var/lib/postgresql/data": ""},
    )
    until(
        pg,
        "pg_isready over TCP",
        lambda: succeeds(pg, ["pg_isready", "-q", "-h", "127.0.0.1", "-U", "postgres"]),
        60,
    )
    status, output = run_in(
        pg, ["sh", "-c", 'psql -h "$(hostname -i)" -U postgres -tA -c "SHOW fsync"']
    )
    assert (status, output.strip()) == (0, "off"), output


def test_postgres_without_a_password_says_so_and_exits(run: Run) -> None:
    pg = run("postgres")
    assert pg.wait(timeout=60)["StatusCode"] == 1
    assert "Database is uninitialized and superuser password is not specified" in text_logs(pg)


# --- mariadb ------------------------------------------------------------------------------


def test_mariadb_makes_the_user_and_database_and_listens_on_tcp(run: Run) -> None:
    db = run(
        "mariadb",
        environment={
            "MARIADB_ROOT_PASSWORD": "root pass",
            "MYSQL_DATABASE": "shop",  # the MYSQL_ names work as well
            "MARIADB_USER": "app",
            "MARIADB_PASSWORD": 'it\'s "quoted"',
        },
        ports=published(3306),
        initdb={"seed.sql": "CREATE TABLE items (id int); INSERT INTO items VALUES (5);"},
    )
    # The temporary server skips networking: only the real one answers over TCP.
    until(
        db,
        "mariadb-admin ping over TCP",
        lambda: succeeds(
            db, ["mariadb-admin", "ping", "--silent", "--protocol=tcp", "-h127.0.0.1"]
        ),
        90,
    )
    status, output = run_in(
        db,
        ["mariadb", "-h127.0.0.1", "-uapp", '-pit\'s "quoted"', "shop", "-e", "select 1"],
    )
    assert status == 0, output
    status, output = run_in(
        db,
        ["mariadb", "-h127.0.0.1", "-uroot", "-proot pass", "-N", "-e",
         "select id from shop.items; select @@bind_address, @@port"],
    )  # fmt: skip
    assert (status, output.split()) == (0, ["5", "0.0.0.0", "3306"]), output
    assert "MariaDB init process done. Ready for start up." in text_logs(db)
    # The published port leads to the server: its handshake names its version.
    greeting = exchange(host_port(db, 3306), b"", lambda answer: len(answer) > 16)
    assert b"MariaDB" in greeting


def test_mariadb_without_a_root_password_option_says_so_and_exits(run: Run) -> None:
    db = run("mariadb", environment={"MARIADB_DATABASE": "shop"})
    assert db.wait(timeout=60)["StatusCode"] == 1
    assert "Database is uninitialized and password option is not specified" in text_logs(db)


# --- rabbitmq, nats, memcached --------------------------------------------------------------


def test_rabbitmq_runs_in_the_foreground_with_its_default_user(run: Run) -> None:
    mq = run(
        "rabbitmq",
        environment={"RABBITMQ_DEFAULT_USER": "app", "RABBITMQ_DEFAULT_PASS": "mq pass"},
        ports=published(5672),
    )
    until(
        mq,
        "rabbitmq-diagnostics ping",
        lambda: succeeds(mq, ["rabbitmq-diagnostics", "-q", "ping"]),
        120,
    )
    until(
        mq,
        "rabbitmq-diagnostics check_port_connectivity",
        lambda: succeeds(mq, ["rabbitmq-diagnostics", "-q", "check_port_connectivity"]),
        60,
    )
    status, output = run_in(mq, ["rabbitmqctl", "-q", "list_users"])
    assert status == 0, output
    assert "app" in output.split(), output
    # guest may log in from other hosts, as in the official image.
    status, output = run_in(
        mq, ["rabbitmqctl", "eval", "application:get_env(rabbit, loopback_users)."]
    )
    assert (status, output.strip()) == (0, "{ok,[]}"), output
    # From the host, the AMQP port answers the protocol header with connection.start.
    answer = exchange(host_port(mq, 5672), b"AMQP\x00\x00\x09\x01", lambda a: len(a) >= 11)
    frame_type, channel = answer[0], struct.unpack("!H", answer[1:3])[0]
    class_id, method_id = struct.unpack("!HH", answer[7:11])
    assert (frame_type, channel, class_id, method_id) == (1, 0, 10, 10), answer


def test_nats_answers_healthz_on_its_monitoring_port(run: Run) -> None:
    nats = run("nats", ports={**published(4222), **published(8222)})
    port = host_port(nats, 8222)

    def healthz() -> int | None:
        with contextlib.suppress(urllib.error.URLError, ConnectionError):
            return http_get(f"http://127.0.0.1:{port}/healthz")[0]
        return None

    assert until(nats, "GET /healthz", healthz, 30) == 200
    info = exchange(host_port(nats, 4222), b"", lambda answer: answer.endswith(b"\r\n"))
    assert info.startswith(b"INFO {"), info
    assert "Using configuration file: nats-server.conf" in text_logs(nats)


def test_memcached_runs_as_memcache_with_the_arguments_given(run: Run) -> None:
    cache = run("memcached", command=["-m", "64"], ports=published(11211))
    port = host_port(cache, 11211)

    def stored() -> bytes | None:
        with contextlib.suppress(ConnectionError, socket.timeout):
            answer = exchange(
                port,
                b"set greeting 0 0 5\r\nhello\r\nget greeting\r\nstats settings\r\n",
                lambda answer: answer.count(b"END\r\n") >= 2,
            )
            return answer or None
        return None

    answer = until(cache, "set, get and stats", stored, 30).decode()
    assert answer.startswith("STORED\r\nVALUE greeting 0 5\r\nhello\r\nEND\r\n"), answer
    assert "STAT maxbytes 67108864\r\n" in answer  # -m 64
    assert run_in(cache, ["stat", "-c", "%U", "/proc/1"]) == (0, "memcache\n")
