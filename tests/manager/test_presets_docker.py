"""Presets against real servers (the test environment's images under the official names,
with entrypoints that honour the official variables): each is ready when its readiness
check says so, its URL works with a real client library, and its reset leaves it as clean
as a new server, in every form of declaring, with and without xdist."""

from __future__ import annotations

import docker
import pytest

from tests import pages
from tests.conftest import SERIAL_AND_XDIST, InnerRuns
from tests.testenv import ROOT

pytestmark = pytest.mark.docker


POSTGRES_SUITE = """
import psycopg
import pytest
from pytest_containers import presets

MARK = pytest.mark.container(presets.postgres(), scope="module", reset=True)


@MARK
def test_first_writes(container):
    # Ready means the real server: the first start's restart is over.
    assert container.logs().count("ready to accept connections") == 2
    with psycopg.connect(container.url()) as db:
        db.execute("create table orders (id int)")
        db.execute("insert into orders values (1)")
        assert db.execute("show fsync").fetchone() == ("off",)


@MARK
def test_second_sees_a_new_database(container):
    with psycopg.connect(container.url()) as db:
        found = db.execute("select count(*) from pg_tables where tablename = 'orders'")
        assert found.fetchone() == (0,)


def test_the_url_names_each_driver(container_factory):
    slow = container_factory(presets.postgres(fast=False, env={"POSTGRES_DB": "app"}))
    assert slow.url(driver="asyncpg").startswith("postgresql+asyncpg://test:test@")
    assert slow.url().endswith("/app")
    with psycopg.connect(slow.url()) as db:
        assert db.execute("show fsync").fetchone() == ("on",)
"""


@SERIAL_AND_XDIST
def test_postgres_is_ready_after_its_restart_and_reset_drops_the_database(
    run_suite: InnerRuns,
    pytester: pytest.Pytester,
    docker_client: docker.DockerClient,
    workers: list[str],
) -> None:
    pytester.makepyfile(test_pg=POSTGRES_SUITE)
    result = run_suite(*workers)
    result.assert_outcomes(passed=3)
    assert run_suite.leftovers(docker_client) == []


OTHERS_SUITE = """
import asyncio
import urllib.parse

import nats
import pymemcache.client.base
import pymysql
import pytest
import redis
from pytest_containers import container_fixture, presets

maria = container_fixture(presets.mariadb(), scope="module", reset=True)
cache = container_fixture(presets.memcached(), scope="module", reset=True)
kv = container_fixture(presets.redis(), scope="module", reset=True)


def mysql(url):
    parts = urllib.parse.urlsplit(url)
    return pymysql.connect(
        host=parts.hostname, port=parts.port, user=parts.username,
        password=parts.password, database=parts.path.lstrip("/"),
    )


def memcached(url):
    parts = urllib.parse.urlsplit(url)
    return pymemcache.client.base.Client((parts.hostname, parts.port))


def test_mariadb_first(maria):
    assert maria.url(driver="pymysql").startswith("mysql+pymysql://test:test@")
    with mysql(maria.url()) as db, db.cursor() as cursor:
        cursor.execute("create table t (id int)")


def test_mariadb_second_is_clean(maria):
    with mysql(maria.url()) as db, db.cursor() as cursor:
        cursor.execute("show tables")
        assert cursor.fetchall() == ()


def test_memcached_first(cache):
    memcached(cache.url()).set("k", "v")


def test_memcached_second_is_clean(cache):
    assert memcached(cache.url()).get("k") is None


def test_redis_first(kv):
    redis.Redis.from_url(kv.url()).set("k", "v")


def test_redis_second_is_clean(kv):
    assert redis.Redis.from_url(kv.url()).dbsize() == 0


@pytest.mark.container(presets.nats())
def test_nats(container):
    async def round_trip():
        client = await nats.connect(container.url())
        inbox = await client.subscribe("greet")
        await client.publish("greet", b"hello")
        message = await inbox.next_msg(timeout=5)
        await client.close()
        return message.data

    assert asyncio.run(round_trip()) == b"hello"
"""


@SERIAL_AND_XDIST
def test_mariadb_memcached_redis_and_nats_answer_real_clients_at_their_urls(
    run_suite: InnerRuns,
    pytester: pytest.Pytester,
    docker_client: docker.DockerClient,
    workers: list[str],
) -> None:
    pytester.makepyfile(test_others=OTHERS_SUITE)
    # --dist loadfile: each module-scoped server's two tests in order, on one worker.
    dist = ["--dist", "loadfile"] if workers else []
    result = run_suite(*workers, *dist)
    result.assert_outcomes(passed=7)
    assert run_suite.leftovers(docker_client) == []


def test_rabbitmq_reset_empties_the_default_vhost_for_a_service(
    run_suite: InnerRuns, pytester: pytest.Pytester, docker_client: docker.DockerClient
) -> None:
    # Serial only: under xdist a per="worker" service is one server per process (the
    # controller's too), three RabbitMQ boots of 20-30 s each on this 2-core machine.
    pytester.makeini(
        """
        [pytest]
        container_services =
            mq preset=rabbitmq expose=AMQP_URL={url} reset=preset
        """
    )
    pytester.makepyfile(
        test_mq="""
        import os

        import pika


        def channel():
            return pika.BlockingConnection(pika.URLParameters(os.environ["AMQP_URL"])).channel()


        def test_first_declares_a_queue(container_services):
            assert os.environ["AMQP_URL"].startswith("amqp://test:test@")
            channel().queue_declare("jobs", durable=True)


        def test_second_finds_none(container_services):
            import pika.exceptions
            import pytest

            with pytest.raises(pika.exceptions.ChannelClosedByBroker, match="NOT_FOUND"):
                channel().queue_declare("jobs", passive=True)
        """
    )
    result = run_suite()
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["containers: service mq  rabbitmq:3 *AMQP_URL*"])
    assert run_suite.leftovers(docker_client) == []


def test_the_docs_preset_service_example_hands_over_a_url_that_connects(
    run_suite: InnerRuns, pytester: pytest.Pytester, docker_client: docker.DockerClient
) -> None:
    page = ROOT / "docs" / "how-to" / "presets.md"
    (example,) = [b for b in pages.blocks(page, "python") if "pytest_containers_services" in b]
    pytester.makeconftest(example)
    pytester.makepyfile(
        """
        import os

        import psycopg


        def test_the_suite_reads_its_database_url():
            with psycopg.connect(os.environ["DATABASE_URL"]) as db:
                assert db.execute("select current_database()").fetchone() == ("test",)
        """
    )
    run_suite("-n", "2").assert_outcomes(passed=1)
    assert run_suite.leftovers(docker_client) == []
