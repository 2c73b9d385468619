"""`predict-folder --update`: label only what changed since the CSV at --out was written.

Every run writes, beside its CSV, `<csv>.files`: one JSON line (what must match for a row to be kept: source,
endpoint, model digest, recursion, links, shard, pixel limit; and the CSV's row count and sha256), then one 16-byte
record per CSV row, in the CSV's order: the file's size and stamp (mtime in nanoseconds for a folder, a 64-bit hash
of the ETag for S3) as little-endian int64, -1 where unknown. Ten million files cost 160 MB beside a CSV of about
600 MB; paths are not repeated, the CSV's own rows give them.

An update lists the source with each file's identity, then walks the old CSV (with its sidecar) and the new listing
side by side, both sorted by path text: a streaming merge-join, no dict of every file. The old CSV is read a piece
(`_JOIN_BYTES`) at a time, and a run of rows that are exactly the next listed files, ok and unchanged (nearly all of
them when little changed) is kept with a few C-level compares, without Python work per row. An ok row whose file has
the same size and stamp is kept, its label recomputed from its printed scores under this run's thresholds (exactly
what a fresh run prints, see `catdog.labeling.labels.Decision`); error rows and new or changed files are labeled
again; rows of removed files are dropped. The rows go through the same writer as a fresh run's, so the CSV is byte
for byte the one a fresh run would write, and an interrupted update leaves the old CSV untouched.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from array import array
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from catdog.cpus import usable_cpus
from catdog.errors import CatdogError
from catdog.fsutil import atomic_path
from catdog.labeling.engines import Block
from catdog.labeling.jobrecord import file_sha256
from catdog.labeling.labels import COLUMNS, HEADER, NEITHER, RowCounts, Scored, partial_path, progress_path
from catdog.labeling.sources import Listing, LocalSource, Source, path_from_text

FILES_VERSION = 1
_RECORD = np.dtype("<i8")
_CHUNK = 1 << 12  # sidecar records read or written at a time
KEPT_BATCH = 8192  # kept rows copied to the writer at a time (a kill -9 redoes at most about this many)


def files_path(out: Path) -> Path:
    """The per-file identities of the CSV `out` (same row order), written with it by every run."""
    return out.with_name(out.name + ".files")


def identified(source: Source, listing: Listing) -> Listing:
    """`listing` with each file's identity: what an S3 listing already holds, else one stat per file of a folder
    (following a symlinked file to its target; -1 for a file that cannot be stat'ed or is an error row already).
    CPython's DirEntry.stat() is itself a stat of the full path on Linux (d_type gives only the file type), so
    stat'ing after the listing is sorted costs the same calls and no permutation of per-file arrays."""
    if listing.sizes is not None and listing.stamps is not None:
        return listing
    if not isinstance(source, LocalSource):
        raise CatdogError(f"cannot tell unchanged files of {source.describe()}: its listing has no sizes")
    root, paths = source.root.rstrip("/") + "/", listing.paths
    with ThreadPoolExecutor(max_workers=min(4, usable_cpus() + 1)) as pool:  # stat() releases the GIL
        parts = pool.map(lambda start: _stat_all(root, paths[start:start + _STAT_CHUNK], listing.problems),
                         range(0, len(paths), _STAT_CHUNK))
        sizes, stamps = array("q"), array("q")
        for part_sizes, part_stamps in parts:
            sizes.extend(part_sizes)
            stamps.extend(part_stamps)
    return replace(listing, sizes=sizes, stamps=stamps)


_STAT_CHUNK = 16384


def _stat_all(root: str, paths: list[str], problems) -> tuple[array, array]:
    sizes, stamps, stat = array("q"), array("q"), os.stat
    for rel in paths:
        st = None
        if rel not in problems:
            try:
                st = stat(root + path_from_text(rel))
            except OSError:
                pass
        sizes.append(-1 if st is None else st.st_size)
        stamps.append(-1 if st is None else st.st_mtime_ns)
    return sizes, stamps


def identity_digest(listing: Listing) -> str:
    """A digest of the files' identities (part of the resume key: a file changed since an interrupted run means
    its rows may be stale)."""
    digest = hashlib.blake2b(digest_size=16)
    for values in (listing.sizes, listing.stamps):
        digest.update(memoryview(values).cast("B") if values is not None else b"-")
    return digest.hexdigest()


# --- the sidecar -------------------------------------------------------------------------------------------------

def write_files(out: Path, csv_sha256: str, key: dict, decision: dict, listing: Listing) -> None:
    """Write `<out>.files` atomically for the finished CSV whose sha256 is `csv_sha256` (about to become `out`),
    labeled with the thresholds `decision`."""
    assert listing.sizes is not None and listing.stamps is not None
    header = {"version": FILES_VERSION, "key": key, "decision": decision, "rows": len(listing), "csv_sha256": csv_sha256}
    sizes = np.frombuffer(listing.sizes, dtype=np.int64)
    stamps = np.frombuffer(listing.stamps, dtype=np.int64)
    with atomic_path(files_path(out)) as tmp, open(tmp, "wb") as fh:
        fh.write(json.dumps(header, sort_keys=True).encode() + b"\n")
        for start in range(0, len(sizes), _CHUNK):
            records = np.empty((len(sizes[start:start + _CHUNK]), 2), dtype=_RECORD)
            records[:, 0] = sizes[start:start + _CHUNK]
            records[:, 1] = stamps[start:start + _CHUNK]
            fh.write(records.tobytes())


def _read_header(path: Path) -> dict | None:
    try:
        with open(path, "rb") as fh:
            header = json.loads(fh.readline(1 << 20))
    except (OSError, ValueError):
        return None
    ok = isinstance(header, dict) and header.get("version") == FILES_VERSION and isinstance(header.get("key"), dict)
    ok = ok and isinstance(header.get("rows"), int) and isinstance(header.get("csv_sha256"), str)
    return header if ok else None


def _raw_rows(fh) -> Iterator[tuple[bytes, int]]:
    """The rows of a CSV opened in binary mode, each as its bytes and its offset: a row holding an odd number of
    quote characters goes on past its line end (a quoted name with a line break)."""
    offset, pending = fh.tell(), b""
    for line in fh:
        row = pending + line if pending else line
        if row.count(b'"') % 2:
            pending = row
            continue
        pending = b""
        yield row, offset
        offset += len(row)
    if pending:
        yield pending, offset


def _fields(row: bytes) -> list[str]:
    if not row.endswith(b"\r\n"):
        return []
    if b'"' not in row:
        return row[:-2].decode("utf-8").split(",")
    return next(csv.reader(io.StringIO(row.decode("utf-8"), newline="")), [])


class _Stale(Exception):
    """The old CSV cannot be updated; the message says why."""


_JOIN_BYTES = 1 << 17  # the old CSV is joined this many bytes of rows at a time
_NEITHER_FIELD = f",{NEITHER},".encode()
_OK_END = b",ok,\r\n"  # the end of an ok row (its error field empty)


@dataclass
class _Piece:
    """Consecutive rows of the old CSV with their sidecar identities. `data` holds the rows' bytes when they
    passed `_plain`'s checks (no quote, six fields each): then a run of kept rows is counted in those bytes;
    else `labels` is filled row by row."""

    start: int  # the first row's byte offset in the CSV
    ends: np.ndarray  # each row's end offset in the CSV
    paths: list[str]
    records: np.ndarray  # (rows, 2): each row's size and stamp
    all_ok: bool
    data: bytes | None = None
    labels: list[str | None] | None = None  # each row's label if its status is ok, else None
    _ok_mask: np.ndarray | None = None

    def row_start(self, j: int) -> int:
        return self.start if j == 0 else int(self.ends[j - 1])

    def ok_labels(self) -> list[str | None]:
        if self.labels is None:
            assert self.data is not None
            rows = (line.split(",") for line in self.data.decode("utf-8").split("\r\n")[:-1])
            self.labels = [fields[1] if fields[4] == "ok" else None for fields in rows]
        return self.labels

    def ok_mask(self) -> np.ndarray:
        """Whether each row's status is ok (as `ok_labels` says, with rows whose error is not empty counted out)."""
        if self._ok_mask is None:
            if self.data is None:
                self._ok_mask = np.array([label is not None for label in self.ok_labels()], dtype=bool)
            else:  # five commas a row: a row ends with ",ok,CRLF" when its status is ok and its error empty
                raw = np.frombuffer(self.data, dtype=np.uint8)
                tails = raw[(self.ends - self.start)[:, None] + np.arange(-len(_OK_END), 0)]
                self._ok_mask = (tails == np.frombuffer(_OK_END, dtype=np.uint8)).all(axis=1)
        return self._ok_mask

    def neither(self, j0: int, j1: int) -> int:
        """How many of rows j0..j1-1, all ok, are labeled `neither`."""
        if self.labels is not None:
            return self.labels[j0:j1].count(NEITHER)
        # Six fields, no quotes: ",neither," can only be a label (the scores are numbers, the status "ok").
        return self.data.count(_NEITHER_FIELD, self.row_start(j0) - self.start, int(self.ends[j1 - 1]) - self.start)


def _pieces(fh, side, stale: _Stale) -> Iterator[_Piece]:
    """The rows of the CSV open at its first row, piece by piece: about `_JOIN_BYTES` at a time, each piece ending
    at a row's end (a quoted row with a line break is never cut), each with its rows' sidecar records."""
    offset, carry = fh.tell(), b""
    while True:
        block = fh.read(_JOIN_BYTES)
        data = carry + block if carry else block
        if not block:
            if data:  # a last row without its line end: the row-by-row parse says it is stale
                yield _parsed(data, offset, side, stale, final=True)[0]
            return
        cut = data.rfind(b"\n") + 1
        data, carry = data[:cut], data[cut:]
        piece = _plain(data, offset, side, stale) if data and b'"' not in data else None
        if piece is None and data:
            piece, rest = _parsed(data, offset, side, stale, final=False)
            data, carry = data[:len(data) - len(rest)], rest + carry
        if piece is not None:
            yield piece
        offset += len(data)


def _records(side, rows: int, stale: _Stale) -> np.ndarray:
    data = side.read(rows * 16)
    if len(data) != rows * 16:
        raise stale
    return np.frombuffer(data, dtype=_RECORD).reshape(-1, 2)


def _plain(data: bytes, offset: int, side, stale: _Stale) -> _Piece | None:
    """Rows without a quote character, checked and split in C: every line ends with CRLF (no other CR or LF) and
    holds exactly five commas. None when they do not pass (then they are parsed row by row)."""
    rows = data.count(b"\n")
    if not data.endswith(b"\r\n") or data.count(b"\r") != rows or data.count(b"\r\n") != rows:
        return None
    raw = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(raw == 10) + 1
    commas = np.flatnonzero(raw == 44)
    if len(commas) != 5 * rows or not np.array_equal(np.searchsorted(commas, ends), np.arange(5, 5 * rows + 1, 5)):
        return None
    try:
        lines = data.decode("utf-8").split("\r\n")
    except UnicodeDecodeError:
        return None
    lines.pop()
    paths = [line.partition(",")[0] for line in lines]
    return _Piece(offset, ends + offset, paths, _records(side, rows, stale), data.count(_OK_END) == rows, data)


def _parsed(data: bytes, offset: int, side, stale: _Stale, final: bool) -> tuple[_Piece | None, bytes]:
    """Rows parsed one by one (quoted fields); unless `final`, a last row whose quote is still open is given back
    (it goes on in the next piece). Returns the piece (None: no complete row) and the bytes given back."""
    rows = list(_raw_rows(io.BytesIO(data)))
    rest = b""
    if not final and rows and rows[-1][0].count(b'"') % 2:
        rest = rows.pop()[0]
    if not rows:
        return None, rest
    paths, labels = [], []
    for row, _ in rows:
        try:
            fields = _fields(row)
        except UnicodeDecodeError:
            raise stale from None
        if len(fields) != 6:
            raise stale
        paths.append(fields[0])
        labels.append(fields[1] if fields[4] == "ok" else None)
    ends = np.array([start + len(row) for row, start in rows], dtype=np.int64) + offset
    piece = _Piece(offset, ends, paths, _records(side, len(rows), stale), None not in labels, labels=labels)
    return piece, rest


# --- the plan: what to keep, label and drop ------------------------------------------------------------------------

@dataclass(frozen=True)
class Kept:
    """Consecutive kept rows: bytes start..end of the old CSV, with their count, `neither` count and paths."""

    start: int
    end: int
    rows: int
    neither: int
    first: str
    last: str


Step = Kept | list[str]  # kept rows, or a run of paths the engine labels


@dataclass(frozen=True)
class Plan:
    to_label: Listing  # the files to decode, a sorted subsequence of the listing
    steps: list[Step]  # the new CSV in order: kept rows and runs of labeled paths
    kept: int
    dropped: int
    old: Path | None  # the CSV whose rows are kept (None: every file is labeled)
    old_sha256: str | None  # its sha256 (part of the resume key)
    old_decision: dict | None  # the thresholds it was labeled with: the same ones let kept rows be copied as they are
    note: str | None  # one line: why no row could be kept, when there was a CSV


_WHAT_DIFFERS = {
    "model": "the model bundle differs from the one that labeled it",
    "source": "it labeled another source",
    "endpoint": "it labeled another S3 endpoint",
    "shard": "it labeled another --shard",
    "recursive": "it was labeled with the other --recursive/--no-recursive",
    "follow_links": "it was labeled with the other --follow-links/--no-follow-links",
    "max_pixels": "it was labeled with another pixel limit",
}


def plan_update(out: Path, key: dict, listing: Listing, overwrite: bool) -> Plan:
    """Decide, without reading any image, which files of `listing` (with identities) keep their row of `out`.

    A CSV from an older catdog (no sidecar) or labeled differently (model, source, shard, recursion) is relabeled
    whole, with a note saying why. A CSV changed after catdog wrote it (edited by hand) is refused unless
    `overwrite`: relabeling would silently replace the edits.
    """
    everything = Plan(listing, [list(listing.paths)] if listing.paths else [], 0, 0, None, None, None, None)
    if not out.exists():
        return everything
    side = files_path(out)
    if not side.exists():
        return replace(everything, note=f"relabeling every file: {out} has no {side.name} (written by an older catdog?)")
    header = _read_header(side)
    if header is None:
        return replace(everything, note=f"relabeling every file: {side} is unreadable or from another catdog version")
    sha = file_sha256(out)
    if sha != header["csv_sha256"]:
        if not overwrite:
            raise CatdogError(
                f"{out} was changed after catdog wrote it (its sha256 is not the one {side.name} records), so --update "
                "cannot tell which rows to keep; pass --overwrite to relabel every file and replace it"
            )
        return replace(everything, note=f"relabeling every file: {out} was changed after catdog wrote it")
    old_key = header["key"]
    for name, why in _WHAT_DIFFERS.items():
        if old_key.get(name) != key.get(name):
            return replace(everything, note=f"relabeling every file: {why}")
    try:
        return _join(out, header, listing, sha)
    except _Stale as exc:
        return replace(everything, note=f"relabeling every file: {exc}")


def _join(out: Path, header: dict, listing: Listing, sha: str) -> Plan:
    """The streaming merge-join of the old CSV (with its sidecar) and the new listing, both sorted by path text."""
    assert listing.sizes is not None and listing.stamps is not None
    merge = _Merge(listing)
    stale = _Stale(f"{out} does not match {files_path(out).name}")
    with open(out, "rb") as fh, open(files_path(out), "rb") as side:
        side.readline(1 << 20)
        if fh.readline() != HEADER:
            raise _Stale(f"{out} has other columns than {','.join(COLUMNS)} (written by another catdog version)")
        for piece in _pieces(fh, side, stale):
            merge.piece(piece, stale)
        if merge.seen != header["rows"] or side.read(1):
            raise stale
    merge.finish()
    decision = header.get("decision") if isinstance(header.get("decision"), dict) else None
    return Plan(listing.only(merge.to_label), merge.steps, merge.kept, merge.dropped, out if merge.kept else None, sha,
                decision, None)


_FIRST_WINDOW = 8  # a run of kept rows is looked for in windows of this many rows, doubling


def _common_prefix(a: list[str], ja: int, b: list[str], jb: int, count: int) -> int:
    """How many of the `count` items from a[ja] and b[jb] on are equal, counted from the first (compared in C)."""
    if a[ja:ja + count] == b[jb:jb + count]:
        return count
    done, end = 0, count  # the first difference is in done..end-1: halve to it
    while end - done > 1:
        middle = (done + end) // 2
        if a[ja + done:ja + middle] == b[jb + done:jb + middle]:
            done = middle
        else:
            end = middle
    return done


class _Merge:
    """The join's state: where it is in the listing, and the plan's steps so far."""

    def __init__(self, listing: Listing):
        self.paths = listing.paths
        self.sizes, self.stamps = listing.sizes, listing.stamps
        self.size_array = np.frombuffer(listing.sizes, dtype=np.int64)
        self.stamp_array = np.frombuffer(listing.stamps, dtype=np.int64)
        self.i = 0  # the next listed path
        self.seen = 0  # old rows so far
        self.previous = ""  # the last old row's path
        self.to_label: list[str] = []
        self.steps: list[Step] = []
        self.run: list[str] = []  # the run of labeled paths being gathered
        self.segment: list = []  # the kept rows being gathered: [start, end, rows, neither, first, last]
        self.kept = self.dropped = 0

    def piece(self, piece: _Piece, stale: _Stale) -> None:
        """Join the old rows of `piece`: a run of rows that are the next listed files, ok and unchanged (nearly
        every row when a folder changed little) is kept as a whole, checked in C; any other row goes through the
        row-by-row merge."""
        rows = len(piece.paths)
        if self.seen and piece.paths[0] <= self.previous:
            raise stale
        j = 0
        while j < rows:
            good = self._run(piece, j)
            if good:
                self._keep(piece, j, j + good)
                self.i += good
                j += good
            else:
                self._row(piece, j, stale)
                j += 1
        self.seen += rows
        self.previous = piece.paths[-1]

    def _run(self, piece: _Piece, j: int) -> int:
        """How many old rows from row j on are the next listed files, ok and unchanged: row j checked alone (a
        changed file costs no array work), then windows that double in size until one holds a row that is not."""
        i = self.i
        if i >= len(self.paths) or piece.paths[j] != self.paths[i] or not self._unchanged_row(piece, j, i):
            return 0
        done, step, limit = 1, _FIRST_WINDOW, min(len(piece.paths) - j, len(self.paths) - i)
        while done < limit:
            end = min(done + step, limit)
            same = _common_prefix(piece.paths, j + done, self.paths, i + done, end - done)
            good = self._unchanged(piece, j + done, i + done, same) if same else 0
            done += good
            if done < end:
                break
            step *= 2
        return done

    def _unchanged_row(self, piece: _Piece, j: int, i: int) -> bool:
        size, stamp = piece.records[j].tolist()
        ok = piece.all_ok or piece.ok_labels()[j] is not None
        return ok and size == self.sizes[i] and stamp == self.stamps[i] and size >= 0 and stamp != -1

    def _unchanged(self, piece: _Piece, j: int, i: int, rows: int) -> int:
        """How many of the `rows` old rows from row j on, the listed files from i on, are ok rows whose files have
        the same size and stamp, counted from row j up to the first that is not."""
        records = piece.records[j:j + rows]
        good = (records[:, 0] == self.size_array[i:i + rows]) & (records[:, 1] == self.stamp_array[i:i + rows])
        good &= (records[:, 0] >= 0) & (records[:, 1] != -1)
        if not piece.all_ok:
            good &= piece.ok_mask()[j:j + rows]
        bad = np.flatnonzero(~good)
        return int(bad[0]) if len(bad) else rows

    def _row(self, piece: _Piece, j: int, stale: _Stale) -> None:
        """Old row j through the merge: the listed files before it are labeled; it is kept, labeled again (error
        row, changed file) or dropped (its file is gone)."""
        rel, paths, n = piece.paths[j], self.paths, len(self.paths)
        if (j or self.seen) and rel <= (piece.paths[j - 1] if j else self.previous):
            raise stale
        while self.i < n and paths[self.i] < rel:
            self._label(paths[self.i])
            self.i += 1
        if self.i < n and paths[self.i] == rel:
            if self._unchanged_row(piece, j, self.i):
                self._keep(piece, j, j + 1)
            else:
                self._label(rel)
            self.i += 1
        else:
            self.dropped += 1

    def _label(self, rel: str) -> None:
        self._close_segment()
        self.to_label.append(rel)
        self.run.append(rel)

    def _keep(self, piece: _Piece, j0: int, j1: int) -> None:
        """Keep the old rows j0..j1-1 of `piece` (all ok, unchanged), in segments of at most KEPT_BATCH rows."""
        if self.run:
            self.steps.append(self.run)
            self.run = []
        segment, j = self.segment, j0
        if segment and (segment[1] != piece.row_start(j) or segment[2] >= KEPT_BATCH):
            self._close_segment()
        while j < j1:
            if not segment:
                segment.extend([piece.row_start(j), piece.row_start(j), 0, 0, piece.paths[j], None])
            take = min(KEPT_BATCH - segment[2], j1 - j)
            segment[1], segment[2], segment[5] = int(piece.ends[j + take - 1]), segment[2] + take, piece.paths[j + take - 1]
            segment[3] += piece.neither(j, j + take)
            self.kept += take
            j += take
            if j < j1:
                self._close_segment()

    def _close_segment(self) -> None:
        if self.segment:
            self.steps.append(Kept(*self.segment))
            self.segment.clear()

    def finish(self) -> None:
        """Label the listed files after the last old row."""
        if self.i < len(self.paths):
            self._close_segment()
            self.to_label.extend(self.paths[self.i:])
            self.run.extend(self.paths[self.i:])
            self.i = len(self.paths)
        self._close_segment()
        if self.run:
            self.steps.append(self.run)
            self.run = []


def after(plan: Plan, last: str) -> list[Step]:
    """The plan's steps for the paths after `last` (resuming an interrupted update)."""
    steps: list[Step] = []
    for step in plan.steps:
        if isinstance(step, list):
            rest = [rel for rel in step if rel > last]
            if rest:
                steps.append(rest)
        elif step.first > last:
            steps.append(step)
        elif step.last > last:
            assert plan.old is not None
            with open(plan.old, "rb") as fh:
                fh.seek(step.start)
                rows = [(row, start) for row, start in _raw_rows(io.BytesIO(fh.read(step.end - step.start)))]
            later = [(row, start) for row, start in rows if _fields(row)[0] > last]
            neither = sum(_fields(row)[1] == NEITHER for row, _ in later)
            steps.append(Kept(step.start + later[0][1], step.end, len(later), neither, _fields(later[0][0])[0], step.last))
    return steps


# --- the rows, in order: kept ones from the old CSV, labeled ones from the engine -----------------------------------

def merged(plan: Plan, steps: list[Step], scored: Iterable[list[Scored] | Block], batch_size: int,
           copy: bool) -> Iterator[list[Scored] | Block]:
    """The new CSV's rows in order, step by step: kept rows copied from the old CSV as they are (`copy`: the same
    thresholds) or relabeled from their printed scores, and the engine's rows for each run of labeled paths."""
    engine = iter(scored)
    pending: deque[Scored] = deque()
    with open(plan.old, "rb") if plan.old is not None else io.BytesIO() as old:
        for step in steps:
            if isinstance(step, Kept):
                old.seek(step.start)
                data = old.read(step.end - step.start)
                if copy:
                    yield Block(0, step.rows, data, RowCounts(step.rows, 0, step.neither), step.last)
                else:
                    yield _scored(data)
                continue
            rows: list[Scored] = []
            for rel in step:
                while not pending:
                    more = next(engine, None)
                    if more is None:
                        raise CatdogError(f"internal error: the engine stopped before {rel!r}")
                    pending.extend(_scored(more.data) if isinstance(more, Block) else more)
                row = pending.popleft()
                if row[0] != rel:
                    raise CatdogError(f"internal error: the engine returned {row[0]!r} where {rel!r} was expected")
                rows.append(row)
                if len(rows) >= batch_size:
                    yield rows
                    rows = []
            if rows:
                yield rows


def _scored(data: bytes) -> list[Scored]:
    """Formatted rows as `Scored` again, to be written under other thresholds or between kept rows: the printed
    scores read back print the same (six decimals survive the float round trip)."""
    rows: list[Scored] = []
    for rel, _, p_dog, pet, status, error in csv.reader(io.StringIO(data.decode("utf-8"), newline="")):
        rows.append((rel, float(p_dog), float(pet) if pet else None, None) if status == "ok" else (rel, None, None, error))
    return rows


def check_update_output(out: Path, resume: bool, overwrite: bool) -> None:
    """Before `check_output(out, resume, overwrite=True)`: an interrupted update is continued only with --resume
    and started over only with --overwrite, never dropped silently."""
    if progress_path(out).exists() and partial_path(out).exists() and not (resume or overwrite):
        raise CatdogError(
            f"an interrupted run left its progress in {progress_path(out)}; pass --update --resume to continue it "
            "or --update --overwrite to start the update over"
        )
