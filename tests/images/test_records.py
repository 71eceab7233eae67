"""What the image cache records and reads back: pure."""

from __future__ import annotations

from pytest_containers._base.reference import parse_reference
from pytest_containers._images.records import (
    matches_platform,
    pull_failure_fields,
    recorded_error,
    repo_digests,
)
from pytest_containers.errors import ContainerError, ImageNotFoundError, ImagePullError


def test_repo_digests_are_those_of_the_resolved_repository_once_each() -> None:
    attrs = {
        "RepoDigests": [
            "redis@sha256:aa",
            "docker.io/library/redis@sha256:aa",
            "mirror.example:5000/library/redis@sha256:bb",
            "INVALID NAME@sha256:cc",
            "redis@sha256:dd",
        ]
    }
    assert repo_digests(attrs, parse_reference("redis:7")) == ["sha256:aa", "sha256:dd"]
    assert repo_digests({}, parse_reference("redis:7")) == []


def test_a_platform_matches_by_os_architecture_and_variant() -> None:
    arm = {"Os": "linux", "Architecture": "arm64", "Variant": "v8"}
    assert matches_platform(arm, "linux/arm64")
    assert matches_platform(arm, "linux/arm64/v8")
    assert not matches_platform(arm, "linux/arm64/v7")
    assert not matches_platform(arm, "linux/amd64")
    assert matches_platform({"Os": "linux", "Architecture": "amd64"}, "linux/amd64/v2")


def test_a_recorded_failure_comes_back_as_its_error() -> None:
    error = recorded_error(
        {"kind": "permanent", "message": "", "reason": "manifest unknown"}, "redis:7"
    )
    assert isinstance(error, ImageNotFoundError)
    assert error.message == "pulling redis:7 failed earlier in this run"
    assert (error.registry, error.reason) == ("", "manifest unknown")


def test_a_failed_pull_is_recorded_as_it_comes_back() -> None:
    failed = ImageNotFoundError(
        "cannot pull redis:7", image="redis:7", registry="docker.io", reason="manifest unknown"
    )
    fields = pull_failure_fields(failed)
    assert fields is not None
    again = recorded_error(fields, "redis:7")
    assert type(again) is ImageNotFoundError
    assert (again.message, again.registry, again.reason, again.kind) == (
        "cannot pull redis:7",
        "docker.io",
        "manifest unknown",
        "permanent",
    )


def test_what_is_no_failed_pull_is_not_recorded() -> None:
    # A policy that forbids pulling, or an image gone right after its pull: asked again.
    assert pull_failure_fields(ImagePullError("never", kind="policy")) is None
    assert pull_failure_fields(ContainerError("the image vanished")) is None
