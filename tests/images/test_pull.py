"""The pull logic without an engine: classification, messages, progress, retries, stalls.

The messages are the engine's own (Docker 20.10 and later, the registry's errors inside),
as the image cache sees them in ``APIError.explanation`` or a stream's ``error`` field.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any, cast

import docker
import docker.errors
import pytest
import requests

from pytest_containers._base.reference import parse_reference
from pytest_containers._images.pull import (
    PROGRESS_INTERVAL,
    PullProgress,
    _Tracker,
    classify_pull_failure,
    describe_pull_failure,
    is_not_found,
    make_pull_error,
    pull_image,
    redact,
)
from pytest_containers.errors import ImageNotFoundError, ImagePullError

PERMANENT = [
    "manifest for 127.0.0.1:5555/library/nope:1 not found: manifest unknown: manifest unknown",
    "manifest for redis:nope not found: manifest unknown: manifest unknown",
    "pull access denied for nope, repository does not exist or may require 'docker login': "
    "denied: requested access to the resource is denied",
    "unauthorized: authentication required",
    'Head "https://ghcr.io/v2/org/private/manifests/1": denied',
    "invalid reference format",
    "invalid reference format: repository name must be lowercase",
    "no matching manifest for linux/arm64/v8 in the manifest list entries",
    "repository 127.0.0.1:5555/library/nope not found: name unknown: repository name not known",
    'Get "https://127.0.0.1:5555/v2/": http: server gave HTTP response to HTTPS client',
    'Get "https://registry.local/v2/": x509: certificate signed by unknown authority',
    "some message the engine has never said",
]
TRANSIENT = [
    'Get "http://127.0.0.1:5599/v2/": dial tcp 127.0.0.1:5599: connect: connection refused',
    'Get "https://registry-1.docker.io/v2/": net/http: request canceled while waiting for '
    "connection (Client.Timeout exceeded while awaiting headers)",
    'Get "https://registry-1.docker.io/v2/": dial tcp: lookup registry-1.docker.io on '
    "127.0.0.53:53: read udp 127.0.0.1:39130->127.0.0.53:53: i/o timeout",
    'Get "https://registry-1.docker.io/v2/": net/http: TLS handshake timeout',
    "read tcp 172.17.0.2:41022->104.18.123.25:443: read: connection reset by peer",
    "unexpected EOF",
    "received unexpected HTTP status: 503 Service Unavailable",
    "received unexpected HTTP status: 502 Bad Gateway",
    'error parsing HTTP 500 response body: unexpected end of JSON input: ""',
    'Get "https://registry.local/v2/": context deadline exceeded',
    "dial tcp: lookup registry.local: no such host",
]
RATE_LIMITED = [
    "toomanyrequests: You have reached your pull rate limit. You may increase the limit by "
    "authenticating and upgrading: https://www.docker.com/increase-rate-limit",
    "toomanyrequests: Too Many Requests (HAP429).",
    "received unexpected HTTP status: 429 Too Many Requests",
]


@pytest.mark.parametrize("message", PERMANENT)
def test_permanent_failures(message: str) -> None:
    assert classify_pull_failure(message) == "permanent"


@pytest.mark.parametrize("message", TRANSIENT)
def test_transient_failures(message: str) -> None:
    assert classify_pull_failure(message) == "transient"


@pytest.mark.parametrize("message", RATE_LIMITED)
def test_rate_limited_failures(message: str) -> None:
    assert classify_pull_failure(message) == "rate-limited"


def test_status_429_is_rate_limited_whatever_the_words() -> None:
    assert classify_pull_failure("slow down", 429) == "rate-limited"


def test_not_found_is_told_apart_from_denied() -> None:
    assert is_not_found(PERMANENT[0])
    assert is_not_found(PERMANENT[2])  # Docker Hub says "does not exist" for private repos
    assert not is_not_found("unauthorized: authentication required")
    assert not is_not_found(TRANSIENT[0])


def test_redact_masks_credentials_in_urls() -> None:
    text = 'Get "https://bob:s3cret@registry.local/v2/": unauthorized'
    assert redact(text) == 'Get "https://***@registry.local/v2/": unauthorized'
    assert "s3cret" not in redact("proxy http://token@proxy:3128 refused")
    assert redact(TRANSIENT[0]) == TRANSIENT[0]


def _describe(kind: str, reason: str) -> str:
    return describe_pull_failure(
        kind,
        image="redis:7",
        resolved="127.0.0.1:5555/library/redis:7",
        registry="127.0.0.1:5555",
        reason=reason,
        attempts=3,
        seconds=2.0,
        stall_timeout=120,
    )


@pytest.mark.parametrize(
    ("kind", "reason", "advice"),
    [
        ("permanent", PERMANENT[0], "check the repository name and the tag"),
        ("permanent", "unauthorized: authentication required", "docker login 127.0.0.1:5555"),
        ("rate-limited", RATE_LIMITED[0], "--container-mirror"),
        ("transient", TRANSIENT[0], "gave up after 3 attempts"),
        ("stalled", "no progress", "no progress for 120 s"),
    ],
)
def test_messages_name_image_registry_reason_and_advice(
    kind: str, reason: str, advice: str
) -> None:
    message = _describe(kind, reason)
    assert "redis:7" in message
    assert "127.0.0.1:5555" in message
    assert reason in message
    assert advice.lower() in message.lower()


def test_not_found_raises_image_not_found_error() -> None:
    error = make_pull_error(
        "permanent", "m", image="nope:1", registry="127.0.0.1:5555", reason=PERMANENT[0]
    )
    assert isinstance(error, ImageNotFoundError)
    assert (error.kind, error.image, error.registry) == ("permanent", "nope:1", "127.0.0.1:5555")
    denied = make_pull_error("permanent", "m", image="x", registry="r", reason=PERMANENT[3])
    assert type(denied) is ImagePullError
    flaky = make_pull_error("transient", "m", image="x", registry="r", reason=TRANSIENT[0])
    assert type(flaky) is ImagePullError


# A real stream of `docker pull` of a one-layer image, as decoded JSON.
BUSYBOX_STREAM: list[dict[str, Any]] = [
    {"status": "Pulling from library/busybox", "id": "1.35"},
    {"status": "Pulling fs layer", "progressDetail": {}, "id": "4fa8122f3c1a"},
    {"status": "Pulling fs layer", "progressDetail": {}, "id": "0b1a2f3c4d5e"},
    {"status": "Already exists", "progressDetail": {}, "id": "0b1a2f3c4d5e"},
    {
        "status": "Downloading",
        "progressDetail": {"current": 36445, "total": 1068569},
        "id": "4fa8122f3c1a",
    },
    {
        "status": "Downloading",
        "progressDetail": {"current": 1068569, "total": 1068569},
        "id": "4fa8122f3c1a",
    },
    {"status": "Verifying Checksum", "progressDetail": {}, "id": "4fa8122f3c1a"},
    {"status": "Download complete", "progressDetail": {}, "id": "4fa8122f3c1a"},
    {
        "status": "Extracting",
        "progressDetail": {"current": 32768, "total": 1068569},
        "id": "4fa8122f3c1a",
    },
    {"status": "Pull complete", "progressDetail": {}, "id": "4fa8122f3c1a"},
    {"status": "Digest: sha256:" + "8f" * 32},
    {"status": "Status: Downloaded newer image for 127.0.0.1:5555/library/busybox:1.35"},
]


def test_tracker_folds_layers_and_bytes() -> None:
    tracker = _Tracker("busybox", None)
    for entry in BUSYBOX_STREAM:
        tracker.feed(entry)
    progress = tracker.snapshot()
    assert progress == PullProgress("busybox", 2, 2, 1068569, 1068569)


def test_tracker_calls_back_at_most_ten_times_a_second() -> None:
    seen: list[PullProgress] = []
    tracker = _Tracker("busybox", seen.append)
    started = time.monotonic()
    for _ in range(200):
        for entry in BUSYBOX_STREAM:
            tracker.feed(entry)
    elapsed = time.monotonic() - started
    assert 1 <= len(seen) <= elapsed / PROGRESS_INTERVAL + 1


# -- pull_image against a fake engine --------------------------------------------------

REF = parse_reference("127.0.0.1:5555/library/busybox:1.35")


class FakeEngine:
    """Answers ``client.api.pull`` with scripted outcomes, one per attempt."""

    def __init__(self, *outcomes: object) -> None:
        self.outcomes = list(outcomes)
        self.pulls: list[tuple[str, str | None, str | None]] = []
        self.release = threading.Event()  # unblocks a stalled stream at the end

    def pull(
        self, name: str, *, tag: str | None, platform: str | None, stream: bool, decode: bool
    ) -> Iterator[dict[str, Any]]:
        assert stream
        assert decode
        self.pulls.append((name, tag, platform))
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return self._stream(cast("list[Any]", outcome))

    def _stream(self, entries: list[Any]) -> Iterator[dict[str, Any]]:
        for entry in entries:
            if entry == "stall":
                self.release.wait(30)
                return
            yield entry

    def inspect_image(self, target: str) -> dict[str, Any]:
        return {"Id": "sha256:" + "ab" * 32}

    def client(self) -> docker.DockerClient:
        return cast("docker.DockerClient", SimpleNamespace(api=self))


@pytest.fixture
def engine() -> Iterator[FakeEngine]:
    fake = FakeEngine()
    yield fake
    fake.release.set()


def _api_error(status: int, explanation: str) -> docker.errors.APIError:
    response = requests.Response()
    response.status_code = status
    cls = docker.errors.NotFound if status == 404 else docker.errors.APIError
    return cls(f"{status} Client Error", response=response, explanation=explanation)


def _pull(engine: FakeEngine, **options: Any) -> str:
    settings: dict[str, Any] = {
        "platform": None,
        "stall_timeout": 5.0,
        "retry_budget": 1.0,
        "on_progress": None,
        "declared": "busybox:1.35",
    }
    settings.update(options)
    return pull_image(engine.client(), REF, **settings).image_id


def test_successful_pull_reports_progress_and_returns_the_id(engine: FakeEngine) -> None:
    engine.outcomes = [BUSYBOX_STREAM]
    seen: list[PullProgress] = []
    assert _pull(engine, on_progress=seen.append) == "sha256:" + "ab" * 32
    assert engine.pulls == [("127.0.0.1:5555/library/busybox", "1.35", None)]
    assert seen[-1].done
    assert seen[-1].layers_done == seen[-1].layers_total == 2


def test_digest_reference_pulls_by_digest(engine: FakeEngine) -> None:
    engine.outcomes = [BUSYBOX_STREAM]
    pinned = REF.with_digest("sha256:" + "8f" * 32)
    pull_image(
        engine.client(),
        pinned,
        platform="linux/amd64",
        stall_timeout=5,
        retry_budget=0,
        on_progress=None,
    )
    assert engine.pulls == [
        ("127.0.0.1:5555/library/busybox", "sha256:" + "8f" * 32, "linux/amd64")
    ]


def test_permanent_failure_is_not_retried(engine: FakeEngine) -> None:
    engine.outcomes = [_api_error(404, PERMANENT[0]), BUSYBOX_STREAM]
    with pytest.raises(ImageNotFoundError) as caught:
        _pull(engine, retry_budget=30)
    assert len(engine.pulls) == 1
    error = caught.value
    assert error.kind == "permanent"
    assert error.image == "busybox:1.35"
    assert error.registry == "127.0.0.1:5555"
    assert error.reason == PERMANENT[0]
    assert "busybox:1.35" in str(error)
    assert "manifest unknown" in str(error)


def test_transient_failure_is_retried_then_succeeds(engine: FakeEngine) -> None:
    engine.outcomes = [_api_error(500, TRANSIENT[0]), _api_error(500, TRANSIENT[0]), BUSYBOX_STREAM]
    assert _pull(engine, retry_budget=5).startswith("sha256:")
    assert len(engine.pulls) == 3


def test_transient_failure_gives_up_when_the_budget_is_spent(engine: FakeEngine) -> None:
    engine.outcomes = [_api_error(500, TRANSIENT[0])] * 50
    started = time.monotonic()
    with pytest.raises(ImagePullError) as caught:
        _pull(engine, retry_budget=1.0)
    assert time.monotonic() - started < 1.5
    assert caught.value.kind == "transient"
    assert 2 <= len(engine.pulls) < 10
    assert f"after {len(engine.pulls)} attempts" in str(caught.value)


def test_error_inside_the_stream_is_classified(engine: FakeEngine) -> None:
    broken = [
        *BUSYBOX_STREAM[:5],
        {"errorDetail": {"message": "unexpected EOF"}, "error": "unexpected EOF"},
    ]
    engine.outcomes = [broken, BUSYBOX_STREAM]
    assert _pull(engine, retry_budget=5).startswith("sha256:")
    assert len(engine.pulls) == 2


def test_lost_engine_connection_is_transient(engine: FakeEngine) -> None:
    engine.outcomes = [requests.exceptions.ConnectionError("Connection aborted.")]
    with pytest.raises(ImagePullError) as caught:
        _pull(engine, retry_budget=0)
    assert caught.value.kind == "transient"
    assert "Docker engine" in caught.value.reason


def test_stalled_pull_is_aborted(engine: FakeEngine) -> None:
    engine.outcomes = [[*BUSYBOX_STREAM[:3], "stall"]]
    started = time.monotonic()
    with pytest.raises(ImagePullError) as caught:
        _pull(engine, stall_timeout=0.3, retry_budget=0)
    assert 0.3 <= time.monotonic() - started < 2
    assert caught.value.kind == "stalled"
    assert "no progress for 0.3 s" in str(caught.value)


def test_stalled_pull_is_retried_within_the_budget(engine: FakeEngine) -> None:
    engine.outcomes = [[*BUSYBOX_STREAM[:3], "stall"], BUSYBOX_STREAM]
    assert _pull(engine, stall_timeout=0.2, retry_budget=5).startswith("sha256:")
    assert len(engine.pulls) == 2


def test_rate_limited_message_says_what_to_do(engine: FakeEngine) -> None:
    engine.outcomes = [_api_error(500, RATE_LIMITED[0])]
    with pytest.raises(ImagePullError) as caught:
        _pull(engine, retry_budget=0)
    assert caught.value.kind == "rate-limited"
    assert "docker login" in str(caught.value)
    assert "--container-mirror" in str(caught.value)


def test_advice_names_only_options_that_exist() -> None:
    transient = _describe("transient", TRANSIENT[0])
    assert "retry budget" not in transient
    assert "--container-stall-timeout" in _describe("stalled", "no progress")
