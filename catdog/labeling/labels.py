"""The labels CSV: its one writer, the working files beside it, and the lock that makes one run per output.

Every engine's rows go through `LabelsCSV`: appended batch by batch to `<out>.partial`, with the byte size
and last path saved to `<out>.progress.json` after each batch (so `--resume` continues a killed run exactly),
then renamed onto `<out>` in one step. `run_lock` holds `fcntl.flock` on `<out>.lock` for the whole run:
a second run writing the same CSV fails at once, and a run killed with -9 leaves nothing that blocks the next.
"""

from __future__ import annotations

import csv
import fcntl
import json
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from catdog.errors import CatdogError
from catdog.fsutil import write_json

COLUMNS = ("path", "label", "p_dog", "status", "error")
PROGRESS_VERSION = 3
Scored = tuple[str, float | None, str | None]


def partial_path(out: Path) -> Path:
    """Where a run writing `out` appends its rows until the CSV is complete (then renamed onto `out`)."""
    return out.with_name(out.name + ".partial")


def progress_path(out: Path) -> Path:
    """Where a run writing `out` saves its progress after each batch (removed when the CSV is complete)."""
    return out.with_name(out.name + ".progress.json")


def lock_path(out: Path) -> Path:
    """The lock file a run writing `out` holds (removed when the run ends)."""
    return out.with_name(out.name + ".lock")


def own_files(out: Path) -> Callable[[str], bool]:
    """Whether a (resolved) path is this run's own: the CSV at `out`, its `.partial`, `.progress.json`,
    `.lock` and `.job.json`, or a hidden temporary file of their atomic writes. Those are never labelled;
    every other file is."""
    folder = os.path.realpath(out.parent)
    names = [out.name] + [f"{out.name}.{suffix}" for suffix in ("partial", "progress.json", "lock", "job.json")]
    exact = {os.path.join(folder, name) for name in names}
    temp_prefixes = tuple(f".{name}." for name in names)

    def own(path: str) -> bool:
        parent, name = os.path.split(path)
        return path in exact or (parent == folder and name.startswith(temp_prefixes) and name.endswith(".tmp"))

    return own


@contextmanager
def run_lock(out: Path) -> Iterator[None]:
    """Hold the exclusive lock on `out` for the block, or fail at once if another run holds it."""
    lock = lock_path(out)
    if out.parent.exists() and not out.parent.is_dir():
        raise CatdogError(f"cannot write {out}: {out.parent} is not a folder")
    while True:
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:  # a read-only mount, a file where the folder should be, ...
            raise CatdogError(f"cannot write {out}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise CatdogError(f"another run is writing {out} (it holds {lock}); wait for it to finish") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:  # else the run we waited on removed the file as it ended: lock the new one
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        lock.unlink(missing_ok=True)  # while still held, so no other run can lock the old file meanwhile
        os.close(fd)


def check_output(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to replace a CSV, or discard an interrupted run's progress, unless the user said so."""
    if out.is_dir():
        raise CatdogError(f"--out {out} is a folder; give a CSV file path")
    if out.exists() and not overwrite:
        raise CatdogError(f"{out} already exists; pass --overwrite to replace it")
    if progress_path(out).exists() and not (resume or overwrite):
        raise CatdogError(
            f"an interrupted run left its progress in {progress_path(out)}; pass --resume to continue it or --overwrite to start over"
        )


def format_row(rel: str, p_dog: float | None, reason: str | None, classes: tuple[str, str], threshold: float) -> tuple:
    if reason is not None:
        return (rel, "", "", "error", reason)
    printed = f"{p_dog:.6f}"
    # Decided on the printed value, so a row never reads "cat,0.500000" at threshold 0.5.
    return (rel, classes[int(float(printed) >= threshold)], printed, "ok", "")


def csv_writer(fh: TextIO):
    """CRLF (RFC 4180), not "\\n": Python < 3.12 quotes only the line terminator's characters, so a file
    name holding a bare "\\r" would otherwise break the row."""
    return csv.writer(fh, lineterminator="\r\n")


def open_csv(path: Path, mode: str = "r") -> TextIO:
    """A labels CSV opened as every catdog reader and writer opens it (UTF-8; undecodable names escaped)."""
    return open(path, mode, newline="", encoding="utf-8", errors="backslashreplace")


class LabelsCSV:
    """The partial CSV of one run and its progress file. `resume_after` is the last path an interrupted run
    wrote (None when starting over); `ok` and `error` count the rows written so far, the earlier run's too."""

    def __init__(self, out: Path, key: dict, files: str, classes: tuple[str, str], threshold: float, resume: bool):
        self.out, self.key, self.files, self.classes, self.threshold = out, key, files, classes, threshold
        self.partial, self.progress = partial_path(out), progress_path(out)
        self.ok = self.error = 0
        self._keep, self.resume_after = self._load_progress() if resume else (0, None)
        self._fh: TextIO | None = None

    def _load_progress(self) -> tuple[int, str | None]:
        if not self.progress.exists() or not self.partial.exists():
            return 0, None
        try:
            saved = json.loads(self.progress.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise CatdogError(f"cannot resume: {self.progress} is unreadable; rerun without --resume") from None
        if not isinstance(saved, dict) or saved.get("version") != PROGRESS_VERSION or saved.get("key") != self.key:
            raise CatdogError(
                f"cannot resume: {self.progress} belongs to a different run (source, model, threshold, shard or recursion differ); "
                "rerun without --resume"
            )
        if saved.get("files") != self.files:
            raise CatdogError(
                "cannot resume: files were added, removed or renamed under the folder since the interrupted run; "
                "rerun with --overwrite to start over"
            )
        if not isinstance(saved.get("bytes"), int) or self.partial.stat().st_size < saved["bytes"]:
            raise CatdogError(f"cannot resume: {self.partial} does not match its saved progress; rerun without --resume")
        counts = (saved.get("ok"), saved.get("error"))
        if not all(isinstance(n, int) and n >= 0 for n in counts):
            raise CatdogError(f"cannot resume: {self.progress} is unreadable; rerun without --resume")
        self.ok, self.error = counts
        return saved["bytes"], saved.get("last")

    def __enter__(self) -> LabelsCSV:
        if self._keep:
            os.truncate(self.partial, self._keep)
        elif self.progress.exists():  # starting over: an older run's progress no longer describes the partial CSV
            self.progress.unlink()
        self._fh = open_csv(self.partial, "a" if self._keep else "w")
        self._writer = csv_writer(self._fh)
        if not self._keep:
            self._writer.writerow(COLUMNS)
        return self

    def write(self, batch: Iterable[Scored]) -> None:
        """Append a batch of rows and save the progress (on disk before the progress file says so)."""
        assert self._fh is not None
        last = None
        for rel, p_dog, reason in batch:
            self._writer.writerow(format_row(rel, p_dog, reason, self.classes, self.threshold))
            if reason is None:
                self.ok += 1
            else:
                self.error += 1
            last = rel
        if last is None:
            return
        self._fh.flush()
        os.fsync(self._fh.fileno())
        write_json(self.progress, {
            "version": PROGRESS_VERSION, "key": self.key, "files": self.files, "bytes": self._fh.tell(), "last": last,
            "ok": self.ok, "error": self.error,
        })

    def finish(self, before_rename: Callable[[Path], None] | None = None) -> None:
        """Close the partial CSV and rename it onto `out`; `before_rename(partial)` runs first (e.g. to
        record the job beside it), so a reader never sees a CSV without its record."""
        assert self._fh is not None
        self._fh.close()
        self._fh = None
        if before_rename is not None:
            before_rename(self.partial)
        os.replace(self.partial, self.out)
        self.progress.unlink(missing_ok=True)

    def __exit__(self, *exc) -> None:
        if self._fh is not None:  # interrupted: the partial CSV and its progress stay for --resume
            self._fh.close()
            self._fh = None
