"""A cache directory no one else can poison: who may write it, links, file modes, a full
disk, and the per-run files of dead runs. The three attacks of issue 9 are replayed here:
a planted state file, a ``runs`` link and a linked lock file.
"""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import pytest

from pytest_containers._base.locks import (
    CacheDirError,
    check_private_dir,
    ensure_private_dir,
    exclusive,
    key_path,
    private_subdir,
    read_json,
    write_json_atomic,
)
from pytest_containers._base.reference import parse_reference
from pytest_containers._cleanup.sweep import (
    RUN_SCOPED_DIR,
    hold_run,
    prune_run_locks,
    prune_run_scoped,
    run_lock_path,
)
from pytest_containers._engine.connection import engine_identity
from pytest_containers._images.lockfile import read_lockfile
from tests.conftest import InnerRuns
from tests.testenv import BUSYBOX, REGISTRY, push_unique_image, remove_image

NOBODY = 65534
DAY = 86400


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return ensure_private_dir(tmp_path / "cache")


def age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then), follow_symlinks=False)


# -- who may write it ----------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o770, 0o707, 0o777, 0o1777], ids=oct)
def test_a_cache_dir_others_may_write_is_refused_naming_owner_and_mode(
    cache: Path, mode: int
) -> None:
    cache.chmod(mode)
    with pytest.raises(CacheDirError) as caught:
        ensure_private_dir(cache)
    message = str(caught.value)
    assert str(cache) in message
    assert f"mode {stat.S_IMODE(mode):04o}" in message
    assert "uid 0" in message or f"uid {os.geteuid()}" in message
    assert f"chmod 700 {cache}" in message
    assert "--container-cache-dir" in message


def test_a_cache_dir_someone_else_owns_is_refused(cache: Path) -> None:
    os.chown(cache, NOBODY, NOBODY)
    with pytest.raises(CacheDirError, match=f"owned by .*uid {NOBODY}.*not by you") as caught:
        ensure_private_dir(cache)
    assert "--container-cache-dir" in str(caught.value)


def test_a_private_cache_dir_of_ones_own_is_accepted(cache: Path) -> None:
    cache.chmod(0o755)  # others may read it, not write it
    assert ensure_private_dir(cache) == cache


def test_a_link_at_the_cache_dir_is_refused(tmp_path: Path, cache: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to(cache)
    with pytest.raises(CacheDirError, match="symbolic link in its path") as caught:
        ensure_private_dir(link)
    assert f"{link} -> {cache}" in str(caught.value)


def test_a_link_among_the_ancestors_that_another_user_owns_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "home"
    link.symlink_to(real)
    os.lchown(link, NOBODY, NOBODY)
    with pytest.raises(CacheDirError, match=f"{link} -> {real}, owned by .*{NOBODY}"):
        ensure_private_dir(link / "cache")


def test_a_link_among_the_ancestors_in_a_directory_others_may_write_is_refused(
    tmp_path: Path,
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    real = tmp_path / "real"
    real.mkdir()
    (shared / "home").symlink_to(real)
    with pytest.raises(CacheDirError, match="symbolic link"):
        ensure_private_dir(shared / "home" / "cache")


def test_a_link_among_the_ancestors_that_only_the_user_controls_is_accepted(
    tmp_path: Path,
) -> None:
    # Like /home -> /usr/home: made by root (or the user), where nobody else may write.
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "home").symlink_to(real)
    made = ensure_private_dir(tmp_path / "home" / "cache")
    assert (real / "cache").is_dir()
    assert check_private_dir(made) == made


def test_a_link_inside_the_cache_dir_is_refused_whoever_made_it(
    cache: Path, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    (cache / "builds").symlink_to(elsewhere)
    with pytest.raises(CacheDirError, match="symbolic link"):
        private_subdir(cache, "builds")


def test_new_directories_are_0700_and_new_files_0600(cache: Path) -> None:
    old = os.umask(0)
    try:
        runs = private_subdir(cache, "runs")
        hold = hold_run(cache, "some-run")
        write_json_atomic(cache / "state.json", {"a": 1})
        with exclusive(cache / "image.lock", timeout=5, what="an image"):
            pass
    finally:
        os.umask(old)
    hold.release()
    assert stat.S_IMODE(runs.stat().st_mode) == 0o700
    assert stat.S_IMODE(run_lock_path(cache, "some-run").stat().st_mode) == 0o600
    assert stat.S_IMODE((cache / "state.json").stat().st_mode) == 0o600
    assert stat.S_IMODE((cache / "image.lock").stat().st_mode) == 0o600


# -- the attacks ------------------------------------------------------------------------


def test_runs_made_a_link_is_refused_and_never_pruned_through(cache: Path, tmp_path: Path) -> None:
    """Attack (b): ``runs`` made a link to a project, so that the sweep's pruning of old
    lock files deletes the project's ``poetry.lock``."""
    project = tmp_path / "project"
    project.mkdir()
    poetry = project / "poetry.lock"
    poetry.write_text("[[package]]\n")
    age(poetry, 2 * DAY)
    (cache / "runs").symlink_to(project)

    assert prune_run_locks(cache) == 0
    with pytest.raises(CacheDirError, match="symbolic link"):
        hold_run(cache, "run-1")
    assert poetry.read_text() == "[[package]]\n"


def test_run_scoped_made_a_link_is_never_pruned_through(cache: Path, tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    victim = project / "deadbeef_x.json"
    victim.write_text("{}")
    (cache / RUN_SCOPED_DIR).symlink_to(project)
    assert prune_run_scoped(cache) == 0
    assert victim.exists()


def test_a_lock_file_planted_as_a_link_is_a_clear_error(cache: Path, tmp_path: Path) -> None:
    """Attack (c): a lock file made a link, once a raw ``ELOOP`` on every pull."""
    lock = key_path(cache, "engine", "busybox:1.35", "", suffix=".lock")
    lock.symlink_to(tmp_path / "anywhere")
    with pytest.raises(CacheDirError) as caught, exclusive(lock, timeout=5, what="busybox"):
        pass
    message = str(caught.value)
    assert str(lock) in message
    assert "symbolic link" in message
    assert f"who else can write to {cache}" in message
    assert not (tmp_path / "anywhere").exists()


def test_a_state_file_planted_as_a_link_is_a_clear_error(cache: Path, tmp_path: Path) -> None:
    target = tmp_path / "theirs.json"
    target.write_text('{"image_id": "sha256:evil"}')
    (cache / "state.json").symlink_to(target)
    with pytest.raises(CacheDirError, match="symbolic link"):
        read_json(cache / "state.json")


# -- a full disk ------------------------------------------------------------------------


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A private directory on a small tmpfs that is full."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    try:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", str(mount)],
            check=True,
            capture_output=True,
        )
    except (OSError, subprocess.CalledProcessError) as error:
        pytest.skip(f"cannot mount a tmpfs here: {error}")
    try:
        cache = ensure_private_dir(mount / "cache")
        for name in ("runs", "run-scoped", "builds"):
            private_subdir(cache, name)
        with contextlib.suppress(OSError), (mount / "filler").open("wb") as filler:
            while True:
                filler.write(b"\0" * 65536)
                filler.flush()
        yield cache
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_write_to_a_full_cache_dir_is_a_clear_error_naming_the_directory(
    full_disk: Path,
) -> None:
    with pytest.raises(CacheDirError) as caught:
        write_json_atomic(full_disk / "state.json", {"data": "x" * 100_000})
    message = str(caught.value)
    assert "ENOSPC" in message
    assert str(full_disk / "state.json") in message
    assert f"free some space on the filesystem of {full_disk}" in message
    assert not [p for p in full_disk.iterdir() if p.name.startswith(".state.json.")]


# -- per-run files ----------------------------------------------------------------------


def test_run_scoped_files_of_dead_runs_are_pruned_and_live_runs_kept(cache: Path) -> None:
    directory = private_subdir(cache, RUN_SCOPED_DIR)
    dead, ended, live = "a" * 32, "b" * 32, "c" * 32
    for run_id in (dead, ended, live):
        for suffix in (".lock", ".json"):
            key_path(directory, run_id, "fingerprint", suffix=suffix).write_text("{}")
    hold_run(cache, ended).release()  # ran and ended: its lock is free
    hold = hold_run(cache, live)  # dead: never held here, its lock is long gone
    try:
        assert prune_run_scoped(cache) == 4
    finally:
        hold.release()
    assert sorted(p.name[:32] for p in directory.iterdir()) == [live, live]


# -- as users run it --------------------------------------------------------------------

MARKER_TEST = """
import pytest

@pytest.mark.container("{image}", command=["sleep", "30"])
def test_marker(container, tmp_path):
    # Read from the filesystem: exec output can be lost by the engine (moby#27289).
    container.copy_from("/etc/image-id", tmp_path / "image-id")
    assert (tmp_path / "image-id").read_text() == "{expected}"
"""


@pytest.mark.docker
def test_a_run_refuses_a_cache_dir_others_may_write(
    run_suite: InnerRuns, pytester: pytest.Pytester
) -> None:
    run_suite.cache_dir.mkdir()
    run_suite.cache_dir.chmod(0o777)
    pytester.makepyfile(
        f"""
        import pytest

        @pytest.mark.container("{BUSYBOX}", command=["sleep", "30"])
        def test_container(container):
            pass

        def test_plain():
            pass
        """
    )
    result = run_suite()
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        [f"*test_container: the cache directory {run_suite.cache_dir} *mode 0777*chmod 700*"]
    )
    assert "Traceback" not in result.stdout.str()


@pytest.mark.docker
def test_a_planted_state_file_cannot_change_the_image_a_pin_runs(
    run_suite: InnerRuns, pytester: pytest.Pytester, docker_client: docker.DockerClient,
    unique_image: Callable[[], str],
) -> None:  # fmt: skip
    """Attack (a): a state file that maps the pinned reference to another image in the
    engine. Even in a cache dir that passes the checks (planted before, or by root), the
    engine decides: the image that runs has the pin in its RepoDigests."""
    image = unique_image()
    name = image.split(":")[0]
    pytester.makepyfile(MARKER_TEST.format(image=image, expected=name))
    run_suite("--container-lock=update").assert_outcomes(passed=1)
    remove_image(docker_client, f"{REGISTRY}/library/{image}")
    (pin,) = read_lockfile(pytester.path / "containers.lock").values()

    evil = push_unique_image(docker_client, marker="evil")
    evil_id = str(docker_client.images.pull(f"{REGISTRY}/library/{evil}").id)
    # The state file of the pinned reference, as the cache names it, says "evil".
    resolved = parse_reference(image).with_digest(pin.digest).with_mirror(REGISTRY)
    engine_id = engine_identity(docker_client).key
    write_json_atomic(
        key_path(run_suite.cache_dir, engine_id, str(resolved), "", suffix=".json"),
        {"run_id": "earlier", "reference": str(resolved), "image_id": evil_id,
         "digest": pin.digest, "source": "pulled", "error": None},
    )  # fmt: skip
    try:
        run_suite().assert_outcomes(passed=1)
    finally:
        remove_image(docker_client, f"{REGISTRY}/library/{evil}")


@pytest.mark.docker
def test_a_linked_lock_file_fails_the_test_with_one_clear_line(
    run_suite: InnerRuns, pytester: pytest.Pytester, unique_image: Callable[[], str],
    tmp_path: Path,
) -> None:  # fmt: skip
    image = unique_image()
    pytester.makepyfile(MARKER_TEST.format(image=image, expected=image.split(":")[0]))
    run_suite().assert_outcomes(passed=1)
    locks = [
        state.with_suffix(".lock")
        for state in run_suite.cache_dir.glob("*.json")
        if image in str(read_json(state))
    ]
    assert len(locks) == 1
    locks[0].unlink()
    locks[0].symlink_to(tmp_path / "elsewhere")
    # "always": the image is in the engine, and only a pull takes the lock.
    result = run_suite("--container-pull=always")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([f"*test_marker: {locks[0]} is a symbolic link*"])
    assert "ELOOP" not in result.stdout.str()
    assert "Traceback" not in result.stdout.str()


@pytest.mark.docker
def test_a_full_cache_dir_neither_fails_a_good_pull_nor_hides_a_registrys_error(
    full_disk: Path, pytester: pytest.Pytester, unique_image: Callable[[], str],
    docker_client: docker.DockerClient,
) -> None:  # fmt: skip
    runs = InnerRuns(pytester, full_disk)
    image = unique_image()
    pytester.makepyfile(
        MARKER_TEST.format(image=image, expected=image.split(":")[0])
        + """

@pytest.mark.container("pct-no-such-image-anywhere:1")
def test_missing(container):
    pass
"""
    )
    result = runs()
    result.assert_outcomes(passed=1, errors=1)
    output = result.stdout.str()
    # The registry's own words, then what the cache could not do.
    result.stdout.fnmatch_lines(["*test_missing*pct-no-such-image-anywhere*not found*"])
    assert "could not record it" in output
    assert "ENOSPC" in output
    assert "Traceback" not in output


@pytest.mark.docker
def test_a_lock_file_path_that_is_a_directory_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_plain(): pass")
    (pytester.path / "containers.lock").mkdir()
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*the lock file *containers.lock is a directory*remove or rename*"]
    )
