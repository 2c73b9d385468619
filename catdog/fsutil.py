"""Atomic file and directory writes (a reader never sees a half-written output), and opening a file to read
without ever waiting on a FIFO put in its place."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from catdog.errors import CatdogError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def temp_dir_beside(dest: Path, suffix: str = "") -> Path:
    """A new empty folder beside `dest`, with the permissions a plain mkdir would give (not mkdtemp's 0700)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=f"{suffix}.tmp", dir=dest.parent))
    tmp.chmod(0o777 & ~_umask())
    return tmp


@contextmanager
def atomic_path(dest: Path | str, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `dest`; rename it onto `dest` only if the block succeeds.

    The file gets the permissions a plain open() would give (not mkstemp's 0600), so others can read outputs.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=f"{suffix}.tmp", dir=dest.parent)
    os.fchmod(fd, 0o666 & ~_umask())
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as fh:  # on disk before the rename, so a crash never leaves an empty file
            os.fsync(fh.fileno())
        os.replace(tmp_path, dest)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def check_replaceable(dest: Path) -> None:
    """Refuse, even with --overwrite, an output path where a FIFO, device or socket stands: the atomic rename
    would replace it with a regular file (as root, `--out /dev/null` would replace /dev/null itself). A regular
    file, a folder (the callers name that themselves) or a symlink (the rename replaces the link, never its
    target) passes."""
    try:
        mode = os.lstat(dest).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode)):
        kind = "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
        raise CatdogError(f"{dest} is {kind}, not a file: give the path of a file to write")


class NotRegularFile(Exception):
    """What `open_regular` found instead of a regular file: `mode` is its st_mode."""

    def __init__(self, mode: int):
        super().__init__(mode)
        self.mode = mode


def open_regular(path: str | os.PathLike) -> tuple[int, os.stat_result]:
    """A file descriptor to read the regular file at `path`, and its fstat. It is opened non-blocking (a FIFO
    would otherwise block the open until a writer comes), checked, then made blocking; NotRegularFile (fd closed)
    when a folder, FIFO, device or socket is there, the OSError of `os.open` when it cannot be opened."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFile(st.st_mode)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def write_text(dest: Path | str, text: str) -> None:
    """Write `text` to `dest` atomically (UTF-8)."""
    with atomic_path(dest) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(dest: Path | str, obj: Any) -> None:
    """Write `obj` as indented, key-sorted JSON atomically, so reruns are byte-identical."""
    write_text(dest, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def replace_dir(tmp_dir: Path, dest: Path) -> None:
    """Move a fully written `tmp_dir` onto `dest`, keeping the old `dest` until the swap is done."""
    dest = Path(dest)
    backup = None
    if dest.exists() or dest.is_symlink():
        backup = dest.with_name(f".{dest.name}.old")
        if backup.exists():
            shutil.rmtree(backup)
        os.replace(dest, backup)
    os.replace(tmp_dir, dest)
    if backup is not None:
        if backup.is_dir() and not backup.is_symlink():
            shutil.rmtree(backup)
        else:
            backup.unlink()


class HashingReader(io.RawIOBase):
    """A binary file whose bytes are counted into `self.sha256` as they are read (one pass: read and check)."""

    def __init__(self, fh: BinaryIO):
        self._fh = fh
        self.sha256 = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = self._fh.readinto(buffer)
        if n:
            self.sha256.update(memoryview(buffer)[:n])
        return n
