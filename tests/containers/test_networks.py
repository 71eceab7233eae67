"""Several services that talk to each other: private networks with aliases per scope
instance, networks made by network_fixture, addresses between containers and back to the
test, the order stacked markers start in, and that no network outlives its run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from pytest_containers._containers.container import ContainerSpec
from pytest_containers._containers.networks import is_docker_mode, network_name
from tests.conftest import SERIAL_AND_XDIST, InnerRuns
from tests.testenv import BUSYBOX, MIRROR_OPTION, REDIS, run_containers, run_networks

# -- pure logic ------------------------------------------------------------------------


def test_a_logical_network_is_made_later_and_docker_modes_pass_through() -> None:
    private = ContainerSpec.from_kwargs(BUSYBOX, network="backend", aliases=["db", "db"])
    assert private.aliases == ("db",)
    assert "network" not in private.create_kwargs()
    assert ContainerSpec.from_kwargs(BUSYBOX, network="host").create_kwargs()["network"] == "host"
    assert is_docker_mode("container:abc")
    assert is_docker_mode("none")
    assert not is_docker_mode("backend")
    again = ContainerSpec.from_kwargs(BUSYBOX, network="backend", aliases="db")
    assert hash(private) == hash(again)


def test_aliases_need_a_shared_network_and_bad_values_say_what_to_pass() -> None:
    with pytest.raises(ValueError, match=r"aliases=\['db'\] need a network.*network='backend'"):
        ContainerSpec.from_kwargs(BUSYBOX, aliases=["db"])
    with pytest.raises(ValueError, match="'bridge' network resolves no aliases"):
        ContainerSpec.from_kwargs(BUSYBOX, network="bridge", aliases=["db"])
    with pytest.raises(TypeError, match=r"network must be a name .* or a Network"):
        ContainerSpec.from_kwargs(BUSYBOX, network=42)
    with pytest.raises(TypeError, match="aliases must be a list of names"):
        ContainerSpec.from_kwargs(BUSYBOX, network="backend", aliases=[1])
    with pytest.raises(TypeError, match="use the aliases= keyword"):
        ContainerSpec.from_kwargs(BUSYBOX, options={"networking_config": {}})
    with pytest.raises(TypeError, match="host_access must be True or False"):
        ContainerSpec.from_kwargs(BUSYBOX, host_access="yes")


def test_host_access_adds_the_host_gateway_to_any_extra_hosts() -> None:
    alone = ContainerSpec.from_kwargs(BUSYBOX, host_access=True).create_kwargs()
    assert alone["extra_hosts"] == {"host.docker.internal": "host-gateway"}
    as_dict = ContainerSpec.from_kwargs(
        BUSYBOX, host_access=True, options={"extra_hosts": {"db.test": "10.0.0.2"}}
    ).create_kwargs()
    assert as_dict["extra_hosts"] == {
        "host.docker.internal": "host-gateway",
        "db.test": "10.0.0.2",
    }
    as_list = ContainerSpec.from_kwargs(
        BUSYBOX, host_access=True, options={"extra_hosts": ["db.test:10.0.0.2"]}
    ).create_kwargs()
    assert as_list["extra_hosts"] == ["host.docker.internal:host-gateway", "db.test:10.0.0.2"]
    assert "extra_hosts" not in ContainerSpec.from_kwargs(BUSYBOX).create_kwargs()


def test_network_names_are_unique_and_name_the_run_and_the_logical_name() -> None:
    first, second = network_name("0123456789abcdef", "back end"), network_name("0123456789", "x")
    assert first.startswith("pytest-containers-01234567-back-end-")
    assert first != network_name("0123456789abcdef", "back end")
    assert second.startswith("pytest-containers-01234567-x-")


def test_aliases_without_a_network_on_a_marker_fail_collection_naming_the_test(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        f"""
        import pytest

        @pytest.mark.container("{BUSYBOX}", aliases=["db"])
        def test_db(container):
            pass
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*test_db*aliases=?'db'? need a network*network='backend'*"])
    assert "Traceback" not in result.stdout.str()


# -- against the engine ----------------------------------------------------------------


@pytest.fixture
def nothing_left(run_suite: InnerRuns, docker_client: docker.DockerClient) -> Iterator[None]:
    """Every inner run of the test must leave no container and no network behind."""
    yield
    assert run_suite.leftovers(docker_client) == []
    assert run_suite.leftover_networks(docker_client) == []


@pytest.mark.docker
@SERIAL_AND_XDIST
def test_eight_tests_each_reach_their_own_cache_by_alias(
    run_suite: InnerRuns, pytester: pytest.Pytester, nothing_left: None, workers: list[str]
) -> None:
    pytester.makepyfile(
        f"""
        import socket, uuid
        import pytest
        from pytest_containers import NetworkError, wait

        @pytest.mark.container("{REDIS}", name="cache", network="backend", aliases=["cache"],
                               ports=[6379], wait=wait.for_log("Ready to accept connections"))
        @pytest.mark.container("{BUSYBOX}", name="tool", network="backend",
                               command=["sleep", "300"])
        @pytest.mark.parametrize("n", range(8))
        def test_cache_by_alias(containers, n):
            cache, tool = containers["cache"], containers["tool"]
            mine = uuid.uuid4().hex
            # The same key in every test: a shared network would let a test read another's.
            with socket.create_connection(cache.address(6379), timeout=5) as conn:
                conn.sendall(f"SET owner {{mine}}\\r\\n".encode())
                assert conn.recv(64) == b"+OK\\r\\n"
            ping = tool.exec(["sh", "-c", "(echo PING; sleep 1) | nc cache 6379"])
            assert ping.stdout == "+PONG\\r\\n", ping
            ask = "printf 'GET owner\\\\r\\\\nDBSIZE\\\\r\\\\n' | nc cache 6379"
            read = tool.exec(["sh", "-c", ask])
            assert read.stdout == f"$32\\r\\n{{mine}}\\r\\n:1\\r\\n", read
            by_ip = tool.exec(["sh", "-c", f"(echo PING; sleep 1) | nc {{cache.ip()}} 6379"])
            assert by_ip.stdout == "+PONG\\r\\n"
            assert cache.internal_address(6379) == ("cache", 6379)
            assert cache.url(6379, "redis", internal=True) == "redis://cache:6379"
            assert cache.url("6379/tcp", "redis", "/0") == f"redis://127.0.0.1:{{cache.port(6379)}}/0"
            assert tool.internal_address(80) == (tool.ip("backend"), 80)
            assert cache.network == tool.network and cache.network.logical == "backend"
            assert sorted(cache.network.containers()) == sorted([cache.name, tool.name])
            with pytest.raises(NetworkError, match="is on networks pytest-containers-"):
                cache.ip("frontend")
        """
    )
    result = run_suite(*workers)
    result.assert_outcomes(passed=8)


@pytest.mark.docker
@SERIAL_AND_XDIST
def test_teardown_in_every_order_of_fixture_setup_leaves_nothing_and_no_error(
    run_suite: InnerRuns, pytester: pytest.Pytester, nothing_left: None, workers: list[str]
) -> None:
    pytester.makepyfile(
        f"""
        import pytest
        from pytest_containers import (
            ContainerStartupError, Network, container_fixture, network_fixture, wait,
        )
        backend = network_fixture(scope="session")
        net = network_fixture("app-net")
        isolated = network_fixture(internal=True, options={{"options": {{"com.example": "1"}}}})
        db = container_fixture("{REDIS}", network=backend, aliases=["db"], scope="module",
                               wait=wait.for_log("Ready to accept connections"))
        SLEEP = ["sleep", "300"]

        def ping_db(client):
            return client.exec(["sh", "-c", "(echo PING; sleep 1) | nc db 6379"]).stdout

        def test_factory_set_up_before_the_network(container_factory, net):
            one = container_factory("{BUSYBOX}", command=SLEEP, network=net, aliases=["one"])
            two = container_factory("{BUSYBOX}", command=SLEEP, network=net)
            assert two.exec(["ping", "-c", "1", "one"]).exit_code == 0
            assert isinstance(net, Network) and net.logical == "app-net"

        def test_network_set_up_before_the_factory(net, container_factory):
            one = container_factory("{BUSYBOX}", command=SLEEP, network=net, aliases=["one"])
            two = container_factory("{BUSYBOX}", command=SLEEP, network=net)
            assert two.exec(["ping", "-c", "1", "one"]).exit_code == 0

        @pytest.mark.parametrize("n", range(2))
        def test_function_clients_of_a_module_db(db, backend, container_factory, n):
            client = container_factory("{BUSYBOX}", command=SLEEP, network=backend)
            assert ping_db(client) == "+PONG\\r\\n"

        @pytest.mark.container("{BUSYBOX}", name="client", command=SLEEP, network=backend)
        def test_a_marker_joins_a_network_fixture(containers, db):
            assert ping_db(containers["client"]) == "+PONG\\r\\n"

        def test_a_container_that_fails_to_start_leaves_no_network(container_factory):
            with pytest.raises(ContainerStartupError):
                container_factory("{BUSYBOX}", command=["false"], network="doomed",
                                  wait=wait.for_log("never", timeout=5))
            ok = container_factory("{BUSYBOX}", command=SLEEP, network="private")
            assert ok.network.logical == "private"

        def test_an_internal_network(isolated, container_factory):
            assert isolated.raw.attrs["Internal"] is True
            assert isolated.raw.attrs["Options"] == {{"com.example": "1"}}
            assert isolated.logical == "isolated"
            alone = container_factory("{BUSYBOX}", command=SLEEP, network=isolated)
            assert isolated.containers() == [alone.name]

        def test_a_network_removed_under_its_container(container_factory, container_client):
            own = container_factory("{BUSYBOX}", command=SLEEP, network="gone")
            container_client.api.disconnect_container_from_network(own.id, own.network.id)
            container_client.api.remove_network(own.network.id)
        """
    )
    result = run_suite(*workers)
    result.assert_outcomes(passed=8)
    assert "ERROR" not in result.stdout.str()


@pytest.mark.docker
def test_a_failing_test_on_a_network_shows_both_containers_logs(
    run_suite: InnerRuns, pytester: pytest.Pytester, nothing_left: None
) -> None:
    pytester.makepyfile(
        f"""
        import pytest

        @pytest.mark.container("{BUSYBOX}", name="api", network="backend", aliases=["api"],
                               command=["sh", "-c", "echo api-says-hello; sleep 300"])
        @pytest.mark.container("{BUSYBOX}", name="worker", network="backend",
                               command=["sh", "-c", "echo worker-says-hello; sleep 300"])
        def test_fails(containers):
            assert containers["worker"].exec(["ping", "-c", "1", "api"]).exit_code == 0
            assert False, "the services disagree"
        """
    )
    result = run_suite()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines_random(
        ["*container logs: *busybox*", "api-says-hello", "worker-says-hello"]
    )
    assert "logs unavailable" not in result.stdout.str()


@pytest.mark.docker
def test_a_container_calls_back_a_server_the_test_runs(
    run_suite: InnerRuns, pytester: pytest.Pytester, nothing_left: None
) -> None:
    pytester.makepyfile(
        f"""
        import socket, threading

        def test_callback(container_factory):
            # Listen on every interface: the container comes from the bridge's gateway.
            server = socket.create_server(("0.0.0.0", 0))
            port = server.getsockname()[1]
            heard = []

            def serve():
                connection, _ = server.accept()
                with connection:
                    heard.append(connection.recv(64))
                    connection.sendall(b"pong\\n")

            thread = threading.Thread(target=serve, daemon=True)
            thread.start()
            caller = container_factory("{BUSYBOX}", command=["sleep", "300"], host_access=True,
                                       network="backend")
            reply = caller.exec(["sh", "-c", f"echo ping | nc -w 5 host.docker.internal {{port}}"])
            thread.join(5)
            assert heard == [b"ping\\n"]
            assert reply.stdout == "pong\\n"
        """
    )
    run_suite().assert_outcomes(passed=1)


@pytest.mark.docker
def test_stacked_markers_start_in_the_order_written_each_ready_before_the_next(
    run_suite: InnerRuns, pytester: pytest.Pytester, nothing_left: None
) -> None:
    pytester.makepyfile(
        f"""
        import pytest
        from pytest_containers import wait

        pytestmark = pytest.mark.container("{BUSYBOX}", name="outer", command=["sleep", "300"])

        # The app asks the database once, as it starts: only a ready db answers.
        @pytest.mark.container("{REDIS}", name="db", network="backend", aliases=["db"],
                               wait=wait.for_log("Ready to accept connections"))
        @pytest.mark.container("{BUSYBOX}", name="app", network="backend",
                               command=["sh", "-c",
                                        "(echo PING; sleep 1) | nc db 6379 > /answer; sleep 300"])
        def test_order(containers):
            assert list(containers) == ["outer", "db", "app"]
            started = [c.attrs["State"]["StartedAt"] for c in containers.values()]
            assert started == sorted(started)
            assert containers["app"].exec(["cat", "/answer"]).stdout == "+PONG\\r\\n"
        """
    )
    run_suite().assert_outcomes(passed=1)


@pytest.mark.docker
def test_kill_9_of_a_run_removes_its_networks_too(
    pytester: pytest.Pytester, docker_client: docker.DockerClient, tmp_path: Path,
    run_suite: InnerRuns,
) -> None:  # fmt: skip
    up = tmp_path / "up"
    up.mkdir()
    pytester.makepyfile(
        f"""
        import os, time, pytest

        @pytest.mark.container("{BUSYBOX}", command=["sleep", "300"], network="backend",
                               aliases=["one"])
        def test_sleeps(containers):
            open(os.path.join({str(up)!r}, "up"), "w").close()
            time.sleep(300)
        """
    )
    run_id = run_suite.new_run_id()
    run = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", MIRROR_OPTION,
         f"--testrunuid={run_id}", f"--container-cache-dir={tmp_path / 'cache'}"],
        cwd=pytester.path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not (up / "up").exists():
        assert time.monotonic() < deadline, "the inner run never got its container up"
        assert run.poll() is None, run.communicate()[0]
        time.sleep(0.1)
    assert len(run_networks(docker_client, run_id)) == 1
    os.killpg(run.pid, signal.SIGKILL)
    run.communicate(timeout=30)
    deadline = time.monotonic() + 10
    while run_containers(docker_client, run_id) or run_networks(docker_client, run_id):
        assert time.monotonic() < deadline, run_networks(docker_client, run_id)
        time.sleep(0.2)


@pytest.mark.docker
def test_run_scoped_containers_share_one_network_whichever_worker_starts_them(
    run_suite: InnerRuns, pytester: pytest.Pytester, nothing_left: None, tmp_path: Path
) -> None:
    workers = tmp_path / "workers"
    workers.mkdir()
    pytester.makepyfile(
        f"""
        import os, time
        import pytest
        from pytest_containers import container_fixture, wait

        @pytest.mark.container("{REDIS}", name="cache", network="shared", aliases=["cache"],
                               scope="run", wait=wait.for_log("Ready to accept connections"))
        @pytest.mark.container("{BUSYBOX}", name="tool", network="shared", scope="run",
                               command=["sleep", "300"])
        @pytest.mark.parametrize("n", range(6))
        def test_shared(containers, n):
            tool = containers["tool"]
            ping = tool.exec(["sh", "-c", "(echo PING; sleep 1) | nc cache 6379"])
            assert ping.stdout == "+PONG\\r\\n"
            assert containers["cache"].network == tool.network

        # One worker starts only the tool, the other only the cache (not those above).
        tool = container_fixture("{BUSYBOX}", network="shared", scope="run",
                                 command=["sleep", "301"])
        cache = container_fixture("{REDIS}", network="shared", aliases=["other"], scope="run",
                                  wait=wait.for_log("Ready to accept connections"))

        @pytest.mark.parametrize("n", range(4))
        def test_each_worker_starts_one(request, n):
            worker = os.environ["PYTEST_XDIST_WORKER"]
            with open(os.path.join({str(workers)!r}, worker), "w"):
                pass
            if worker != "gw0":
                request.getfixturevalue("cache")
                return
            started = request.getfixturevalue("tool")
            deadline = time.monotonic() + 60
            ask = ["sh", "-c", "(echo PING; sleep 1) | nc other 6379"]
            while started.exec(ask).stdout != "+PONG\\r\\n":
                assert time.monotonic() < deadline, "the tool never reached the cache"
                time.sleep(0.2)
        """
    )
    run_suite("-n", "2").assert_outcomes(passed=10)
    # Only then did two workers each start one of the two containers.
    assert sorted(path.name for path in workers.iterdir()) == ["gw0", "gw1"]


@pytest.mark.docker
def test_neighbours_with_start_parallel_start_at_once_and_the_next_waits_for_both(
    run_suite: InnerRuns, pytester: pytest.Pytester, nothing_left: None
) -> None:
    # No clock: "one" and "two" are each ready only once the other has started, so
    # started one after the other the first would never be ready; "after" says whether
    # both were ready when it started.
    meet = pytester.path / "meet"
    meet.mkdir()
    pytester.makepyfile(
        f"""
        import pytest
        from pytest_containers import wait
        from pytest_containers._engine.connection import docker_time

        def meeting(me, other, **more):
            script = (
                f"touch /meet/{{me}}; until [ -e /meet/{{other}} ]; do sleep 0.1; done; "
                f"touch /meet/{{me}}-ready; echo ready; sleep 300"
            )
            return dict(
                command=["sh", "-c", script], wait=wait.for_log("ready"),
                volumes=["{meet}:/meet"], **more,
            )

        AFTER = (
            "if [ -e /meet/one-ready ] && [ -e /meet/two-ready ]; then echo saw both; "
            "else echo saw too few; fi; sleep 303"
        )

        def slow(n):
            # Ready two seconds after it starts.
            command = ["sh", "-c", f"sleep 2; echo ready; sleep {{300 + n}}"]
            return dict(command=command, wait=wait.for_log("ready"))

        def started(container):
            return docker_time(container.attrs["State"]["StartedAt"])

        @pytest.mark.container("{BUSYBOX}", name="one", **meeting("one", "two", start="parallel"))
        @pytest.mark.container("{BUSYBOX}", name="two", **meeting("two", "one", start="parallel"))
        @pytest.mark.container(
            "{BUSYBOX}", name="after", command=["sh", "-c", AFTER], wait=wait.for_log("saw"),
            volumes=["{meet}:/meet"],
        )
        def test_parallel(containers):
            assert "saw both" in containers["after"].logs()

        @pytest.mark.container("{BUSYBOX}", name="one", **slow(1))
        @pytest.mark.container("{BUSYBOX}", name="two", **slow(2))
        def test_sequential(containers):
            # A load only widens the gap.
            assert started(containers["two"]) > started(containers["one"]) + 1.9
        """
    )
    run_suite().assert_outcomes(passed=2)


def test_an_unknown_start_is_a_collection_error_naming_the_choices(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        f"""
        import pytest

        @pytest.mark.container("{BUSYBOX}", start="eager")
        def test_eager(container):
            pass
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*test_eager*invalid container start 'eager'; choose 'sequential' or 'parallel'*"]
    )


@pytest.mark.docker
def test_a_network_fixture_not_at_module_level_errors_its_test_saying_where_to_put_it(
    run_suite: InnerRuns, pytester: pytest.Pytester, nothing_left: None
) -> None:
    pytester.makepyfile(
        f"""
        import pytest
        from pytest_containers import network_fixture

        hidden = [network_fixture()]

        @pytest.mark.container("{BUSYBOX}", network=hidden[0], command=["sleep", "300"])
        def test_hidden(container):
            pass

        def test_other():
            pass
        """
    )
    result = run_suite()
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        ["*test_hidden: network= names a network_fixture that is not assigned to a module-level*"]
    )
    assert "Traceback" not in result.stdout.str()
