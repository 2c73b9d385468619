"""The labels CSV: its one writer, the working files beside it, and the locks that make one run per output.

Every engine's rows go through `LabelsCSV`: appended block by block to `<out>.partial`, with the byte size,
last path, counts and a digest of the bytes saved to `<out>.progress.json` at most every SAVE_SECONDS (and
when the run stops), so `--resume` continues a killed run exactly and checks what it continues; then renamed
onto `<out>` in one step. `run_lock` holds `fcntl.flock` on `<out>.lock` for the whole run, and the writer
holds one on the partial CSV itself: a second run writing the same CSV fails at once (even if a cleanup job
deleted the lock file), and a run killed with -9 leaves nothing that blocks the next. Working files are
opened without following symlinks, and only a regular file this run holds is renamed into place.
"""

from __future__ import annotations

import csv
import errno
import fcntl
import hashlib
import json
import math
import os
import re
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from catdog.errors import CatdogError
from catdog.fsutil import check_replaceable, write_json

COLUMNS = ("path", "label", "p_dog", "pet_score", "status", "error")
NEITHER = "neither"  # the label of an image the model finds to be neither of its two classes
PROGRESS_VERSION = 5


def _save_seconds() -> float:
    """How often progress is saved: once a second, or $CATDOG_PROGRESS_SECONDS (0: after every batch, as a slow
    model or a test that interrupts runs may want)."""
    text = os.environ.get("CATDOG_PROGRESS_SECONDS", "")
    if not text:
        return 1.0
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < math.inf:
        raise CatdogError(f"CATDOG_PROGRESS_SECONDS={text!r}: expected a number of seconds, 0 or more")
    return seconds


SAVE_SECONDS = _save_seconds()  # progress is saved at most this often: a run killed with -9 redoes at most about this much
_OPEN_FLAGS = os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
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


def own_files(out: Path) -> OwnFiles:
    """Whether a (resolved) path is this run's own: the CSV at `out`, its `.partial`, `.progress.json`,
    `.lock`, `.job.json` and `.files`, or a hidden temporary file of their atomic writes. Those are never labelled;
    every other file is."""
    return OwnFiles(out)


class OwnFiles:
    """The predicate `own_files` gives. Every name it can match contains `marker` (the CSV's name), so a listing
    tests a file's name for it and builds the full path only for the few that do."""

    def __init__(self, out: Path):
        self.marker = out.name
        self._folder = os.path.realpath(out.parent)
        names = [out.name] + [f"{out.name}.{suffix}" for suffix in ("partial", "progress.json", "lock", "job.json", "files")]
        self._exact = {os.path.join(self._folder, name) for name in names}
        self._temp_prefixes = tuple(f".{name}." for name in names)

    def __call__(self, path: str) -> bool:
        if self.marker not in path:
            return False
        parent, name = os.path.split(path)
        return path in self._exact or (parent == self._folder and name.startswith(self._temp_prefixes) and name.endswith(".tmp"))


def _open_own(path: Path, flags: int, what: str) -> int:
    """Open one of the run's working files without following a symlink planted there, and only if it is a
    regular file (a FIFO, device or folder in its place is refused, never opened for writing)."""
    try:
        fd = os.open(path, flags | _OPEN_FLAGS | os.O_NONBLOCK, 0o666)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise CatdogError(f"{path} is a symlink, not a {what} catdog made: remove it and rerun") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise CatdogError(f"{path} is not a regular file, not a {what} catdog made: remove it and rerun")
    os.set_blocking(fd, True)
    return fd


def _open_locked(path: Path, what: str, shown: Path, out: Path) -> int:
    """A working file of the run writing `out`, opened as `_open_own` opens it (created if need be) and locked
    with flock; a one-line CatdogError when it cannot be written (naming `shown`) or another run holds it."""
    try:
        fd = _open_own(path, os.O_RDWR | os.O_CREAT, what)
    except OSError as exc:  # a read-only mount, a file where the folder should be, ...
        raise CatdogError(f"cannot write {shown}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise CatdogError(f"another run is writing {out} (it holds {path}); wait for it to finish") from None
    return fd


def _same_file(fd: int, path: Path) -> bool:
    """Whether `path` (not following a link) is still the file open at `fd`."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


@contextmanager
def run_lock(out: Path) -> Iterator[None]:
    """Hold the exclusive lock on `out` for the block, or fail at once if another run holds it."""
    lock = lock_path(out)
    if out.parent.exists() and not out.parent.is_dir():
        raise CatdogError(f"cannot write {out}: {out.parent} is not a folder")
    while True:
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a read-only mount, a file where the folder should be, ...
            raise CatdogError(f"cannot write {out}: {exc.strerror or exc}") from None
        fd = _open_locked(lock, "lock file", out, out)
        if _same_file(fd, lock):  # else the run we waited on removed the file as it ended: lock the new one
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        # While still held, so no other run can lock the old file meanwhile; and only our own file: a cleanup
        # job may have removed it, and the file now at that path may be another run's.
        if _same_file(fd, lock):
            lock.unlink(missing_ok=True)
        os.close(fd)


def _longest_working_name(out: Path) -> str:
    """The longest name a run writing `out` gives a file: the temporary file of its progress's atomic write."""
    return f".{out.name}.progress.json.{'x' * 8}.tmp"


def check_out_path(out: Path) -> None:
    """Refuse, before anything is written, an --out that is a URL (it would become a local path like
    `s3:/bucket/labels.csv`) or whose working files would have names too long for the folder."""
    text = str(out)
    if "://" in text or text.startswith(("s3:/", "gs:/", "http:/", "https:/")):
        raise CatdogError(
            f"--out {text}: the CSV is written to a local file (object storage is not supported); "
            "write it locally, then copy it (e.g. aws s3 cp labels.csv s3://bucket/labels.csv)"
        )
    folder = out.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        name_max = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        name_max = 255
    longest = len(os.fsencode(_longest_working_name(out)))
    if longest > name_max:
        allowed = name_max - (longest - len(os.fsencode(out.name)))
        raise CatdogError(
            f"--out name is too long ({len(os.fsencode(out.name))} bytes): the working files beside it need "
            f"{longest - len(os.fsencode(out.name))} more and the folder allows {name_max}; use a name of at most {allowed} bytes"
        )


def resume_hint(out: Path) -> str:
    """How to continue an interrupted run writing `out` (with --overwrite too when a CSV is already there)."""
    return "--resume --overwrite" if out.exists() or out.is_symlink() else "--resume"


def _remove_leftovers(out: Path) -> None:
    """Clear what a killed run can leave that describes nothing (called under the run lock): a progress file
    beside no partial CSV (killed between the final rename and its removal), and the hidden temporary files of
    interrupted atomic writes of the progress, the job record and the `.files` sidecar."""
    progress, partial = progress_path(out), partial_path(out)
    if (progress.exists() or progress.is_symlink()) and not (partial.exists() or partial.is_symlink()):
        progress.unlink()
    for name in (progress.name, out.name + ".job.json", out.name + ".files"):
        for tmp in out.parent.glob(f".{_glob_escape(name)}.*.tmp"):
            if tmp.is_symlink() or tmp.is_file():
                tmp.unlink(missing_ok=True)


def _glob_escape(text: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


def check_output(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to replace a CSV, or discard an interrupted run's progress, unless the user said so; clear
    leftovers of killed runs (call it holding the run lock)."""
    if out.is_dir():
        raise CatdogError(f"--out {out} is a folder; give a CSV file path")
    check_replaceable(out)
    _remove_leftovers(out)
    interrupted = progress_path(out).exists()
    if out.exists() and not overwrite:
        if interrupted and resume:
            raise CatdogError(
                f"{out} already exists, and an interrupted run left its progress in {progress_path(out)}: "
                f"pass --resume --overwrite to continue that run and replace {out}, or --overwrite to start over"
            )
        raise CatdogError(f"{out} already exists; pass --overwrite to replace it")
    if interrupted and not (resume or overwrite):
        raise CatdogError(
            f"an interrupted run left its progress in {progress_path(out)}; pass {resume_hint(out)} to continue it "
            "or --overwrite to start over"
        )


def format_row(rel: str, p_dog: float | None, pet_score: float | None, reason: str | None, decision: Decision) -> tuple:
    """One CSV row. Scores are printed with six decimals and the label decided on the printed values, so a row
    never reads "cat,0.500000" at threshold 0.5."""
    if reason is not None:
        return (rel, "", "", "", "error", reason)
    printed = f"{p_dog:.6f}"
    pet = "" if pet_score is None else f"{pet_score:.6f}"
    return (rel, decision.label(printed, pet), printed, pet, "ok", "")


_NEEDS_QUOTES = re.compile(r'[,"\r\n]')


def _csv_field(text: str) -> str:
    """One field as `csv_writer` writes it (QUOTE_MINIMAL: quoted only when it holds a comma, quote, CR or LF)."""
    return '"' + text.replace('"', '""') + '"' if _NEEDS_QUOTES.search(text) else text


def format_rows(batch: Iterable[Scored], decision: Decision) -> tuple[bytes, RowCounts, str | None]:
    """A batch as CSV bytes (UTF-8, RFC 4180, CRLF), its counts and its last path: the one way a row is written,
    whichever engine scored it (a Ray actor formats its own block). The bytes are those `csv_writer` would
    write for the `format_row` tuples, joined by hand: about three times as fast (tested equal)."""
    lines = []
    ok = error = neither = 0
    last = None
    labels = {label: _csv_field(label) for label in (*decision.classes, NEITHER)}
    for rel, p_dog, pet_score, reason in batch:
        _, label, printed, pet, _, _ = format_row(rel, p_dog, pet_score, reason, decision)
        if reason is None:  # the scores, "ok" and the empty error never need quotes
            lines.append(f"{_csv_field(rel)},{labels[label]},{printed},{pet},ok,")
            ok += 1
            neither += label == NEITHER
        else:
            lines.append(f"{_csv_field(rel)},,,,error,{_csv_field(reason)}")
            error += 1
        last = rel
    lines.append("")
    return "\r\n".join(lines).encode("utf-8", "backslashreplace") if last is not None else b"", RowCounts(ok, error, neither), last


HEADER = (",".join(COLUMNS) + "\r\n").encode()


def csv_writer(fh: TextIO):
    """CRLF (RFC 4180), not "\\n": Python < 3.12 quotes only the line terminator's characters, so a file
    name holding a bare "\\r" would otherwise break the row."""
    return csv.writer(fh, lineterminator="\r\n")


def open_csv(path: Path, mode: str = "r") -> TextIO:
    """A labels CSV opened as every catdog reader and writer opens it (UTF-8; undecodable names escaped)."""
    return open(path, mode, newline="", encoding="utf-8", errors="backslashreplace")


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class LabelsCSV:
    """The partial CSV of one run and its progress file. Constructing it claims the partial CSV (opened without
    following links, locked) and, with `resume`, checks an interrupted run's progress against it. `resume_after`
    is the last path that run wrote (None when starting over); `ok` and `error` count the rows written so far,
    the earlier run's too (`counts`); `discarded` says whether an interrupted run's progress was dropped to start over."""

    def __init__(self, out: Path, key: dict, files: str, decision: Decision, resume: bool):
        self.out, self.key, self.files, self.decision = out, key, files, decision
        self.partial, self.progress = partial_path(out), progress_path(out)
        self.counts = RowCounts()
        self.resume_after: str | None = None
        self.discarded = False
        self._digest = hashlib.blake2b(digest_size=16)
        self._size = 0
        self._last: str | None = None
        self._saved_at = 0.0
        self._unsaved = False
        self._fd: int | None = self._claim()
        try:
            self._keep = self._load_progress() if resume else 0
        except BaseException:
            self._release()
            raise

    @property
    def ok(self) -> int:
        return self.counts.ok

    @property
    def error(self) -> int:
        return self.counts.error

    def _claim(self) -> int:
        """The partial CSV, open for writing and locked: a second run (whose lock file a cleanup job removed
        from under this one, say) fails here instead of sharing it."""
        return _open_locked(self.partial, "partial CSV", self.partial, self.out)

    def _refuse(self, what: str) -> CatdogError:
        return CatdogError(f"cannot resume: {what}; rerun with --overwrite to start over")

    def _load_progress(self) -> int:
        """The byte size of the partial CSV to keep, after checking that the partial is exactly what the progress
        file says was written: its digest, and so its last complete row, whose path is `last`, and the counts."""
        try:
            fd = _open_own(self.progress, os.O_RDONLY, "progress file")
        except FileNotFoundError:
            return 0
        try:
            with os.fdopen(fd, "rb") as fh:
                saved = json.loads(fh.read().decode("utf-8"))
        except (OSError, ValueError, RecursionError):  # RecursionError: JSON nested too deeply
            raise self._refuse(f"{self.progress} is unreadable") from None
        if not isinstance(saved, dict) or saved.get("version") != PROGRESS_VERSION or saved.get("key") != self.key:
            raise self._refuse(
                f"{self.progress} belongs to a different run (source, endpoint, model, thresholds, shard or recursion "
                "differ, or another catdog version)"
            )
        if saved.get("files") != self.files:
            raise CatdogError(
                "cannot resume: files were added, removed or renamed under the folder since the interrupted run; "
                "rerun with --overwrite to start over"
            )
        size, last, check = saved.get("bytes"), saved.get("last"), saved.get("digest")
        counts = [saved.get(k) for k in ("ok", "error", "neither")]
        if not (_is_count(size) and size > len(HEADER) and isinstance(last, str) and all(map(_is_count, counts))
                and counts[0] + counts[1] > 0 and isinstance(check, str)):
            raise self._refuse(f"{self.progress} is incomplete or invalid")
        if os.fstat(self._fd).st_size < size:
            raise self._refuse(f"{self.partial} is shorter than its saved progress")
        digest = hashlib.blake2b(digest_size=16)
        with os.fdopen(os.dup(self._fd), "rb") as fh:
            left = size
            while left:
                chunk = fh.read(min(left, 1 << 20))
                if not chunk:
                    break
                digest.update(chunk)
                left -= len(chunk)
        self.counts = RowCounts(*counts)
        if self._check(digest, last) != check:
            raise self._refuse(f"{self.partial} does not match its saved progress (changed, or its last row is not {last!r})")
        self._digest, self._size, self._last = digest, size, last
        self.resume_after = last
        return size

    def _check(self, digest, last: str) -> str:
        """The digest of the partial's bytes bound to the progress saved with them (last path, counts)."""
        bound = digest.copy()
        bound.update(json.dumps([last, self.counts.ok, self.counts.error, self.counts.neither]).encode("utf-8", "surrogatepass"))
        return bound.hexdigest()

    def __enter__(self) -> LabelsCSV:
        assert self._fd is not None
        os.ftruncate(self._fd, self._keep)
        os.lseek(self._fd, self._keep, os.SEEK_SET)
        if not self._keep:
            if self.progress.exists() or self.progress.is_symlink():  # starting over: it no longer describes the partial CSV
                self.progress.unlink()
                self.discarded = True
            self._append(HEADER)
        self._saved_at = time.monotonic()
        return self

    def _append(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]
        self._digest.update(data)
        self._size += len(data)

    def write(self, batch: Iterable[Scored]) -> None:
        """Format a batch of rows and append it (see `write_block`)."""
        data, counts, last = format_rows(batch, self.decision)
        self.write_block(data, counts, last)

    def write_block(self, data: bytes, counts: RowCounts, last: str | None) -> None:
        """Append complete rows formatted by `format_rows`; the progress is saved when SAVE_SECONDS have passed
        since the last save (the rows on disk first, then the progress file that says so)."""
        assert self._fd is not None
        if last is None:
            return
        self._append(data)
        self.counts.add(counts)
        self._last = last
        self._unsaved = True
        if time.monotonic() - self._saved_at >= SAVE_SECONDS:
            self.save()

    def save(self) -> None:
        """Put the rows written so far on disk, then say so in the progress file (never the other way round)."""
        assert self._fd is not None
        if not self._unsaved:
            return
        self._check_held()
        os.fsync(self._fd)
        write_json(self.progress, {
            "version": PROGRESS_VERSION, "key": self.key, "files": self.files, "bytes": self._size, "last": self._last,
            "ok": self.counts.ok, "error": self.counts.error, "neither": self.counts.neither,
            "digest": self._check(self._digest, self._last),
        })
        self._unsaved = False
        self._saved_at = time.monotonic()

    def _check_held(self) -> None:
        """Stop, rather than write or rename a wrong CSV, when the file at the partial's path is no longer ours."""
        if not _same_file(self._fd, self.partial):
            raise CatdogError(
                f"{self.partial} was removed or replaced while this run was writing it (a cleanup job?); "
                f"stopped without writing {self.out}: rerun with --overwrite"
            )

    def finish(self, before_rename: Callable[[Path], None] | None = None) -> None:
        """Put the partial CSV on disk and rename it onto `out`; `before_rename(partial)` runs first (e.g. to
        record the job beside it), so a reader never sees a CSV without its record."""
        assert self._fd is not None
        os.fsync(self._fd)
        if before_rename is not None:
            before_rename(self.partial)
        self._check_held()
        os.replace(self.partial, self.out)
        self._release()
        self.progress.unlink(missing_ok=True)

    def _release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __exit__(self, exc_type, *exc) -> None:
        if self._fd is not None:  # interrupted: the partial CSV and its progress stay for --resume
            try:
                if exc_type is not None and _same_file(self._fd, self.partial):
                    self.save()  # rows already written are not redone
            finally:
                self._release()
