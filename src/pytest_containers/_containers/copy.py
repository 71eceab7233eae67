"""Files in and out of a container as tar archives, as ``docker cp`` moves them.

Into a container: :func:`tar_of` packs a file or a directory owned by root, with its
permission bits. Out of one: :func:`extract` unpacks the engine's archive of a path so
that the path becomes the destination, through a :mod:`tarfile` extraction filter that
builds on :func:`tarfile.data_filter`: nothing is written, and no link points, outside the
destination; device files are skipped; ownership and times are not restored.
:class:`Files` is the part of the container handle that does both.
"""

from __future__ import annotations

import io
import os
import sys
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath

import docker.errors
import docker.models.containers

__all__ = ["Files", "extract", "tar_of"]


def tar_of(source: Path, arcname: str) -> bytes:
    """``source`` (a file or a directory, recursively) as a tar archive under
    ``arcname``, every entry owned by root."""

    def as_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        return info

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        archive.add(source, arcname=arcname, filter=as_root)
    return buffer.getvalue()


def _inside(path: str, root: str) -> bool:
    return path == root or os.path.commonpath([path, root]) == root


def _renamed(name: str, top: str, new_top: str) -> str | None:
    """``top/a/b`` -> ``new_top/a/b``; ``None`` for a name outside ``top`` or with ``..``."""
    parts = PurePosixPath(name).parts
    if not parts or parts[0] != top or any(part in ("..", "/") for part in parts[1:]):
        return None
    return "/".join((new_top, *parts[1:]))


def _filter_into(top: str, dest: Path) -> Callable[[tarfile.TarInfo, str], tarfile.TarInfo | None]:
    """The extraction filter that makes ``top`` (the archive's one top entry) become
    ``dest``, for an extraction into ``dest``'s parent. Entries it refuses are skipped,
    not raised: what is left is copied."""
    root = os.path.realpath(dest)

    def keep(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo | None:
        name = _renamed(member.name, top, dest.name)
        if name is None:
            return None
        renamed = member.replace(name=name, deep=False)
        if member.islnk():  # a hard link names another entry of the archive
            linkname = _renamed(member.linkname, top, dest.name)
            if linkname is None or not os.path.exists(os.path.join(path, linkname)):
                return None  # its target is not (or not yet) copied
            renamed = renamed.replace(linkname=linkname, deep=False)
        try:
            filtered = tarfile.data_filter(renamed, path)
        except tarfile.FilterError:
            return None  # absolute, outside the parent, a link out of it, a device file
        # data_filter keeps entries inside dest's parent; they must stay inside dest,
        # also through links extracted before them.
        target = os.path.realpath(os.path.join(path, filtered.name))
        if not _inside(target, root):
            return None
        if filtered.issym():
            landing = os.path.realpath(os.path.join(os.path.dirname(target), filtered.linkname))
            if not _inside(landing, root):
                return None
        # As ``docker cp``: permission bits kept for files (setuid and the like dropped),
        # directories made with the default mode, times not restored.
        mode = member.mode & 0o777 if filtered.isreg() else None
        # None: tarfile leaves that attribute alone (typeshed does not know it yet).
        return filtered.replace(mode=mode, mtime=None, deep=False)  # type: ignore[arg-type]

    return keep


def extract(archive: tarfile.TarFile, top: str, dest: Path) -> None:
    """Unpack ``archive`` (whose entries sit under ``top``) so that ``top`` becomes
    ``dest``: a file is written there, a directory's content merged into it."""
    if not hasattr(tarfile, "data_filter"):
        # Extraction filters came in patch releases (3.10.12, 3.11.4); without them no
        # safe extraction is offered rather than an unsafe one.
        raise RuntimeError(
            "copy_from needs tarfile's extraction filters: Python 3.10.12, 3.11.4, 3.12 "
            f"or newer (this is {sys.version.split()[0]}); upgrade Python"
        )
    dest = Path(os.path.abspath(dest))
    archive.extractall(dest.parent, filter=_filter_into(top, dest))


class Files:
    """Files in and out of a container, as ``docker cp`` copies them (a part of the
    :class:`~pytest_containers._containers.container.Container` handle)."""

    raw: docker.models.containers.Container

    def copy_to(self, host_path: str | os.PathLike[str], container_path: str) -> None:
        """Copy a file or a directory (recursively) into the container, as ``docker cp``
        does: into ``container_path`` when it ends with ``/`` or is an existing directory,
        else to ``container_path`` itself.

        Missing parent directories are created. Copies are owned by root and keep their
        permission bits.
        """
        source = Path(host_path)
        if not source.exists():
            raise FileNotFoundError(f"nothing to copy at {source}")
        target = PurePosixPath(container_path)
        if not target.is_absolute():
            raise ValueError(f"container_path must be an absolute path: {container_path}")
        if container_path.endswith("/") or self._is_directory(str(target)):
            target = target / source.name
        try:
            self.raw.put_archive(str(target.parent), tar_of(source, target.name))
        except docker.errors.NotFound:
            # The parent is missing: unpack at / with the whole path so the engine makes it.
            self.raw.put_archive("/", tar_of(source, str(target.relative_to("/"))))

    def _is_directory(self, container_path: str) -> bool:
        if container_path == "/":
            return True
        try:
            stream, stat = self.raw.get_archive(container_path)
        except docker.errors.NotFound:
            return False
        close = getattr(stream, "close", None)
        if close is not None:
            close()  # only the stat header was wanted, not the archive
        # Go's os.ModeDir bit, as the engine reports file modes.
        return bool(int((stat or {}).get("mode", 0)) & (1 << 31))

    def copy_from(self, container_path: str, host_path: str | os.PathLike[str]) -> None:
        """Copy the file or directory at ``container_path`` to ``host_path``, which it
        becomes (a directory's content is merged into an existing one). Links that would
        point outside ``host_path`` are skipped."""
        stream, stat = self.raw.get_archive(container_path)
        top = str((stat or {}).get("name") or PurePosixPath(container_path).name)
        with tempfile.TemporaryFile() as spool:
            for chunk in stream:
                spool.write(chunk)
            spool.seek(0)
            with tarfile.open(fileobj=spool) as archive:
                extract(archive, top, Path(host_path))
