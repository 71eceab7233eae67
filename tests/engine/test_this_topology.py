"""The address a test dials, and one pull per image, on whichever engine topology the
suite runs against.

scripts/topologies runs this file on every topology that scripts/topology.sh sets up
(a tcp "remote" engine on 127.0.0.2, ssh, contexts, podman, tests inside a container...).
TESTENV_EXPECT_HOST names the address a topology's published ports must be reached at,
where the topology fixes it; in the plain suite it is unset and only reaching counts.
"""

from __future__ import annotations

import contextlib
import http.client
import os

import docker
import docker.errors
import pytest

from pytest_containers import ContainerFactory, wait
from tests.conftest import InnerRuns
from tests.testenv import BUSYBOX, REGISTRY, SETTINGS, RegistryLog, tag_in_registry

pytestmark = pytest.mark.docker

#: HOME as the topology set it, before pytester gives each test its own: the ssh topology's
#: HOME holds the ssh_config alias and known_hosts its engine is reached through.
TOPOLOGY_HOME = os.environ.get("HOME", "")

SERVE = "mkdir /www && echo topology > /www/index.html && exec httpd -f -p 8080 -h /www"


def test_a_published_port_answers_at_the_address_the_test_is_given(
    container_factory: ContainerFactory,
) -> None:
    web = container_factory(
        "busybox:1.35",
        command=["sh", "-c", SERVE],
        ports=[8080],
        wait=wait.for_http("/index.html", port=8080),
    )
    host, port = web.address(8080)
    expected = os.environ.get("TESTENV_EXPECT_HOST")
    if expected:
        assert host == expected, f"topology {os.environ.get('TESTENV_TOPOLOGY')}"
    connection = http.client.HTTPConnection(host, port, timeout=5)
    try:
        connection.request("GET", "/index.html")
        assert connection.getresponse().read() == b"topology\n"
    finally:
        connection.close()


def test_two_workers_pull_a_cold_image_once(
    docker_client: docker.DockerClient,
    run_suite: InnerRuns,
    pytester: pytest.Pytester,
    registry_log: RegistryLog,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every process of a run, on every kind of engine, takes the same lock for an image:
    podman's /info answers a new ID on each request, so the engine's identity must not
    come from it."""
    # A new tag of a seed image, pushed through the machine's own dockerd (which reaches
    # the registry on its loopback): no engine has it, whatever the topology's engine is.
    local = docker.DockerClient(base_url=f"unix://{SETTINGS['TESTENV_ENGINE_SOCKET']}")
    try:
        image = tag_in_registry(local, BUSYBOX)
    finally:
        local.close()
    pytester.makepyfile(
        f"""
        import pytest

        @pytest.mark.parametrize("n", range(4))
        @pytest.mark.container("{image}", command=["sleep", "30"])
        def test_image(container, n):
            assert container.exec(["echo", "pulled"]).stdout == "pulled\\n"
        """
    )
    monkeypatch.setenv("HOME", TOPOLOGY_HOME)
    try:
        run_suite("-n", "2").assert_outcomes(passed=4)
        assert registry_log.manifest_requests(image) == 1, os.environ.get("TESTENV_TOPOLOGY")
    finally:
        # The tag only: the seed image it names is shared with other tests.
        with contextlib.suppress(docker.errors.NotFound):
            docker_client.images.remove(f"{REGISTRY}/library/{image}")
