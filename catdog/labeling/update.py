"""`predict-folder --update`: label only what changed since the CSV at --out was written.

Every run writes, beside its CSV, `<csv>.files`: one JSON line (what must match for a row to be kept: source,
endpoint, model digest, recursion, links, shard, pixel limit; and the CSV's row count and sha256), then one 16-byte
record per CSV row, in the CSV's order: the file's size and stamp (mtime in nanoseconds for a folder, a 64-bit hash
of the ETag for S3) as little-endian int64, -1 where unknown. Ten million files cost 160 MB beside a CSV of about
600 MB; paths are not repeated, the CSV's own rows give them.

An update lists the source with each file's identity, then walks the old CSV (with its sidecar) and the new listing
side by side, both sorted by path text: a streaming merge-join, no dict of every file. An ok row whose file has the
same size and stamp is kept, its label recomputed from its printed scores under this run's thresholds (exactly what
a fresh run prints, see `catdog.labeling.labels.Decision`); error rows and new or changed files are labeled again;
rows of removed files are dropped. The rows go through the same writer as a fresh run's, so the CSV is byte for byte
the one a fresh run would write, and an interrupted update leaves the old CSV untouched.
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


OldRow = tuple[str, str, int, int, int, int]  # path, label if ok (None for error rows), size, stamp, start, end


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


def _old_rows(out: Path, rows: int) -> Iterator[OldRow]:
    """The rows of the CSV `out` with their sidecar identities and byte spans, in order (checked: six columns,
    paths increasing, as many rows as the sidecar)."""
    stale = _Stale(f"{out} does not match {files_path(out).name}")
    with open(out, "rb") as fh, open(files_path(out), "rb") as side:
        side.readline(1 << 20)
        if fh.readline() != HEADER:
            raise _Stale(f"{out} has other columns than {','.join(COLUMNS)} (written by another catdog version)")
        records = iter(())
        previous, seen, start = "", 0, fh.tell()
        for row, start in _raw_rows(fh):
            if b'"' not in row and row.endswith(b"\r\n"):  # nearly every row: no quoted field
                fields = row[:-2].decode("utf-8").split(",")
            else:
                fields = _fields(row)
            record = next(records, None)
            if record is None:
                records = iter(np.frombuffer(side.read(_CHUNK * 16), dtype=_RECORD).reshape(-1, 2).tolist())
                record = next(records, None)
            if record is None or len(fields) != 6 or fields[0] <= previous and seen:
                raise stale
            previous = fields[0]
            seen += 1
            yield previous, fields[1] if fields[4] == "ok" else None, record[0], record[1], start, start + len(row)
        if seen != rows or next(records, None) is not None or side.read(1):
            raise stale


class _Stale(Exception):
    """The old CSV cannot be updated; the message says why."""


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
    paths, sizes, stamps = listing.paths, listing.sizes, listing.stamps
    to_label: list[str] = []
    steps: list[Step] = []
    run: list[str] = []
    segment: list = []  # the kept rows being gathered: [start, end, rows, neither, first, last]
    kept = dropped = 0

    def close_segment() -> None:
        if segment:
            steps.append(Kept(*segment))
            segment.clear()

    def label(rel: str) -> None:
        close_segment()
        to_label.append(rel)
        run.append(rel)

    def keep(rel: str, neither: bool, start: int, end: int) -> None:
        nonlocal run
        if run:
            steps.append(run)
            run = []
        if segment and (segment[1] != start or segment[2] >= KEPT_BATCH):
            close_segment()
        if segment:
            segment[1], segment[2], segment[3], segment[5] = end, segment[2] + 1, segment[3] + neither, rel
        else:
            segment.extend([start, end, 1, int(neither), rel, rel])

    old = _old_rows(out, header["rows"])
    current = next(old, None)
    for i, rel in enumerate(paths):
        while current is not None and current[0] < rel:
            dropped += 1
            current = next(old, None)
        if current is not None and current[0] == rel:
            _, ok_label, size, stamp, start, end = current
            if ok_label is not None and size == sizes[i] and stamp == stamps[i] and size >= 0 and stamp != -1:
                kept += 1
                if segment and not run and segment[1] == start and segment[2] < KEPT_BATCH:  # the common case, inline
                    segment[1], segment[2], segment[5] = end, segment[2] + 1, rel
                    segment[3] += ok_label == NEITHER
                else:
                    keep(rel, ok_label == NEITHER, start, end)
            else:
                label(rel)
            current = next(old, None)
        else:
            label(rel)
    while current is not None:
        dropped += 1
        current = next(old, None)
    close_segment()
    if run:
        steps.append(run)
    decision = header.get("decision") if isinstance(header.get("decision"), dict) else None
    return Plan(listing.only(to_label), steps, kept, dropped, out if kept else None, sha, decision, None)


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
