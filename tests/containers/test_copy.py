"""Copying out of a container, without one: archives as the engine sends them (entries
under the copied path's name), unpacked by ``_copy.extract`` through its tarfile filter."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

from pytest_containers._containers.copy import extract, tar_of


def _archive(*members: tuple[tarfile.TarInfo, bytes | None]) -> tarfile.TarFile:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    buffer.seek(0)
    return tarfile.open(fileobj=buffer)


def _file(name: str, data: bytes, mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.mode = mode
    return info, data


def _entry(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.mode = 0o755
    return info, None


def test_a_file_becomes_the_destination(tmp_path: Path) -> None:
    extract(_archive(_file("hostname", b"box\n")), "hostname", tmp_path / "copied")
    assert (tmp_path / "copied").read_bytes() == b"box\n"
    assert sorted(os.listdir(tmp_path)) == ["copied"]


def test_a_directory_becomes_the_destination_and_merges_into_it(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "kept").write_text("mine")
    archive = _archive(
        _entry("data", tarfile.DIRTYPE),
        _entry("data/sub", tarfile.DIRTYPE),
        _file("data/sub/run.sh", b"#!/bin/sh\n", mode=0o4775),
        _file("data/notes", b"n", mode=0o666),
    )
    extract(archive, "data", tmp_path / "out")
    assert (tmp_path / "out" / "kept").read_text() == "mine"
    # Permission bits as in the container, set-id bits dropped.
    assert (tmp_path / "out" / "sub" / "run.sh").stat().st_mode & 0o7777 == 0o775
    assert (tmp_path / "out" / "notes").stat().st_mode & 0o777 == 0o666
    assert not (tmp_path / "data").exists()


def test_entries_outside_the_copied_path_are_skipped(tmp_path: Path) -> None:
    archive = _archive(
        _entry("data", tarfile.DIRTYPE),
        _file("data/ok", b"ok"),
        _file("other", b"not asked for"),
        _file("data/../escaped", b"no"),
        _file("/abs", b"no"),
    )
    extract(archive, "data", tmp_path / "out")
    assert sorted(os.listdir(tmp_path)) == ["out"]
    assert os.listdir(tmp_path / "out") == ["ok"]


def test_links_stay_inside_the_destination(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("outside")
    archive = _archive(
        _entry("data", tarfile.DIRTYPE),
        _file("data/real", b"real"),
        _entry("data/inside", tarfile.SYMTYPE, "real"),
        _entry("data/absolute", tarfile.SYMTYPE, "/etc/passwd"),
        _entry("data/up", tarfile.SYMTYPE, "../secret"),
        _entry("data/hard", tarfile.LNKTYPE, "data/real"),
        _entry("data/hard-out", tarfile.LNKTYPE, "secret"),
        # Had the link been made, this entry would have gone through it.
        _entry("data/door", tarfile.SYMTYPE, ".."),
        _file("data/door/secret", b"written inside"),
    )
    extract(archive, "data", tmp_path / "out")
    out = tmp_path / "out"
    assert sorted(os.listdir(out)) == ["door", "hard", "inside", "real"]
    assert not (out / "door").is_symlink()
    assert (out / "door" / "secret").read_text() == "written inside"
    assert os.readlink(out / "inside") == "real"
    assert (out / "hard").read_text() == "real"
    assert (out / "hard").stat().st_ino == (out / "real").stat().st_ino
    assert (tmp_path / "secret").read_text() == "outside"


def test_device_files_are_skipped(tmp_path: Path) -> None:
    archive = _archive(
        _entry("data", tarfile.DIRTYPE),
        _entry("data/fifo", tarfile.FIFOTYPE),
        _entry("data/null", tarfile.CHRTYPE),
        _file("data/file", b"f"),
    )
    extract(archive, "data", tmp_path / "out")
    assert os.listdir(tmp_path / "out") == ["file"]


def test_what_is_copied_in_is_owned_by_root(tmp_path: Path) -> None:
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "f").write_text("f")
    with tarfile.open(fileobj=io.BytesIO(tar_of(tmp_path / "tree", "copied"))) as archive:
        members = archive.getmembers()
    assert [m.name for m in members] == ["copied", "copied/f"]
    assert {(m.uid, m.gid, m.uname, m.gname) for m in members} == {(0, 0, "root", "root")}
