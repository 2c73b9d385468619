"""The labels CSV: its one writer, the working files beside it, and the lock that makes one run per output.

Every engine's rows go through `LabelsCSV`: appended batch by batch to `<out>.partial`, with the byte size
and last path saved to `<out>.progress.json` after each batch (so `--resume` continues a killed run exactly),
then renamed onto `<out>` in one step. `run_lock` holds `fcntl.flock` on `<out>.lock` for the whole run:
a second run writing the same CSV fails at once, and a run killed with -9 leaves nothing that blocks the next.
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TextIO

from catdog.errors import CatdogError
from catdog.fsutil import write_json

COLUMNS = ("path", "label", "p_dog", "pet_score", "status", "error")
NEITHER = "neither"  # the label of an image the model finds to be neither of its two classes
PROGRESS_VERSION = 4
# One file as an engine scored it: (path text, p_dog, pet_score, None), or (path text, None, None, reason) for a file
# that could not be used. pet_score is None when the model has no pet score (a bundle from before it had one).
Scored = tuple[str, float | None, float | None, str | None]


@dataclass(frozen=True)
class Decision:
    """How a row's label follows from its printed scores: `neither` when `pet_threshold` is set and the printed
    pet_score is below it, else classes[1] when the printed p_dog >= `threshold`, else classes[0]."""

    classes: tuple[str, str]
    threshold: float
    pet_threshold: float | None = None  # None: the outcome is off (or the model has no pet score)

    def label(self, p_dog: str, pet_score: str) -> str:
        if self.pet_threshold is not None and pet_score and float(pet_score) < self.pet_threshold:
            return NEITHER
        return self.classes[int(float(p_dog) >= self.threshold)]


@dataclass
class RowCounts:
    ok: int = 0  # neither rows included
    error: int = 0
    neither: int = 0

    def add(self, other: RowCounts) -> None:
        self.ok += other.ok
        self.error += other.error
        self.neither += other.neither


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


def format_row(rel: str, p_dog: float | None, pet_score: float | None, reason: str | None, decision: Decision) -> tuple:
    """One CSV row. Scores are printed with six decimals and the label decided on the printed values, so a row
    never reads "cat,0.500000" at threshold 0.5."""
    if reason is not None:
        return (rel, "", "", "", "error", reason)
    printed = f"{p_dog:.6f}"
    pet = "" if pet_score is None else f"{pet_score:.6f}"
    return (rel, decision.label(printed, pet), printed, pet, "ok", "")


def format_rows(batch: Iterable[Scored], decision: Decision) -> tuple[bytes, RowCounts, str | None]:
    """A batch as CSV bytes (UTF-8, RFC 4180, CRLF), its counts and its last path: the one way a row is written,
    whichever engine scored it (a Ray actor formats its own block)."""
    text = io.StringIO()
    writer = csv_writer(text)
    counts = RowCounts()
    last = None
    for rel, p_dog, pet_score, reason in batch:
        row = format_row(rel, p_dog, pet_score, reason, decision)
        writer.writerow(row)
        if reason is None:
            counts.ok += 1
            counts.neither += row[1] == NEITHER
        else:
            counts.error += 1
        last = rel
    return text.getvalue().encode("utf-8", "backslashreplace"), counts, last


HEADER = (",".join(COLUMNS) + "\r\n").encode()


def csv_writer(fh: TextIO):
    """CRLF (RFC 4180), not "\\n": Python < 3.12 quotes only the line terminator's characters, so a file
    name holding a bare "\\r" would otherwise break the row."""
    return csv.writer(fh, lineterminator="\r\n")


def open_csv(path: Path, mode: str = "r") -> TextIO:
    """A labels CSV opened as every catdog reader and writer opens it (UTF-8; undecodable names escaped)."""
    return open(path, mode, newline="", encoding="utf-8", errors="backslashreplace")


class LabelsCSV:
    """The partial CSV of one run and its progress file. `resume_after` is the last path an interrupted run
    wrote (None when starting over); `counts` counts the rows written so far, the earlier run's too."""

    def __init__(self, out: Path, key: dict, files: str, decision: Decision, resume: bool):
        self.out, self.key, self.files, self.decision = out, key, files, decision
        self.partial, self.progress = partial_path(out), progress_path(out)
        self.counts = RowCounts()
        self._keep, self.resume_after = self._load_progress() if resume else (0, None)
        self._fh: BinaryIO | None = None

    @property
    def ok(self) -> int:
        return self.counts.ok

    @property
    def error(self) -> int:
        return self.counts.error

    def _load_progress(self) -> tuple[int, str | None]:
        if not self.progress.exists() or not self.partial.exists():
            return 0, None
        try:
            saved = json.loads(self.progress.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise CatdogError(f"cannot resume: {self.progress} is unreadable; rerun without --resume") from None
        if not isinstance(saved, dict) or saved.get("version") != PROGRESS_VERSION or saved.get("key") != self.key:
            raise CatdogError(
                f"cannot resume: {self.progress} belongs to a different run (source, model, thresholds, shard or recursion differ); "
                "rerun without --resume"
            )
        if saved.get("files") != self.files:
            raise CatdogError(
                "cannot resume: files were added, removed or renamed under the folder since the interrupted run; "
                "rerun with --overwrite to start over"
            )
        if not isinstance(saved.get("bytes"), int) or self.partial.stat().st_size < saved["bytes"]:
            raise CatdogError(f"cannot resume: {self.partial} does not match its saved progress; rerun without --resume")
        counts = (saved.get("ok"), saved.get("error"), saved.get("neither"))
        if not all(isinstance(n, int) and n >= 0 for n in counts):
            raise CatdogError(f"cannot resume: {self.progress} is unreadable; rerun without --resume")
        self.counts = RowCounts(*counts)
        return saved["bytes"], saved.get("last")

    def __enter__(self) -> LabelsCSV:
        if self._keep:
            os.truncate(self.partial, self._keep)
        elif self.progress.exists():  # starting over: an older run's progress no longer describes the partial CSV
            self.progress.unlink()
        self._fh = open(self.partial, "ab" if self._keep else "wb")
        if not self._keep:
            self._fh.write(HEADER)
        return self

    def write(self, batch: Iterable[Scored]) -> None:
        """Format a batch of rows and append it (see `write_block`)."""
        data, counts, last = format_rows(batch, self.decision)
        self.write_block(data, counts, last)

    def write_block(self, data: bytes, counts: RowCounts, last: str | None) -> None:
        """Append rows formatted by `format_rows` and save the progress (on disk before the progress file says so)."""
        assert self._fh is not None
        if last is None:
            return
        self._fh.write(data)
        self.counts.add(counts)
        self._fh.flush()
        os.fsync(self._fh.fileno())
        write_json(self.progress, {
            "version": PROGRESS_VERSION, "key": self.key, "files": self.files, "bytes": self._fh.tell(), "last": last,
            "ok": self.counts.ok, "error": self.counts.error, "neither": self.counts.neither,
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
