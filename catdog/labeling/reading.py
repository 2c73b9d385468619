"""Reading a labels CSV that may come from anywhere: the one reader and the one row check that `merge-labels`,
`report` and the spreadsheet export share, and the checks on the file each of them writes.

A labels CSV is read as a stream with bounded memory whatever it holds: each line is read with a length limit
and each row may span at most MAX_ROW_CHARS characters (a quoted name may hold line breaks), so a file
without line breaks (or /dev/zero) is refused instead of read whole. Every row is checked the same way (field
count, path, label, scores, status, error) and must sort after the one above it: a catdog CSV is sorted by path
and holds each path once, so one comparison per row catches both duplicates and disorder.
"""

from __future__ import annotations

import csv
import io
import math
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from catdog.errors import CatdogError
from catdog.fsutil import HashingReader, NotRegularFile, check_replaceable, open_regular
from catdog.labeling.labels import COLUMNS, NEITHER

LEGACY_COLUMNS = ("path", "label", "p_dog", "status", "error")  # catdog before `neither`: no pet_score
LABELS = ("cat", "dog", NEITHER)
MAX_ROW_CHARS = 1 << 18  # a row's characters, its line breaks included: paths are at most a few thousand bytes

# Row: (path text, label, p_dog, pet_score, status, error); the scores are None where the row has none.
Row = tuple[str, str, "float | None", "float | None", str, str]

class RowError(ValueError):
    """What is wrong with one row (the reader adds the file and line)."""


def _score(text: str, name: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= 1.0:
        raise RowError(f"{name} {text!r} is not a number from 0 to 1")
    return value


def check_row(fields: list[str], pet_column: bool = True) -> Row:
    """One row of a labels CSV, checked and parsed; RowError says what is wrong. The one rule every reader uses:
    a non-empty path; an ok row has a label (cat, dog or neither), p_dog from 0 to 1, pet_score empty or from 0
    to 1 (never empty on a neither row) and no error; an error row has no label and no scores."""
    width = len(COLUMNS) if pet_column else len(LEGACY_COLUMNS)
    if len(fields) != width:
        raise RowError(f"expected {width} fields, found {len(fields)} (truncated, or not a catdog labels CSV)")
    if pet_column:
        path, label, p_text, pet_text, status, error = fields
    else:
        path, label, p_text, status, error = fields
        pet_text = ""
    if not path:
        raise RowError("empty path")
    if status == "ok":
        if not label:
            raise RowError("a row with status ok has no label")
        if label not in LABELS:
            raise RowError(f"label {label!r} is not one of {', '.join(LABELS)}")
        p_dog = _score(p_text, "p_dog")
        pet = _score(pet_text, "pet_score") if pet_text else None
        if label == NEITHER and pet is None:
            raise RowError("a neither row has no pet_score")
        if error:
            raise RowError("a row with status ok has an error")
        return path, label, p_dog, pet, status, error
    if status == "error":
        if label or p_text or pet_text:
            raise RowError("a row with status error has a label or a score")
        return path, label, None, None, status, error
    raise RowError(f"status {status!r} is neither ok nor error")


class LabelsReader:
    """A labels CSV opened for one streaming pass: `header` (COLUMNS, or LEGACY_COLUMNS for a CSV from before
    pet_score), then `rows()`; `sha256` of the bytes read once the pass is done. Errors name the file and line."""

    def __init__(self, path: Path, what: str = "labels CSV"):
        self.path, self.what = Path(path), what
        try:
            fd, _ = open_regular(self.path)  # a FIFO in the CSV's place is refused, not waited on for ever
        except FileNotFoundError:
            raise CatdogError(f"{what} not found: {self.path}") from None
        except IsADirectoryError:
            raise CatdogError(f"{self.path} is a folder, not a {what}") from None
        except OSError as exc:
            raise CatdogError(f"cannot read {what} {self.path}: {exc.strerror or exc}") from None
        except NotRegularFile as exc:
            mode = exc.mode
            kind = "a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a device or socket"
            raise CatdogError(f"{self.path} is {kind}, not a {what}") from None
        raw = os.fdopen(fd, "rb")
        self._hashing = HashingReader(raw)
        self._raw = raw
        self._text = io.TextIOWrapper(io.BufferedReader(self._hashing, 1 << 20), encoding="utf-8-sig", newline="")
        self._used = 0
        self._reader = csv.reader(self._lines())
        try:
            self.header = self._read_header()
        except BaseException:
            self.close()
            raise

    def _lines(self) -> Iterator[str]:
        readline, limit = self._text.readline, MAX_ROW_CHARS
        while True:
            line = readline(limit + 1)
            if not line:
                return
            self._used += len(line)
            if self._used > limit:
                line_num = self._reader.line_num + 1  # the csv reader counts a line once it has it
                raise CatdogError(f"{self.path}: line {line_num}: a row longer than {limit:,} characters: not a catdog labels CSV")
            yield line

    def _at(self, what: str) -> str:
        return f"{self.path}: line {self._reader.line_num if hasattr(self, '_reader') else 1}: {what}"

    def _next(self) -> list[str] | None:
        try:
            return next(self._reader, None)
        except csv.Error as exc:
            raise CatdogError(self._at(f"malformed CSV: {exc}")) from None
        except UnicodeDecodeError:
            raise CatdogError(self._at("not UTF-8 text: not a catdog labels CSV")) from None
        except OSError as exc:
            raise CatdogError(f"cannot read {self.what} {self.path}: {exc.strerror or exc}") from None

    def _read_header(self) -> tuple[str, ...]:
        header = self._next()
        if header is None:
            raise CatdogError(f"{self.path} is empty: not a catdog labels CSV ({','.join(COLUMNS)})")
        if tuple(header) not in (COLUMNS, LEGACY_COLUMNS):
            shown = ",".join(header)
            shown = shown if len(shown) <= 80 else shown[:80] + "..."
            raise CatdogError(self._at(f"not a catdog labels CSV: the header is {shown!r}, expected {','.join(COLUMNS)!r}"))
        return tuple(header)

    @property
    def legacy(self) -> bool:
        """A CSV written before catdog had the `neither` label: five columns, no pet_score."""
        return len(self.header) < len(COLUMNS)

    @property
    def line_num(self) -> int:
        return self._reader.line_num

    def rows(self) -> Iterator[Row]:
        """Each data row, checked (`check_row`) and in order: a path equal to or sorting before the one above it
        is refused, naming both lines."""
        return self._rows(parsed=True)

    def fields(self) -> Iterator[list[str]]:
        """Each data row as its fields, checked as `rows` checks them."""
        return self._rows(parsed=False)

    def _rows(self, parsed: bool) -> Iterator:
        pet_column, last, last_line = "pet_score" in self.header, None, 0
        while True:
            self._used = 0
            fields = self._next()
            if fields is None:
                return
            try:
                row = check_row(fields, pet_column)
            except RowError as exc:
                raise CatdogError(self._at(str(exc))) from None
            key = row[0]  # the path text: what the run sorted and sharded by
            if last is not None and key <= last:
                what = "repeats the path of" if key == last else "sorts before"
                raise CatdogError(self._at(
                    f"{row[0]!r} {what} line {last_line}: a catdog labels CSV holds each path once, sorted by path"
                ))
            last, last_line = key, self._reader.line_num
            yield row if parsed else fields

    @property
    def sha256(self) -> str:
        return self._hashing.sha256.hexdigest()

    def close(self) -> None:
        self._text.close()
        self._raw.close()

    def __enter__(self) -> LabelsReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def check_new_output(out: Path, overwrite: bool, kind: str, labels_csv: Path | None = None) -> None:
    """Refuse an output path that cannot be written or would replace a file without `overwrite`, in one line:
    a folder, a path under a file, a FIFO or device, an existing file, or (with --overwrite) the labels CSV read."""
    if out.is_dir():
        raise CatdogError(f"{out} is a folder; give {kind} file path")
    check_replaceable(out)
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise CatdogError(f"cannot write {out}: {parent} is not a folder")
            break
    if out.exists() and not overwrite:
        raise CatdogError(f"{out} already exists; pass --overwrite to replace it")
    if labels_csv is not None and out.exists() and labels_csv.exists() and out.samefile(labels_csv):
        raise CatdogError(f"--out {out} is the labels CSV itself")
