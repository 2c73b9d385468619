"""Merging the CSVs of one sharded labeling job into the CSV an unsharded run would have written.

Each shard CSV is already sorted by path, so the merge is a streaming k-way merge (`heapq.merge`): memory
holds one row per shard, whatever the row count. Everything is checked on the way, against each shard's
job record (`catdog.labeling.jobrecord`): same job (source and store, model, thresholds, N, recursion, links),
the same listing of the whole source (a file added, removed or renamed between two shard runs names the
shard), every shard 0..N-1 exactly once, the catdog header, every row as `report` checks it, sorted rows, no
path in two shards, each path in the shard its hash names, and each CSV's row count and sha256 as its run
recorded them. More shards than this process may open files are merged in rounds through temporary files.
The output is written to a temporary file and renamed onto OUT only when every check passed, with its own
record `<OUT>.job.json` (shard 0/1).
"""

from __future__ import annotations

import csv
import dataclasses
import heapq
import os
import resource
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from catdog.errors import CatdogError
from catdog.fsutil import atomic_path
from catdog.labeling.jobrecord import JobRecord, catdog_version, file_sha256, job_record_path, now_utc, read_job_record, write_job_record
from catdog.labeling.labels import COLUMNS, NEITHER, Decision, csv_writer, open_csv
from catdog.labeling.reading import LabelsReader, check_new_output
from catdog.labeling.sources import shard_of

_STATUS = COLUMNS.index("status")
RESERVED_FILES = 16  # descriptors kept free for the output, its record, temporary files and the libraries


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
    rounds: int = 1  # merge passes: more than one when the shards outnumber the files this process may open
    neither: int | None = None  # ok rows labeled neither (None: the job labeled only cats and dogs)

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


Item = tuple[str, int, list[str]]  # (sort key, shard index, the row's fields)


def _stream(shard: _Shard, index: int) -> Iterator[Item]:
    """The shard's rows, checked (see `LabelsReader`), each ok row's label the one its printed scores give at the
    record's thresholds; at the end, the row count and sha256 its record states."""
    record = shard.record
    decision = Decision(("cat", "dog"), record.threshold, record.pet_threshold if record.neither else None)
    with LabelsReader(shard.csv, "shard CSV") as reader:
        if reader.legacy:
            raise CatdogError(f"{shard.csv} was written by an older catdog (five columns, no pet_score): relabel it with this catdog")
        for path, label, p_dog, pet_score, status, error in reader.fields():
            if status == "ok" and decision.label(p_dog, pet_score) != label:
                raise CatdogError(
                    f"{shard.csv}: line {reader.line_num}: label {label!r} does not follow from p_dog {p_dog} and pet_score "
                    f"{pet_score or 'none'} at the thresholds in {job_record_path(shard.csv).name}: changed since its run"
                )
            shard.rows += 1
            yield path, index, [path, label, p_dog, pet_score, status, error]
        _check_content(shard, reader.sha256)


def _check_content(shard: _Shard, sha256: str) -> None:
    record, where = shard.record, job_record_path(shard.csv)
    if shard.rows != record.rows:
        raise CatdogError(
            f"{shard.csv} has {shard.rows} rows but its job record {where.name} says {record.rows}: truncated or changed since its run"
        )
    if sha256 != record.csv_sha256:
        raise CatdogError(f"{shard.csv} differs from the CSV its run wrote (sha256 in {where.name}): changed since its run")


def _in_its_shard(item: Item, shards: list[_Shard], n: int) -> Item:
    key, index, fields = item
    k = shards[index].record.shard[0]
    belongs = shard_of(key, n)
    if belongs != k:
        raise CatdogError(f"{shards[index].csv}: path {fields[0]!r} belongs to shard {belongs}/{n}, not {k}/{n}")
    return item


def _checked_merge(streams: Iterable[Iterator[Item]], shards: list[_Shard], n: int) -> Iterator[Item]:
    """The sorted union of sorted streams, refusing a path that comes from two shards (checked first, as the
    clearer message) or from a shard its hash does not name."""
    held: Item | None = None
    for item in heapq.merge(*streams):
        if held is not None:
            if item[0] == held[0]:
                raise CatdogError(f"path {item[2][0]!r} is in two shards: {shards[held[1]].label} and {shards[item[1]].label}")
            yield _in_its_shard(held, shards, n)
        held = item
    if held is not None:
        yield _in_its_shard(held, shards, n)


def _check_job(shards: list[_Shard]) -> int:
    """The shards' common N, after checking they are one job's shards 0..N-1, each once, of one listing."""
    first = shards[0]
    for shard in shards[1:]:
        for name, value in shard.record.job().items():
            expected = first.record.job()[name]
            if value != expected:
                raise CatdogError(
                    f"{shard.csv} is from a different job than {first.csv}: {name} {value!r} vs {expected!r} "
                    f"(see {job_record_path(shard.csv)} and {job_record_path(first.csv)})"
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
    # The listing most shards saw (ties: the lowest shard's) is the job's; the first shard that saw another is named.
    ordered = [by_index[k] for k in range(n)]
    counts = Counter(s.record.listing for s in ordered)
    common = max(ordered, key=lambda s: counts[s.record.listing])
    for shard in ordered:
        if shard.record.listing != common.record.listing:
            raise CatdogError(
                f"{shard.label} was labeled from a different listing of {first.record.source} than {common.label}: "
                "files were added, removed or renamed between the shard runs; relabel the shards made before the change"
            )
    return n


def open_files_budget() -> int:
    """How many more files this process may open: the soft RLIMIT_NOFILE is first raised to the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 16)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    try:
        in_use = len(os.listdir("/proc/self/fd"))
    except OSError:
        in_use = 32
    return (soft if soft != resource.RLIM_INFINITY else 1 << 16) - in_use - RESERVED_FILES


def _spill(items: Iterator[Item], path: Path) -> None:
    """A round's merged rows, each with its shard index, to a temporary file of this merge."""
    with open_csv(path, "w") as fh:
        writer = csv_writer(fh)
        for key, index, fields in items:
            writer.writerow((index, *fields))


def _unspill(path: Path) -> Iterator[Item]:
    with open_csv(path) as fh:
        for index, *fields in csv.reader(fh):
            yield fields[0], int(index), fields


def merge_labels(options: MergeOptions) -> MergeSummary:
    """Merge one job's shard CSVs into `options.out`, byte-identical to an unsharded run's CSV."""
    out = options.out
    if not options.shards:
        raise CatdogError("no shard CSVs given")
    check_new_output(out, options.overwrite, "a CSV")
    seen: dict[str, Path] = {}
    for path in options.shards:
        if path.is_dir():
            raise CatdogError(f"{path} is a folder, not a shard CSV")
        if not path.exists():
            raise CatdogError(f"shard CSV not found: {path}")
        real = os.path.realpath(path)
        if real in seen:
            raise CatdogError(f"{path} given twice" + (f" (as {seen[real]})" if str(seen[real]) != str(path) else ""))
        seen[real] = path
    if os.path.realpath(out) in seen:
        raise CatdogError(f"{out} is one of the shard CSVs; write the merged CSV to a new file")
    shards = [_Shard(path, read_job_record(path)) for path in options.shards]
    n = _check_job(shards)
    width = max(3, open_files_budget())  # at least two inputs and a round's output per pass
    ok = error = neither = 0
    rounds = 1
    with ExitStack() as stack:
        # Rounds: while the inputs outnumber the files we may hold open, merge groups of them into temporary files.
        inputs: list[Iterator[Item]] = [_stream(shard, i) for i, shard in enumerate(shards)]
        if len(inputs) > width:
            out.parent.mkdir(parents=True, exist_ok=True)
        while len(inputs) > width:
            rounds += 1
            merged_inputs = []
            for start in range(0, len(inputs), width - 1):
                group = inputs[start:start + width - 1]
                if len(group) == 1:
                    merged_inputs.append(group[0])
                    continue
                fd, name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".merge.tmp", dir=out.parent)
                os.close(fd)
                stack.callback(os.unlink, name)
                _spill(_checked_merge(group, shards, n), Path(name))
                merged_inputs.append(_unspill(Path(name)))
            inputs = merged_inputs
        tmp = stack.enter_context(atomic_path(out))
        with open_csv(tmp, "w") as fh:
            writer = csv_writer(fh)
            writer.writerow(COLUMNS)
            for _, _, fields in _checked_merge(inputs, shards, n):
                writer.writerow(fields)
                if fields[_STATUS] == "ok":
                    ok += 1
                    neither += fields[1] == NEITHER
                else:
                    error += 1
        # The merged CSV's own record, as for one run of shard 0/1, before the CSV appears (as a run does).
        merged_record = dataclasses.replace(
            shards[0].record, shard=(0, 1), rows=ok + error, csv_sha256=file_sha256(tmp), written=now_utc(),
            catdog_version=catdog_version(),
        )
        write_job_record(out, merged_record)
    return MergeSummary(out, shards[0].record.source, n, ok, error, rounds, neither if shards[0].record.neither else None)
