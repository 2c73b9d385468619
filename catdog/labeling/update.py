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
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from catdog.errors import CatdogError
from catdog.fsutil import atomic_path
from catdog.labeling.engines import Block
from catdog.labeling.jobrecord import file_sha256
from catdog.labeling.labels import COLUMNS, Scored, open_csv, partial_path, progress_path
from catdog.labeling.sources import Listing, LocalSource, Source, path_from_text

FILES_VERSION = 1
_RECORD = np.dtype("<i8")
_CHUNK = 1 << 16  # sidecar records read or written at a time
KEPT_BATCH = 4096  # kept rows handed to the writer at a time


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
    sizes, stamps = array("q"), array("q")
    root, problems, join, stat = source.root, listing.problems, os.path.join, os.stat
    for rel in listing.paths:
        st = None
        if rel not in problems:
            try:
                st = stat(join(root, path_from_text(rel)))
            except OSError:
                pass
        sizes.append(-1 if st is None else st.st_size)
        stamps.append(-1 if st is None else st.st_mtime_ns)
    return replace(listing, sizes=sizes, stamps=stamps)


def identity_digest(listing: Listing) -> str:
    """A digest of the files' identities (part of the resume key: a file changed since an interrupted run means
    its rows may be stale)."""
    digest = hashlib.blake2b(digest_size=16)
    for values in (listing.sizes, listing.stamps):
        digest.update(np.frombuffer(values, dtype=np.int64).astype(_RECORD).tobytes() if values is not None else b"-")
    return digest.hexdigest()


# --- the sidecar -------------------------------------------------------------------------------------------------

def write_files(out: Path, csv_file: Path, key: dict, listing: Listing) -> None:
    """Write `<out>.files` atomically for the finished CSV at `csv_file` (the partial about to become `out`)."""
    assert listing.sizes is not None and listing.stamps is not None
    header = {"version": FILES_VERSION, "key": key, "rows": len(listing), "csv_sha256": file_sha256(csv_file)}
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


OldRow = tuple[str, str, str, str, int, int]  # path, p_dog, pet_score, status, size, stamp


def _old_rows(out: Path, rows: int) -> Iterator[OldRow]:
    """The rows of the CSV `out` with their sidecar identities, in order (checked: six columns, paths increasing)."""
    with open_csv(out) as fh, open(files_path(out), "rb") as side:
        side.readline(1 << 20)
        reader = csv.reader(fh)
        if tuple(next(reader, ())) != COLUMNS:
            raise _Stale(f"{out} has other columns than {','.join(COLUMNS)} (written by another catdog version)")
        previous, seen = None, 0
        while True:
            records = np.frombuffer(side.read(_CHUNK * 16), dtype=_RECORD).reshape(-1, 2).tolist()
            if not records:
                break
            for size, stamp in records:
                row = next(reader, None)
                if row is None or len(row) != len(COLUMNS) or (previous is not None and row[0] <= previous):
                    raise _Stale(f"{out} does not match {files_path(out).name}")
                previous = row[0]
                seen += 1
                yield row[0], row[2], row[3], row[4], size, stamp
        if seen != rows or next(reader, None) is not None:
            raise _Stale(f"{out} does not match {files_path(out).name}")


class _Stale(Exception):
    """The old CSV cannot be updated; the message says why."""


# --- the plan: what to keep, label and drop ------------------------------------------------------------------------

@dataclass(frozen=True)
class Plan:
    to_label: Listing  # the files to decode, a sorted subsequence of the listing
    kept: int
    dropped: int
    old: Path | None  # the CSV whose rows are kept (None: every file is labeled)
    old_sha256: str | None  # its sha256 (part of the resume key)
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
    everything = Plan(listing, 0, 0, None, None, None)
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
        return _join(out, header["rows"], listing, sha)
    except _Stale as exc:
        return replace(everything, note=f"relabeling every file: {exc}")


def _join(out: Path, rows: int, listing: Listing, sha: str) -> Plan:
    assert listing.sizes is not None and listing.stamps is not None
    paths, sizes, stamps = listing.paths, listing.sizes, listing.stamps
    to_label: list[str] = []
    kept = dropped = 0
    old = _old_rows(out, rows)
    current = next(old, None)
    for i, rel in enumerate(paths):
        while current is not None and current[0] < rel:
            dropped += 1
            current = next(old, None)
        if current is not None and current[0] == rel:
            _, _, _, status, size, stamp = current
            if status == "ok" and size == sizes[i] and stamp == stamps[i] and size >= 0 and stamp != -1:
                kept += 1
            else:
                to_label.append(rel)
            current = next(old, None)
        else:
            to_label.append(rel)
    while current is not None:
        dropped += 1
        current = next(old, None)
    return Plan(listing.only(to_label), kept, dropped, out if kept else None, sha, None)


# --- the rows, in order: kept ones from the old CSV, labeled ones from the engine -----------------------------------

def _kept_rows(old: Path) -> Iterator[tuple[str, str, str]]:
    """The ok rows of the old CSV as (path, p_dog, pet_score) text, in order."""
    with open_csv(old) as fh:
        reader = csv.reader(fh)
        next(reader)
        for row in reader:
            if row[4] == "ok":
                yield row[0], row[2], row[3]


def merged(plan: Plan, paths: list[str], to_label: list[str], scored: Iterable[list[Scored] | Block], batch_size: int) -> Iterator[list[Scored]]:
    """Batches of rows for every path of `paths` in order: a kept row (its printed scores, relabeled by the writer
    under this run's thresholds) or the engine's row for each path of `to_label` (a sorted subsequence of `paths`,
    scored in that order by `scored`)."""
    engine = iter(scored)
    pending: deque[Scored] = deque()
    kept = _kept_rows(plan.old) if plan.old is not None else iter(())
    try:
        yield from _merge(plan, paths, to_label, engine, pending, kept, batch_size)
    finally:
        if hasattr(kept, "close"):
            kept.close()


def _merge(plan, paths, to_label, engine, pending, kept, batch_size) -> Iterator[list[Scored]]:
    batch: list[Scored] = []
    fresh = j = 0
    for rel in paths:
        if j < len(to_label) and to_label[j] == rel:
            j += 1
            while not pending:
                more = next(engine, None)
                if more is None:
                    raise CatdogError(f"internal error: the engine stopped before {rel!r}")
                pending.extend(block_rows(more) if isinstance(more, Block) else more)
            row = pending.popleft()
            if row[0] != rel:
                raise CatdogError(f"internal error: the engine returned {row[0]!r} where {rel!r} was expected")
            batch.append(row)
            fresh += 1
        else:
            for old_rel, p_dog, pet in kept:
                if old_rel == rel:
                    break
            else:
                raise CatdogError(f"internal error: no kept row for {rel!r} in {plan.old}")
            batch.append((rel, float(p_dog), float(pet) if pet else None, None))
        if fresh >= batch_size or len(batch) >= KEPT_BATCH:
            yield batch
            batch, fresh = [], 0
    if batch:
        yield batch


def block_rows(block: Block) -> list[Scored]:
    """The rows of a block an engine's workers formatted, as `Scored` again, to interleave with kept rows: the
    printed scores read back give the same printed scores (six decimals survive the float round trip)."""
    rows: list[Scored] = []
    for rel, _, p_dog, pet, status, error in csv.reader(io.StringIO(block.data.decode("utf-8"), newline="")):
        rows.append((rel, float(p_dog), float(pet) if pet else None, None) if status == "ok" else (rel, None, None, error))
    if len(rows) != block.rows:
        raise CatdogError(f"internal error: a block of {block.rows} rows holds {len(rows)}")
    return rows


def check_update_output(out: Path, resume: bool, overwrite: bool) -> None:
    """Before `check_output(out, resume, overwrite=True)`: an interrupted update is continued only with --resume
    and started over only with --overwrite, never dropped silently."""
    if progress_path(out).exists() and partial_path(out).exists() and not (resume or overwrite):
        raise CatdogError(
            f"an interrupted run left its progress in {progress_path(out)}; pass --update --resume to continue it "
            "or --update --overwrite to start the update over"
        )
