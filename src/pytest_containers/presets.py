"""Ready-made servers, as data: a :class:`Preset` says which image, ports and
environment a server needs, how to know it is ready (with the image's own tools), the URLs
clients dial, how to make it clean again, and what makes it fast for tests.

Every way of declaring takes a preset where it takes an image::

    from pytest_containers import presets

    @pytest.mark.container(presets.postgres(), scope="module", reset=True)
    def test_orders(container):
        engine = sqlalchemy.create_engine(container.url(driver="psycopg"))

    db = container_fixture(presets.postgres("16"), scope="session")
    cache = service(presets.redis(), expose={"REDIS_URL": "{url}"})

Keywords given where the preset is used win over the preset's (``env=`` is merged key by
key); ``reset=True`` runs the preset's own reset before each test but the first. A
preset of your own is a ``Preset(...)`` in a conftest.py, written the same way.
"""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pytest_containers import wait

if TYPE_CHECKING:
    from pytest_containers._containers.container import Container

__all__ = [
    "Preset",
    "mariadb",
    "memcached",
    "nats",
    "postgres",
    "rabbitmq",
    "redis",
]

#: Test credentials every database preset uses unless told otherwise.
USER = PASSWORD = DATABASE = "test"


@dataclass(frozen=True)
class Preset:
    """A server as data.

    ``image`` is the default image (official name and tag); ``keywords`` the container
    keywords of the marker (``ports``, ``env``, ``command``, ``wait``, ``tmpfs``, ...);
    ``urls`` the URL templates by driver (``""`` is the plain one), which may use
    ``{host}``, ``{port}``, ``{port[5432]}`` and ``{env[NAME]}`` (values URL-quoted);
    ``reset`` a command or a callable taking the container that leaves the server as
    clean as a new one for what tests see (None: nothing to reset); ``fast`` the keywords
    that make a test server fast (data on tmpfs, no fsync), used unless ``fast=False``.
    """

    name: str
    image: str
    keywords: Mapping[str, Any] = field(default_factory=dict)
    urls: Mapping[str, str] = field(default_factory=dict)
    reset: Sequence[str] | Callable[[Container], object] | None = None
    fast: Mapping[str, Any] = field(default_factory=dict)
    use_fast: bool = True

    def __call__(
        self, version: str | None = None, *, fast: bool | None = None, **overrides: Any
    ) -> Preset:
        """This preset at another ``version`` (the image's tag), with the fast settings
        on or off, and with keywords overridden (``env=`` merged key by key)."""
        image = self.image if version is None else f"{_repository(self.image)}:{version}"
        reset = overrides.pop("reset", self.reset)
        urls = overrides.pop("urls", self.urls)
        image = overrides.pop("image", image)
        return dataclasses.replace(
            self,
            image=image,
            keywords=merged(self.keywords, overrides),
            urls=urls,
            reset=reset,
            use_fast=self.use_fast if fast is None else fast,
        )

    def container_keywords(self) -> dict[str, Any]:
        """The marker keywords this preset declares (the fast ones merged in when on)."""
        keywords = merged(self.fast, self.keywords) if self.use_fast else dict(self.keywords)
        if self.urls:
            keywords["urls"] = dict(self.urls)
        return keywords


def merged(base: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    """``given`` over ``base``: a keyword replaces the preset's, but ``env`` is merged."""
    result = dict(base)
    for key, value in given.items():
        if key == "env" and isinstance(value, Mapping) and isinstance(base.get("env"), Mapping):
            result["env"] = {**base["env"], **value}
        else:
            result[key] = value
    return result


def _repository(image: str) -> str:
    """``postgres:15`` -> ``postgres`` (a registry's port stays)."""
    name, _, tag = image.rpartition(":")
    return name if name and "/" not in tag else image


# --- the presets ----------------------------------------------------------------------

_PG = "{env[POSTGRES_USER]}:{env[POSTGRES_PASSWORD]}@{host}:{port}/{env[POSTGRES_DB]}"

POSTGRES = Preset(
    name="postgres",
    image="postgres:15",
    keywords={
        "ports": [5432],
        "env": {"POSTGRES_USER": USER, "POSTGRES_PASSWORD": PASSWORD, "POSTGRES_DB": DATABASE},
        # Over TCP: the official image's first start runs a server on its socket only,
        # then stops it and starts the real one; only that one answers here.
        "wait": wait.for_exec(
            ["sh", "-c", 'pg_isready -q -h 127.0.0.1 -p 5432 -U "$POSTGRES_USER"']
        ),
    },
    urls={
        "": f"postgresql://{_PG}",
        "psycopg": f"postgresql+psycopg://{_PG}",
        "psycopg2": f"postgresql+psycopg2://{_PG}",
        "asyncpg": f"postgresql+asyncpg://{_PG}",
        "pg8000": f"postgresql+pg8000://{_PG}",
    },
    reset=[
        "sh",
        "-c",
        'psql -v ON_ERROR_STOP=1 -q -U "$POSTGRES_USER" -d template1 '
        '-c "DROP DATABASE IF EXISTS \\"$POSTGRES_DB\\" WITH (FORCE)" '
        '-c "CREATE DATABASE \\"$POSTGRES_DB\\""',
    ],
    fast={
        "command": [
            "postgres",
            *("-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"),
        ],
        "tmpfs": {"/var/lib/postgresql/data": ""},
    },
)

_MY = "{env[MARIADB_USER]}:{env[MARIADB_PASSWORD]}@{host}:{port}/{env[MARIADB_DATABASE]}"

MARIADB = Preset(
    name="mariadb",
    image="mariadb:10.11",
    keywords={
        "ports": [3306],
        "env": {
            "MARIADB_ROOT_PASSWORD": PASSWORD,
            "MARIADB_DATABASE": DATABASE,
            "MARIADB_USER": USER,
            "MARIADB_PASSWORD": PASSWORD,
        },
        # Over TCP: the first start's temporary server skips networking.
        "wait": wait.for_exec(
            ["mariadb-admin", "ping", "--silent", "--protocol=tcp", "-h", "127.0.0.1"]
        ),
    },
    urls={
        "": f"mysql://{_MY}",
        "pymysql": f"mysql+pymysql://{_MY}",
        "mysqldb": f"mysql+mysqldb://{_MY}",
        "aiomysql": f"mysql+aiomysql://{_MY}",
        "asyncmy": f"mysql+asyncmy://{_MY}",
        "mariadbconnector": f"mariadb+mariadbconnector://{_MY}",
    },
    reset=[
        "sh",
        "-c",
        'mariadb -uroot -p"$MARIADB_ROOT_PASSWORD" -e '
        '"DROP DATABASE IF EXISTS \\`$MARIADB_DATABASE\\`; '
        'CREATE DATABASE \\`$MARIADB_DATABASE\\`"',
    ],
    fast={
        "command": ["--innodb-flush-log-at-trx-commit=0", "--skip-innodb-doublewrite"],
        "tmpfs": {"/var/lib/mysql": ""},
    },
)

REDIS = Preset(
    name="redis",
    image="redis:7",
    keywords={"ports": [6379], "wait": wait.for_log("Ready to accept connections")},
    urls={"": "redis://{host}:{port}/0"},
    reset=["redis-cli", "FLUSHALL"],
    fast={"tmpfs": {"/data": ""}},
)

_AMQP = "{env[RABBITMQ_DEFAULT_USER]}:{env[RABBITMQ_DEFAULT_PASS]}@{host}:{port}/%2F"

RABBITMQ = Preset(
    name="rabbitmq",
    image="rabbitmq:3",
    keywords={
        "ports": [5672],
        "env": {"RABBITMQ_DEFAULT_USER": USER, "RABBITMQ_DEFAULT_PASS": PASSWORD},
        "wait": wait.for_exec(["rabbitmq-diagnostics", "-q", "check_port_connectivity"]),
    },
    urls={"": f"amqp://{_AMQP}"},
    # The default vhost made anew: its queues, exchanges and messages are gone.
    reset=[
        "sh",
        "-c",
        "rabbitmqctl -q delete_vhost / && rabbitmqctl -q add_vhost / && "
        'rabbitmqctl -q set_permissions -p / "$RABBITMQ_DEFAULT_USER" ".*" ".*" ".*"',
    ],
)

NATS = Preset(
    name="nats",
    image="nats:2",
    # The official image has no shell: ready when its monitoring port says so.
    keywords={"ports": [4222, 8222], "wait": wait.for_http("/healthz", port=8222)},
    urls={"": "nats://{host}:{port[4222]}"},
)


def _flush_all(container: Container) -> None:
    """memcached's reset: ``flush_all`` over its own protocol (its image has no client)."""
    host, port = container.address(11211)
    with socket.create_connection((host, port), timeout=10) as connection:
        connection.sendall(b"flush_all\r\n")
        reply = connection.recv(64)
    if not reply.startswith(b"OK"):
        raise RuntimeError(f"memcached answered flush_all with {reply!r}")


MEMCACHED = Preset(
    name="memcached",
    image="memcached:1",
    keywords={"ports": [11211], "wait": wait.for_port(11211)},
    urls={"": "memcached://{host}:{port}"},
    reset=_flush_all,
)


def postgres(version: str | None = None, *, fast: bool | None = None, **overrides: Any) -> Preset:
    """PostgreSQL (``postgres:15``): user, password and database ``test``; ready when
    ``pg_isready`` says so over TCP (after the first start's restart); fast: fsync,
    synchronous commit and full page writes off, data on tmpfs; reset: the database dropped
    and created again. URLs: ``postgresql://``, and the drivers ``psycopg``, ``psycopg2``,
    ``asyncpg``, ``pg8000``."""
    return POSTGRES(version, fast=fast, **overrides)


def mariadb(version: str | None = None, *, fast: bool | None = None, **overrides: Any) -> Preset:
    """MariaDB (``mariadb:10.11``): root password, user, password and database ``test``;
    ready when ``mariadb-admin ping`` answers over TCP; fast: no flush at each commit, no
    doublewrite, data on tmpfs; reset: the database dropped and created again. URLs:
    ``mysql://`` and the drivers ``pymysql``, ``mysqldb``, ``aiomysql``, ``asyncmy``,
    ``mariadbconnector``."""
    return MARIADB(version, fast=fast, **overrides)


def redis(version: str | None = None, *, fast: bool | None = None, **overrides: Any) -> Preset:
    """Redis (``redis:7``): ready when it logs so; fast: ``/data`` on tmpfs; reset:
    ``FLUSHALL``. URL: ``redis://host:port/0``."""
    return REDIS(version, fast=fast, **overrides)


def rabbitmq(version: str | None = None, *, fast: bool | None = None, **overrides: Any) -> Preset:
    """RabbitMQ (``rabbitmq:3``): user and password ``test``; ready when
    ``rabbitmq-diagnostics check_port_connectivity`` passes; reset: the default vhost
    deleted and made again. URL: ``amqp://test:test@host:port/%2F``."""
    return RABBITMQ(version, fast=fast, **overrides)


def nats(version: str | None = None, *, fast: bool | None = None, **overrides: Any) -> Preset:
    """NATS (``nats:2``): client port 4222, monitoring 8222; ready when ``/healthz``
    answers; core NATS keeps no state, so there is nothing to reset. URL:
    ``nats://host:port``."""
    return NATS(version, fast=fast, **overrides)


def memcached(version: str | None = None, *, fast: bool | None = None, **overrides: Any) -> Preset:
    """memcached (``memcached:1``): ready when it listens; reset: ``flush_all``. URL:
    ``memcached://host:port``."""
    return MEMCACHED(version, fast=fast, **overrides)


#: The presets by name, as the ini line's ``preset=`` names them.
BY_NAME: dict[str, Preset] = {
    preset.name: preset for preset in (POSTGRES, MARIADB, REDIS, RABBITMQ, NATS, MEMCACHED)
}
