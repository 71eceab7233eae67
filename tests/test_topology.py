"""The address a test dials, on whichever engine topology the suite runs against.

scripts/topologies runs this file on every topology that scripts/topology.sh sets up
(a tcp "remote" engine on 127.0.0.2, ssh, contexts, podman, tests inside a container...).
TESTENV_EXPECT_HOST names the address a topology's published ports must be reached at,
where the topology fixes it; in the plain suite it is unset and only reaching counts.
"""

from __future__ import annotations

import http.client
import os

import pytest

from pytest_containers import ContainerFactory, wait

pytestmark = pytest.mark.docker

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
