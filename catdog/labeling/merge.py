"""Merging the CSVs of one sharded labeling job into the CSV an unsharded run would have written.

Each shard CSV is already sorted by path, so the merge is a streaming k-way merge (`heapq.merge`): memory
holds one row per shard, whatever the row count. Everything is checked on the way, against each shard's
job record (`catdog.labeling.jobrecord`): same job (source, model, threshold, N, recursion), every shard 0..N-1
exactly once, the catdog header, sorted rows, no path in two shards, each path in the shard its hash
names, and each CSV's row count and sha256 as its run recorded them. The output is written to a temporary
file and renamed onto OUT only when every check passed, with its own record `<OUT>.job.json` (shard 0/1).
"""

from __future__ import annotations

import csv
import dataclasses
import heapq
import io
import os
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path


from catdog.errors import CatdogError
from catdog.fsutil import HashingReader, atomic_path
from catdog.labeling.jobrecord import JobRecord, file_sha256, job_record_path, read_job_record, write_job_record
from catdog.labeling.labels import COLUMNS, csv_writer, open_csv
from catdog.labeling.sources import shard_of

STATUS = COLUMNS.index("status")


@dataclass(frozen=True)
class MergeOptions:
    out: Path
    shards: tuple[Path, ...]  # the shard CSVs, in any order
    overwrite: bool = False


@dataclass(frozen=True)
class MergeSummary:
    out: Path
    source: str
    shards: int
    ok: int
    error: int

    @property
    def rows(self) -> int:
        return self.ok + self.error


@dataclass
class _Shard:
    csv: Path
    record: JobRecord
    rows: int = 0

    @property
    def label(self) -> str:
        k, n = self.record.shard
        return f"{self.csv} (shard {k}/{n})"


def _stream(shard: _Shard, index: int, raw: HashingReader) -> Iterator[tuple[str, int, list[str]]]:
    """(sort key, shard index, row) for each data row, checking the header, the fields and the order."""
    text = io.TextIOWrapper(io.BufferedReader(raw, 1 << 20), encoding="utf-8", errors="backslashreplace", newline="")
    reader = csv.reader(text)
    where = shard.csv
    try:
        header = next(reader, None)
        if header is None:
            raise CatdogError(f"{where} is empty: not a catdog labels CSV")
        if tuple(header) != COLUMNS:
            raise CatdogError(f"{where} is not a catdog labels CSV: its header is {','.join(header)[:80]!r}, expected {','.join(COLUMNS)!r}")
        last = None
        for row in reader:
            if len(row) != len(COLUMNS) or row[STATUS] not in ("ok", "error"):
                raise CatdogError(
                    f"{where}: line {reader.line_num} is not a labels row ({len(row)} fields): truncated or not a catdog labels CSV"
                )
            key = row[0]  # the path text: what the run sorted and sharded by
            if last is not None and key <= last:
                what = "repeats the path above it" if key == last else "is out of order"
                raise CatdogError(f"{where}: line {reader.line_num} {what} ({row[0]!r}): not a catdog labels CSV")
            last = key
            shard.rows += 1
            yield key, index, row
    except csv.Error as exc:
        raise CatdogError(f"{where}: line {reader.line_num}: {exc}: not a catdog labels CSV") from None


def _check_job(shards: list[_Shard]) -> int:
    """The shards' common N, after checking they are one job's shards 0..N-1, each once."""
    first = shards[0]
    for shard in shards[1:]:
        for name, value in shard.record.job().items():
            expected = first.record.job()[name]
            if value != expected:
                raise CatdogError(
                    f"{shard.csv} is from a different job than {first.csv}: {name} {value!r} vs {expected!r} "
                    f"(see {job_record_path(shard.csv).name} beside each)"
                )
    n = first.record.shard[1]
    by_index: dict[int, _Shard] = {}
    for shard in shards:
        k = shard.record.shard[0]
        if k in by_index:
            raise CatdogError(f"shard {k}/{n} given twice: {by_index[k].csv} and {shard.csv}")
        by_index[k] = shard
    missing = [k for k in range(n) if k not in by_index]
    if missing:
        names = ", ".join(f"{k}/{n}" for k in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise CatdogError(f"shard {names} of {first.record.source} missing: pass all {n} shard CSVs of the job")
    return n


def merge_labels(options: MergeOptions) -> MergeSummary:
    """Merge one job's shard CSVs into `options.out`, byte-identical to an unsharded run's CSV."""
    out = options.out
    if not options.shards:
        raise CatdogError("no shard CSVs given")
    if out.is_dir():
        raise CatdogError(f"{out} is a folder; give a CSV file path")
    if out.exists() and not options.overwrite:
        raise CatdogError(f"{out} already exists; pass --overwrite to replace it")
    seen: dict[str, Path] = {}
    for path in options.shards:
        if not path.is_file():
            raise CatdogError(f"shard CSV not found: {path}")
        real = os.path.realpath(path)
        if real in seen:
            raise CatdogError(f"{path} given twice" + (f" (as {seen[real]})" if str(seen[real]) != str(path) else ""))
        seen[real] = path
    if os.path.realpath(out) in seen:
        raise CatdogError(f"{out} is one of the shard CSVs; write the merged CSV to a new file")
    shards = [_Shard(path, read_job_record(path)) for path in options.shards]
    n = _check_job(shards)
    ok = error = 0
    with ExitStack() as stack:
        readers = [HashingReader(stack.enter_context(open(shard.csv, "rb"))) for shard in shards]
        merged = heapq.merge(*(_stream(shard, i, raw) for i, (shard, raw) in enumerate(zip(shards, readers))))
        tmp = stack.enter_context(atomic_path(out))
        with open_csv(tmp, "w") as fh:
            writer = csv_writer(fh)
            writer.writerow(COLUMNS)
            held = None  # written once the next row shows it is not in two shards
            for item in merged:
                if held is not None:
                    if item[0] == held[0]:
                        raise CatdogError(
                            f"path {item[2][0]!r} is in two shards: {shards[held[1]].label} and {shards[item[1]].label}"
                        )
                    ok, error = _write(writer, held, shards, n, ok, error)
                held = item
            if held is not None:
                ok, error = _write(writer, held, shards, n, ok, error)
        for shard, raw in zip(shards, readers):
            _check_content(shard, raw.sha256.hexdigest())
        # The merged CSV's own record, as for one run of shard 0/1, before the CSV appears (as a run does).
        merged_record = dataclasses.replace(shards[0].record, shard=(0, 1), rows=ok + error, csv_sha256=file_sha256(tmp))
        write_job_record(out, merged_record)
    return MergeSummary(out, shards[0].record.source, n, ok, error)


def _write(writer, item: tuple[str, int, list[str]], shards: list[_Shard], n: int, ok: int, error: int) -> tuple[int, int]:
    key, index, row = item
    k = shards[index].record.shard[0]
    belongs = shard_of(key, n)
    if belongs != k:
        raise CatdogError(f"{shards[index].csv}: path {row[0]!r} belongs to shard {belongs}/{n}, not {k}/{n}")
    writer.writerow(row)
    return (ok + 1, error) if row[STATUS] == "ok" else (ok, error + 1)


def _check_content(shard: _Shard, sha256: str) -> None:
    record, where = shard.record, job_record_path(shard.csv)
    if shard.rows != record.rows:
        raise CatdogError(
            f"{shard.csv} has {shard.rows} rows but its job record {where.name} says {record.rows}: truncated or changed since its run"
        )
    if sha256 != record.csv_sha256:
        raise CatdogError(f"{shard.csv} differs from the CSV its run wrote (sha256 in {where.name}): changed since its run")
