"""Blobs as files under a directory, written durably: temp file, fsync, rename, fsync dir."""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path
from typing import BinaryIO

from dicomweb_server.errors import OutOfResources, StorageUnavailable

_NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FileBlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.blobs = self.root / "blobs"
        self.tmp = self.root / "tmp"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)

    def clean_spool(self) -> int:
        """Remove temp files left by a crash; they were never acknowledged."""
        removed = 0
        for entry in self.tmp.iterdir():
            if entry.is_file():
                entry.unlink(missing_ok=True)
                removed += 1
        return removed

    def spool_dir(self) -> Path:
        return self.tmp

    def path_of(self, key: str) -> Path:
        # Keys are built by the services from validated UIDs; this is a last guard.
        if key.startswith("/") or ".." in key.split("/"):
            raise StorageUnavailable(f"refusing unsafe blob key {key!r}")
        return self.blobs / key

    def put_file(self, key: str, source: Path) -> None:
        target = self.path_of(key)
        try:
            with open(source, "rb+") as fh:
                os.fsync(fh.fileno())
            created = []
            parent = target.parent
            while not parent.exists():
                created.append(parent)
                parent = parent.parent
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(source, target)
            fsync_dir(target.parent)
            for directory in created:
                fsync_dir(directory.parent)
        except OSError as exc:
            if exc.errno in _NO_SPACE:
                raise OutOfResources(f"no space left to store {key}") from exc
            raise

    def open(self, key: str) -> BinaryIO:
        try:
            return open(self.path_of(key), "rb")
        except OSError as exc:
            raise StorageUnavailable(f"stored object {key} is unreadable: {exc.strerror}") from exc

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path_of(key).unlink()
