"""Image references are read exactly as Docker reads them (no Docker needed)."""

from __future__ import annotations

import dataclasses
import re

import pytest

from pytest_containers._base.reference import (
    Reference,
    default_name,
    normalize_platform,
    parse_mirror,
    parse_reference,
)
from pytest_containers.errors import ContainerError, ImageReferenceError

SHA = "sha256:" + "0123456789abcdef" * 4
SHA512 = "sha512:" + "ab" * 64


def ref(registry: str, repository: str, tag: str | None, digest: str | None = None) -> Reference:
    return Reference(registry=registry, repository=repository, tag=tag, digest=digest)


# --- valid references ------------------------------------------------------------------

VALID = [
    ("redis", ref("docker.io", "library/redis", "latest")),
    ("redis:7", ref("docker.io", "library/redis", "7")),
    ("redis:7.2.4-alpine3.19", ref("docker.io", "library/redis", "7.2.4-alpine3.19")),
    ("user/app", ref("docker.io", "user/app", "latest")),
    ("user/app:1.0", ref("docker.io", "user/app", "1.0")),
    ("docker.io/redis", ref("docker.io", "library/redis", "latest")),
    ("docker.io/library/redis", ref("docker.io", "library/redis", "latest")),
    ("index.docker.io/library/redis", ref("docker.io", "library/redis", "latest")),
    ("index.docker.io/redis:7", ref("docker.io", "library/redis", "7")),
    ("docker.io/user/app:2", ref("docker.io", "user/app", "2")),
    ("library/a/b", ref("docker.io", "library/a/b", "latest")),
    ("localhost:5000/a/b:1", ref("localhost:5000", "a/b", "1")),
    ("localhost/a", ref("localhost", "a", "latest")),
    ("127.0.0.1:5555/x", ref("127.0.0.1:5555", "x", "latest")),
    ("127.0.0.1:5555/library/redis:7", ref("127.0.0.1:5555", "library/redis", "7")),
    ("registry.example.com/a/b/c:tag", ref("registry.example.com", "a/b/c", "tag")),
    ("ghcr.io/owner/image:v1", ref("ghcr.io", "owner/image", "v1")),
    ("my-registry:5000/app", ref("my-registry:5000", "app", "latest")),
    ("[::1]:5000/app:1", ref("[::1]:5000", "app", "1")),
    # Docker's rule: an uppercase first component can only be a host.
    ("Registry/app", ref("Registry", "app", "latest")),
    ("redis@" + SHA, ref("docker.io", "library/redis", None, SHA)),
    ("redis:7@" + SHA, ref("docker.io", "library/redis", "7", SHA)),
    ("localhost:5000/a/b@" + SHA, ref("localhost:5000", "a/b", None, SHA)),
    ("user/app@" + SHA512, ref("docker.io", "user/app", None, SHA512)),
    ("redis:Latest_V2", ref("docker.io", "library/redis", "Latest_V2")),
    ("ns/a.b_c__d-e--f", ref("docker.io", "ns/a.b_c__d-e--f", "latest")),
    ("a_b/c", ref("docker.io", "a_b/c", "latest")),
    # Without a '/', "localhost:5000" is repository "localhost" with tag "5000".
    ("localhost:5000", ref("docker.io", "library/localhost", "5000")),
    ("x" * 100 + ":" + "t" * 128, ref("docker.io", "library/" + "x" * 100, "t" * 128)),
]


@pytest.mark.parametrize(("text", "expected"), VALID, ids=[t for t, _ in VALID])
def test_valid_references_normalize_like_docker(text: str, expected: Reference) -> None:
    assert parse_reference(text) == expected


def test_a_bare_name_means_docker_hub_library_latest() -> None:
    reference = parse_reference("redis")
    assert reference.registry == "docker.io"
    assert reference.repository == "library/redis"
    assert reference.tag == "latest"
    assert reference.digest is None
    assert reference.is_docker_hub


def test_a_user_repository_on_docker_hub_keeps_its_namespace() -> None:
    assert str(parse_reference("user/app")) == "docker.io/user/app:latest"


def test_the_first_component_is_a_registry_only_if_it_looks_like_a_host() -> None:
    assert parse_reference("team/app").registry == "docker.io"
    assert parse_reference("team.example/app").registry == "team.example"
    assert parse_reference("team:5000/app").registry == "team:5000"
    assert parse_reference("localhost/app").registry == "localhost"


def test_a_digest_without_a_tag_leaves_the_tag_unset() -> None:
    reference = parse_reference("redis@" + SHA)
    assert reference.tag is None
    assert reference.digest == SHA


def test_a_tag_and_a_digest_are_both_kept() -> None:
    reference = parse_reference("redis:7@" + SHA)
    assert (reference.tag, reference.digest) == ("7", SHA)
    assert str(reference) == "docker.io/library/redis:7@" + SHA


def test_a_name_of_exactly_255_characters_is_accepted() -> None:
    path = "a" * (255 - len("example.com/"))
    assert parse_reference(f"example.com/{path}").name == f"example.com/{path}"


# --- invalid references ----------------------------------------------------------------

INVALID = [
    ("", "empty"),
    (" ", "whitespace"),
    ("redis ", "whitespace"),
    ("re dis", "whitespace"),
    ("redis\n", "whitespace"),
    (":tag", "repository name is missing"),
    ("@" + SHA, "repository name is missing"),
    ("redis:", "tag after ':' is empty"),
    ("localhost:5000/a:", "tag after ':' is empty"),
    ("a//b", "empty component"),
    ("/a", "empty component"),
    ("a/", "empty component"),
    ("localhost:5000/", "empty component"),
    ("Redis:7", "must be lowercase"),
    ("user/App", "must be lowercase"),
    ("localhost:5000/Team/app", "must be lowercase"),
    ("Registry/App", "must be lowercase"),
    ("redis:.hidden", "tag '.hidden' is not valid"),
    ("redis:-x", "tag '-x' is not valid"),
    ("redis:" + "t" * 129, "is not valid"),
    ("redis:a+b", "is not valid"),
    ("redis:tâg", "is not valid"),
    ("-redis", "path component '-redis' is not valid"),
    ("redis-", "path component 'redis-' is not valid"),
    ("a_-b", "path component 'a_-b' is not valid"),
    ("a___b", "is not valid"),
    ("a..b", "is not valid"),
    ("caf\u00e9", "is not valid"),
    ("a:b/c", "not a valid registry host"),
    ("-bad.example/app", "not a valid registry host"),
    ("example.com:port/app", "not a valid registry host"),
    ("redis@", "digest after '@' is empty"),
    ("redis@sha256", "is not ALGORITHM:HEX"),
    ("redis@sha256:abc", "is not ALGORITHM:HEX"),
    ("redis@sha256:" + "0" * 63, "exactly 64 lowercase hex digits"),
    ("redis@sha256:" + "0" * 65, "exactly 64 lowercase hex digits"),
    ("redis@sha256:" + "A" * 64, "exactly 64 lowercase hex digits"),
    ("redis@sha256:" + "g" * 64, "is not ALGORITHM:HEX"),
    ("redis@md5:" + "0" * 32, "'md5' is not supported"),
    ("redis@" + SHA + "@" + SHA, "is not ALGORITHM:HEX"),
    ("0123456789abcdef" * 4, "image ID"),
    ("example.com/" + "a" * 244, "Docker allows at most 255"),
    ("x" * 300, "Docker allows at most 255"),
]


@pytest.mark.parametrize(("text", "problem"), INVALID, ids=[repr(t)[:40] for t, _ in INVALID])
def test_invalid_references_are_rejected_with_a_message_naming_the_input(
    text: str, problem: str
) -> None:
    with pytest.raises(ImageReferenceError) as caught:
        parse_reference(text)
    message = str(caught.value)
    assert problem in message
    assert f"invalid image reference {text!r}" in message
    assert "write e.g." in message
    assert caught.value.image == text


def test_a_reference_error_is_both_a_container_error_and_a_value_error() -> None:
    with pytest.raises(ContainerError):
        parse_reference("Redis")
    with pytest.raises(ValueError, match="lowercase"):
        parse_reference("Redis")


def test_an_uppercase_name_suggests_the_lowercase_spelling() -> None:
    with pytest.raises(ImageReferenceError) as caught:
        parse_reference("Redis:7")
    assert "write e.g. 'redis:7'" in str(caught.value)


def test_an_uppercase_namespace_suggests_a_docker_hub_namespace() -> None:
    with pytest.raises(ImageReferenceError) as caught:
        parse_reference("MyOrg/App:Tag")
    assert "'myorg/app:Tag'" in str(caught.value)


def test_a_non_string_is_rejected() -> None:
    with pytest.raises(ImageReferenceError, match="expected a string"):
        parse_reference(7)  # type: ignore[arg-type]


# --- rendering -------------------------------------------------------------------------

RENDERED = [
    # text, str(), name, default_name()
    ("redis", "docker.io/library/redis:latest", "docker.io/library/redis", "redis"),
    ("redis:7", "docker.io/library/redis:7", "docker.io/library/redis", "redis"),
    ("user/app:1", "docker.io/user/app:1", "docker.io/user/app", "app"),
    ("library/a/b:1", "docker.io/library/a/b:1", "docker.io/library/a/b", "b"),
    ("localhost:5000/a/b:1", "localhost:5000/a/b:1", "localhost:5000/a/b", "b"),
    (
        "127.0.0.1:5555/library/redis",
        "127.0.0.1:5555/library/redis:latest",
        "127.0.0.1:5555/library/redis",
        "redis",
    ),
    ("redis:7@" + SHA, "docker.io/library/redis:7@" + SHA, "docker.io/library/redis", "redis"),
    ("localhost:5000/a/b@" + SHA, "localhost:5000/a/b@" + SHA, "localhost:5000/a/b", "b"),
]


@pytest.mark.parametrize(("text", "full", "name", "short"), RENDERED)
def test_references_render_in_canonical_and_name_forms_and_name_their_container(
    text: str, full: str, name: str, short: str
) -> None:
    reference = parse_reference(text)
    assert str(reference) == full
    assert reference.name == name
    assert default_name(text) == short


@pytest.mark.parametrize(("text", "_full", "_name", "_short"), RENDERED)
def test_the_canonical_form_parses_back_to_the_same_reference(
    text: str, _full: str, _name: str, _short: str
) -> None:
    reference = parse_reference(text)
    assert parse_reference(str(reference)) == reference


def test_a_reference_is_immutable_and_hashable() -> None:
    reference = parse_reference("redis:7")
    with pytest.raises(dataclasses.FrozenInstanceError):
        reference.tag = "8"  # type: ignore[misc]
    assert {reference, parse_reference("docker.io/library/redis:7")} == {reference}


def test_only_docker_io_is_docker_hub() -> None:
    assert parse_reference("index.docker.io/user/app").is_docker_hub
    assert not parse_reference("localhost:5000/app").is_docker_hub
    assert not parse_reference("ghcr.io/user/app").is_docker_hub


# --- digests ---------------------------------------------------------------------------


def test_with_digest_pins_the_reference_and_keeps_its_tag() -> None:
    pinned = parse_reference("redis:7").with_digest(SHA)
    assert pinned == ref("docker.io", "library/redis", "7", SHA)
    assert str(pinned) == "docker.io/library/redis:7@" + SHA


def test_with_digest_replaces_an_existing_digest() -> None:
    other = "sha256:" + "f" * 64
    assert parse_reference("redis@" + SHA).with_digest(other).digest == other


@pytest.mark.parametrize("digest", ["", "sha256:abc", "sha256:" + "F" * 64, "md5:" + "0" * 32])
def test_with_digest_rejects_a_malformed_digest(digest: str) -> None:
    with pytest.raises(
        ImageReferenceError, match=re.escape("cannot pin docker.io/library/redis:7")
    ):
        parse_reference("redis:7").with_digest(digest)


# --- mirrors ---------------------------------------------------------------------------

MIRRORED = [
    ("redis:7", "127.0.0.1:5555", "127.0.0.1:5555/library/redis:7"),
    ("redis", "127.0.0.1:5555", "127.0.0.1:5555/library/redis:latest"),
    ("user/app", "127.0.0.1:5555", "127.0.0.1:5555/user/app:latest"),
    ("redis:7", "mirror.local:5000/hub", "mirror.local:5000/hub/library/redis:7"),
    ("user/app:1", "mirror.local/a/b", "mirror.local/a/b/user/app:1"),
    ("redis:7", "localhost:5000/", "localhost:5000/library/redis:7"),
    ("redis:7@" + SHA, "127.0.0.1:5555", "127.0.0.1:5555/library/redis:7@" + SHA),
    ("redis@" + SHA, "127.0.0.1:5555", "127.0.0.1:5555/library/redis@" + SHA),
]


@pytest.mark.parametrize(("text", "mirror", "expected"), MIRRORED)
def test_a_mirror_rewrites_docker_hub_references(text: str, mirror: str, expected: str) -> None:
    mirrored = parse_reference(text).with_mirror(mirror)
    assert str(mirrored) == expected
    # Docker must read the rewritten reference as the mirror's, not as a Hub name.
    assert parse_reference(str(mirrored)) == mirrored


def test_a_mirror_keeps_tag_and_digest() -> None:
    original = parse_reference("redis:7@" + SHA)
    mirrored = original.with_mirror("127.0.0.1:5555")
    assert (mirrored.tag, mirrored.digest) == (original.tag, original.digest)
    assert mirrored.registry == "127.0.0.1:5555"
    assert not mirrored.is_docker_hub


@pytest.mark.parametrize("text", ["localhost:5000/a", "ghcr.io/x/y:1", "127.0.0.1:5555/library/r"])
def test_a_mirror_leaves_other_registries_alone(text: str) -> None:
    reference = parse_reference(text)
    assert reference.with_mirror("mirror.local:5000/hub") is reference


@pytest.mark.parametrize("mirror", [None, ""])
def test_no_mirror_leaves_the_reference_unchanged(mirror: str | None) -> None:
    reference = parse_reference("redis:7")
    assert reference.with_mirror(mirror) is reference


def test_a_malformed_mirror_is_reported_by_with_mirror() -> None:
    with pytest.raises(ValueError, match="scheme"):
        parse_reference("redis").with_mirror("http://127.0.0.1:5555")


PARSED_MIRRORS = [
    ("127.0.0.1:5555", ("127.0.0.1:5555", "")),
    ("localhost", ("localhost", "")),
    ("localhost:5000", ("localhost:5000", "")),
    ("mirror.local", ("mirror.local", "")),
    ("mirror.local:5000/hub", ("mirror.local:5000", "hub")),
    ("mirror.local:5000/hub/", ("mirror.local:5000", "hub")),
    ("mirror.local/a/b-c", ("mirror.local", "a/b-c")),
    ("[::1]:5000", ("[::1]:5000", "")),
]


@pytest.mark.parametrize(("text", "expected"), PARSED_MIRRORS)
def test_parse_mirror_splits_host_and_prefix(text: str, expected: tuple[str, str]) -> None:
    assert parse_mirror(text) == expected


BAD_MIRRORS = [
    ("", "is empty"),
    ("http://127.0.0.1:5555", "has a scheme (http://)"),
    ("https://mirror.local/hub/", "write 'mirror.local/hub'"),
    ("mirror.local :5000", "whitespace"),
    (" mirror.local", "whitespace"),
    ("mirror", "would be read as a Docker Hub namespace"),
    ("mirror.local:0", "outside 1-65535"),
    ("mirror.local:70000", "outside 1-65535"),
    ("mirror.local:port", "valid HOST[:PORT]"),
    ("/hub", "valid HOST[:PORT]"),
    ("/", "valid HOST[:PORT]"),
    ("mirror.local//hub", "invalid path prefix"),
    ("mirror.local/Hub", "invalid path prefix"),
]


@pytest.mark.parametrize(("text", "problem"), BAD_MIRRORS)
def test_parse_mirror_rejects_malformed_mirrors(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=re.escape("HOST[:PORT][/PREFIX]")) as caught:
        parse_mirror(text)
    assert problem in str(caught.value)


# --- platforms -------------------------------------------------------------------------

PLATFORMS = [
    (None, None),
    ("linux/amd64", "linux/amd64"),
    ("Linux/AMD64", "linux/amd64"),
    ("linux/arm64", "linux/arm64"),
    ("linux/arm64/v8", "linux/arm64/v8"),
    ("linux/arm/v7", "linux/arm/v7"),
    ("linux/x86_64", "linux/amd64"),
    ("linux/aarch64", "linux/arm64"),
    (" linux/amd64 ", "linux/amd64"),
    ("windows/amd64", "windows/amd64"),
]


@pytest.mark.parametrize(("text", "expected"), PLATFORMS)
def test_platforms_are_normalized(text: str | None, expected: str | None) -> None:
    assert normalize_platform(text) == expected


@pytest.mark.parametrize(
    "text", ["", "linux", "amd64", "linux/", "/amd64", "linux/amd64/v8/extra", "linux/am d64"]
)
def test_malformed_platforms_are_rejected(text: str) -> None:
    with pytest.raises(ValueError, match="OS/ARCH") as caught:
        normalize_platform(text)
    assert repr(text) in str(caught.value)


def test_a_suggestion_is_given_only_when_it_parses() -> None:
    with pytest.raises(ImageReferenceError) as caught:
        parse_reference("Redis:::7")
    message = str(caught.value)
    assert "'redis:::7'" not in message
    assert "write e.g. 'redis:7'" in message  # the generic examples instead
