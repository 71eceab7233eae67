"""Pulling one image into the engine: progress, stall detection, classified retries.

:func:`pull_image` reads the engine's pull stream itself rather than letting docker-py
swallow it, so that it can report progress, notice a pull that stopped moving, and tell
a typo (no retry) from a flaky network (retry within a budget). The classification is the
pure function :func:`classify_pull_failure`, unit-tested on the engine's own messages.
"""

from __future__ import annotations

import queue
import random
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import docker
import docker.errors
import requests

from pytest_containers._engine.streams import EngineStream
from pytest_containers.errors import ImageNotFoundError, ImagePullError

if TYPE_CHECKING:
    from pytest_containers._base.reference import Reference

__all__ = [
    "PullProgress",
    "PullResult",
    "classify_pull_failure",
    "describe_pull_failure",
    "image_target",
    "inspect_image",
    "is_not_found",
    "make_pull_error",
    "pull_image",
    "redact",
]

#: Seconds between two calls of the progress callback, at least.
PROGRESS_INTERVAL = 0.1

_TRANSIENT_BACKOFF = (0.25, 10.0)  # first delay, longest delay
_RATE_LIMIT_BACKOFF = (2.0, 30.0)

_RATE_LIMITED = ("toomanyrequests", "too many requests", "rate limit")
_NOT_FOUND = (
    "manifest unknown",
    "not found",
    "repository does not exist",
    "name unknown",
    "no such image",
)
_PERMANENT = (
    *_NOT_FOUND,
    "unauthorized",
    "authentication required",
    "no basic auth credentials",
    "denied",
    "forbidden",
    "invalid reference",
    "no matching manifest",
    "http response to https client",
    "x509:",
    "certificate",
)
_TRANSIENT = (
    "connection refused",
    "connection reset",
    "connection aborted",
    "broken pipe",
    "timeout",
    "timed out",
    "deadline exceeded",
    "no such host",
    "temporary failure",
    "server misbehaving",
    "network is unreachable",
    "no route to host",
    "request canceled",
    "tls handshake",
    "internal server error",
    "bad gateway",
    "service unavailable",
)
_TRANSIENT_RE = re.compile(r"\beof\b|(?:status:? |http )5\d\d\b")
_USERINFO_RE = re.compile(r"(\b[a-z][a-z0-9+.-]*://)[^/\s@\"']+@", re.IGNORECASE)
# The engine's last status line but one names the manifest it pulled: "Digest: sha256:…".
_DIGEST_STATUS_RE = re.compile(r"Digest: ([A-Za-z0-9+._-]+:[0-9a-fA-F]{32,})")


@dataclass(frozen=True)
class PullProgress:
    """Where a pull stands: ``image`` is the reference pulled, ``layers_done`` of
    ``layers_total`` layers are in place, ``bytes_current`` of ``bytes_total`` bytes
    downloaded (totals grow as the engine learns of layers). ``done`` is true once, at
    the end of a successful pull."""

    image: str
    layers_done: int = 0
    layers_total: int = 0
    bytes_current: int = 0
    bytes_total: int = 0
    done: bool = False


@dataclass(frozen=True)
class PullResult:
    """A finished pull: the engine's ``image_id``, and the ``digest`` of the manifest the
    registry served, as the engine reported it (``None`` if it did not say)."""

    image_id: str
    digest: str | None


def redact(text: str) -> str:
    """``text`` with any ``user:password@`` in URLs masked, so no message shows a secret."""
    return _USERINFO_RE.sub(r"\1***@", text)


def classify_pull_failure(reason: str, status_code: int | None = None) -> str:
    """The kind of a failed pull from the engine's or registry's message (and the HTTP
    status of the engine's answer, when there was one): ``"rate-limited"``,
    ``"permanent"`` (retrying will not help) or ``"transient"``.

    An unrecognised message counts as permanent: retrying it would only delay the error.
    """
    text = reason.lower()
    if status_code == 429 or any(marker in text for marker in _RATE_LIMITED):
        return "rate-limited"
    # Checked before the network markers: "manifest unknown" wins over a stray "EOF".
    if any(marker in text for marker in _PERMANENT):
        return "permanent"
    if any(marker in text for marker in _TRANSIENT) or _TRANSIENT_RE.search(text):
        return "transient"
    return "permanent"


def is_not_found(reason: str) -> bool:
    """Whether the registry said that the repository or tag does not exist."""
    text = reason.lower()
    return any(marker in text for marker in _NOT_FOUND)


def describe_pull_failure(
    kind: str,
    *,
    image: str,
    resolved: str,
    registry: str,
    reason: str,
    attempts: int = 1,
    seconds: float = 0.0,
    stall_timeout: float | None = None,
) -> str:
    """The message of an :class:`ImagePullError`: which image, which registry, what the
    registry or engine said, and what to do about it."""
    pulled_as = f" (pulled as {resolved})" if resolved != image else ""
    head = f"cannot pull {image}{pulled_as} from {registry}"
    tries = f"gave up after {attempts} attempt{'s' if attempts != 1 else ''} in {seconds:.1f} s"
    lowered = reason.lower()
    if kind == "rate-limited":
        return (
            f"{head}: the registry is rate-limiting pulls: {reason}; {tries}. Log in "
            f"(docker login {registry}) to raise the limit, or pull through a mirror "
            "with --container-mirror=HOST."
        )
    if kind == "stalled":
        return (
            f"{head}: the pull made no progress for {stall_timeout or 0:g} s and was "
            f"aborted ({reason}); {tries}. Check the network between the Docker engine "
            "and the registry, or raise --container-stall-timeout."
        )
    if kind == "transient":
        return (
            f"{head}: {reason}; {tries}. Check that the registry is up and that the Docker "
            "engine can reach it."
        )
    if is_not_found(reason):
        return (
            f"{head}: the registry does not have this image: {reason}. Check the "
            "repository name and the tag (or digest)."
        )
    refused = ("unauthorized", "authentication", "auth credentials", "denied", "forbidden")
    if any(marker in lowered for marker in refused):
        return (
            f"{head}: the registry refused access: {reason}. If the image is private, "
            f"log in first (docker login {registry}); otherwise check the name."
        )
    return f"{head}: {reason}. Retrying will not help; check the image reference."


def make_pull_error(
    kind: str, message: str, *, image: str, registry: str, reason: str
) -> ImagePullError:
    """The exception for a failed pull; :class:`ImageNotFoundError` when the registry
    does not know the image (a subclass, so ``except ImagePullError`` still catches it)."""
    cls = ImageNotFoundError if kind == "permanent" and is_not_found(reason) else ImagePullError
    return cls(message, image=image, registry=registry, reason=reason, kind=kind)


class _Failure(Exception):
    """One attempt failed; ``kind`` as :func:`classify_pull_failure` says, or "stalled"."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


class _Tracker:
    """Folds the engine's per-layer status lines into :class:`PullProgress` snapshots."""

    _DONE = frozenset({"pull complete", "already exists"})

    def __init__(self, image: str, on_progress: Callable[[PullProgress], None] | None) -> None:
        self.image = image
        self.on_progress = on_progress
        self.layers: dict[str, bool] = {}
        self.current: dict[str, int] = {}
        self.total: dict[str, int] = {}
        self.last_emit = 0.0

    def feed(self, entry: Mapping[str, Any]) -> None:
        layer = entry.get("id")
        status = str(entry.get("status", "")).lower()
        # The first line's id is the tag ("Pulling from library/redis"), not a layer.
        if not isinstance(layer, str) or not layer or status.startswith("pulling from"):
            return
        self.layers.setdefault(layer, False)
        detail = entry.get("progressDetail") or {}
        if status == "downloading" and isinstance(detail, Mapping):
            current, total = detail.get("current"), detail.get("total")
            if isinstance(current, int):
                self.current[layer] = current
            if isinstance(total, int) and total > 0:
                self.total[layer] = total
        elif status == "download complete" and layer in self.total:
            self.current[layer] = self.total[layer]
        if status in self._DONE:
            self.layers[layer] = True
        self.emit()

    def snapshot(self, *, done: bool = False) -> PullProgress:
        return PullProgress(
            image=self.image,
            layers_done=sum(self.layers.values()),
            layers_total=len(self.layers),
            bytes_current=sum(self.current.values()),
            bytes_total=sum(self.total.values()),
            done=done,
        )

    def emit(self, *, done: bool = False) -> None:
        if self.on_progress is None:
            return
        now = time.monotonic()
        if not done and now - self.last_emit < PROGRESS_INTERVAL:
            return
        self.last_emit = now
        self.on_progress(self.snapshot(done=done))


def inspect_image(client: docker.DockerClient, target: str) -> dict[str, Any] | None:
    """The engine's record of the image ``target`` (a reference or an id), or ``None``."""
    inspect = cast("Callable[[str], dict[str, Any]]", client.api.inspect_image)
    try:
        return inspect(target)
    except docker.errors.ImageNotFound:
        return None


def image_target(ref: Reference) -> str:
    """What to ask the engine for: by digest when pinned (a tag may have moved)."""
    return f"{ref.name}@{ref.digest}" if ref.digest else f"{ref.name}:{ref.tag or 'latest'}"


def _attempt(
    client: docker.DockerClient,
    ref: Reference,
    *,
    platform: str | None,
    stall_timeout: float,
    tracker: _Tracker,
) -> PullResult:
    """One pull: returns the image id and digest, raises :class:`_Failure`."""
    stream = EngineStream(client)
    events = _read_in_thread(
        stream,
        lambda: client.api.pull(
            ref.name, tag=ref.digest or ref.tag, platform=platform, stream=True, decode=True
        ),
        name=f"pytest-containers-pull {ref}",
    )
    finished = False
    try:
        digest = _follow(events, stall_timeout, tracker)
        finished = True
    finally:
        if not finished:
            # The engine cancels a pull whose client went away; aborted before the
            # engine answered, the stream is cut as soon as it does.
            stream.abort()
    attrs = inspect_image(client, image_target(ref))
    if attrs is None:
        raise _Failure("transient", "the engine ended the pull without the image")
    return PullResult(str(attrs["Id"]), digest)


def _read_in_thread(
    stream: EngineStream, request: Callable[[], Any], *, name: str
) -> queue.Queue[tuple[str, Any]]:
    """The entries of the stream ``request`` opens, read in a helper thread so that the
    caller can time out on silence: a blocked socket read has no timeout (docker-py
    pulls with timeout=None). ``("entry", entry)`` each, then ``("end", None)`` or
    ``("error", exception)``."""
    events: queue.Queue[tuple[str, Any]] = queue.Queue()

    def read() -> None:
        try:
            for entry in stream.open(request):
                events.put(("entry", entry))
        except BaseException as exc:
            events.put(("error", exc))
        else:
            events.put(("end", None))

    threading.Thread(target=read, name=name, daemon=True).start()
    return events


def _follow(
    events: queue.Queue[tuple[str, Any]], stall_timeout: float, tracker: _Tracker
) -> str | None:
    """Follow a pull's events to their end; the digest the engine said it pulled, if it
    did. Raises :class:`_Failure` on an error, or after ``stall_timeout`` seconds of
    silence."""
    digest: str | None = None
    deadline = time.monotonic() + stall_timeout
    last_event = "none yet: the registry has not answered the engine"
    while True:
        try:
            what, payload = events.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise _Failure("stalled", f"last event from the engine: {last_event}") from None
        deadline = time.monotonic() + stall_timeout
        if what == "end":
            return digest
        if what == "error":
            raise _failure_from_exception(payload)
        if isinstance(payload, Mapping):
            error = payload.get("error") or (payload.get("errorDetail") or {}).get("message")
            if error:
                reason = redact(str(error))
                raise _Failure(classify_pull_failure(reason), reason)
            # A tag's RepoDigests may list several digests of the repository; this
            # line says which one the tag points to now.
            found = _DIGEST_STATUS_RE.match(str(payload.get("status") or ""))
            if found is not None:
                digest = found.group(1)
            tracker.feed(payload)
            last_event = _describe_event(payload)


def _describe_event(entry: Mapping[str, Any]) -> str:
    status = str(entry.get("status") or "?")
    layer = entry.get("id")
    return f"{status!r} for layer {layer}" if layer and "from" not in status else repr(status)


def _failure_from_exception(exc: BaseException) -> _Failure:
    if isinstance(exc, docker.errors.APIError):
        reason = redact(str(exc.explanation or exc))
        return _Failure(classify_pull_failure(reason, exc.status_code), reason)
    if isinstance(exc, requests.exceptions.RequestException):
        # Lost the engine's connection mid-stream, or could not reach the engine.
        return _Failure("transient", redact(f"connection to the Docker engine failed: {exc}"))
    if isinstance(exc, docker.errors.DockerException):
        return _Failure("permanent", redact(str(exc)))
    if isinstance(exc, Exception):
        reason = redact(f"{type(exc).__name__}: {exc}")
        return _Failure(classify_pull_failure(reason), reason)
    raise exc  # KeyboardInterrupt and the like are not pull failures


def _backoff(kind: str, attempt: int) -> float:
    first, longest = _RATE_LIMIT_BACKOFF if kind == "rate-limited" else _TRANSIENT_BACKOFF
    # Jitter so that workers that failed together do not retry in lockstep.
    return min(longest, first * 2.0 ** (attempt - 1)) * random.uniform(0.5, 1.0)


def pull_image(
    client: docker.DockerClient,
    ref: Reference,
    *,
    platform: str | None,
    stall_timeout: float,
    retry_budget: float,
    on_progress: Callable[[PullProgress], None] | None,
    declared: str | None = None,
) -> PullResult:
    """Pull ``ref`` (by digest when it has one) into the engine and return the id of the
    image present afterwards, with the digest of the manifest the registry served.

    Progress goes to ``on_progress`` (in this thread, at most about 10 times a second,
    and once more with ``done=True``). A pull that produces no event for
    ``stall_timeout`` seconds is aborted. Transient, rate-limited and stalled failures are
    retried with jittered exponential backoff while the next retry would start within
    ``retry_budget`` seconds of the first failure; permanent ones are not retried.
    ``declared`` is the reference as the test wrote it, for messages.

    Raises :class:`ImagePullError` (or :class:`ImageNotFoundError`) with ``kind``,
    ``registry`` and ``reason`` set.
    """
    image = declared or str(ref)
    tracker = _Tracker(str(ref), on_progress)
    started = time.monotonic()
    first_failure: float | None = None
    attempt = 0
    while True:
        attempt += 1
        try:
            result = _attempt(
                client, ref, platform=platform, stall_timeout=stall_timeout, tracker=tracker
            )
        except _Failure as failure:
            now = time.monotonic()
            if first_failure is None:
                first_failure = now
            delay = _backoff(failure.kind, attempt)
            if failure.kind != "permanent" and now + delay - first_failure <= retry_budget:
                time.sleep(delay)
                continue
            message = describe_pull_failure(
                failure.kind,
                image=image,
                resolved=str(ref),
                registry=ref.registry,
                reason=failure.reason,
                attempts=attempt,
                seconds=now - started,
                stall_timeout=stall_timeout,
            )
            raise make_pull_error(
                failure.kind, message, image=image, registry=ref.registry, reason=failure.reason
            ) from None
        tracker.emit(done=True)
        return result
