"""`catdog merge-labels` on the shards of real `predict-folder --shard K/3` runs (issue 12): the merge equals
the unsharded CSV byte for byte, and every way a set of shards can be wrong is refused with a one-line error."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
import re
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest

import catdog as catdog_module

from catdog.labeling.jobrecord import job_record_path, read_job_record, write_job_record
from catdog.labeling.labels import COLUMNS, csv_writer, open_csv
from catdog.labeling.sources import shard_of
from conftest import catdog, run

N = 3
# Names the CSV must quote, escape or sort carefully: "x\xff.jpg" is the undecodable byte 0xff, written to
# the CSV as the text "x\xff.jpg" (and "x\.jpg" as "x\\.jpg"); the CSV is sorted by that text.
ODD_NAMES = ['comma, "quote".jpg', "crlf\r\nname.jpg", "ünïcødé 猫.jpg", "x\\.jpg", "xé.jpg", "x🐱.jpg", "NA"]
UNDECODABLE = os.fsdecode(b"x\xff.jpg")


@pytest.fixture(scope="module")
def photos(real_photos, tmp_path_factory) -> Path:
    """The session's real photos and broken files, plus files with odd names (copies of one photo)."""
    root = tmp_path_factory.mktemp("merge") / "photos"
    shutil.copytree(real_photos, root)
    sample = sorted((root / "train" / "dogs").iterdir())[0].read_bytes()
    (root / "odd").mkdir()
    for name in ODD_NAMES:
        (root / "odd" / name).write_bytes(sample)
    (root / "odd" / UNDECODABLE).write_bytes(sample)
    return root


@pytest.fixture(scope="module")
def job(photos, tiny_bundle, tmp_path_factory) -> dict:
    """One unsharded run and the N shard runs of the same folder and model, outside the folder."""
    runs = tmp_path_factory.mktemp("runs")
    catdog("predict-folder", photos, "--model", tiny_bundle, "--out", runs / "single.csv")
    shards = []
    for k in range(N):
        shards.append(runs / f"labels-{k}.csv")
        catdog("predict-folder", photos, "--model", tiny_bundle, "--out", shards[-1], "--shard", f"{k}/{N}")
    return {"single": runs / "single.csv", "shards": shards}


def copy_shards(job: dict, dest: Path) -> list[Path]:
    """The job's shard CSVs and their records, copied to `dest` so a test may change them."""
    dest.mkdir(parents=True, exist_ok=True)
    copies = []
    for path in job["shards"]:
        shutil.copy2(path, dest / path.name)
        shutil.copy2(job_record_path(path), job_record_path(dest / path.name))
        copies.append(dest / path.name)
    return copies


def read_rows(path: Path) -> list[list[str]]:
    with open_csv(path) as fh:
        return list(csv.reader(fh))[1:]


def rewrite(path: Path, rows: list[list[str]]) -> None:
    """Write `rows` (sorted as a run sorts them) as a catdog CSV and update its job record to match, as if
    a run had written them: only the checks on the rows themselves can catch what is wrong."""
    with open_csv(path, "w") as fh:
        writer = csv_writer(fh)
        writer.writerow(COLUMNS)
        writer.writerows(sorted(rows, key=lambda row: row[0]))
    record = read_job_record(path)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    write_job_record(path, dataclasses.replace(record, rows=len(rows), csv_sha256=sha))


def merge(out: Path, *shards: Path, check: bool = False, overwrite: bool = False):
    return catdog("merge-labels", out, *shards, *(["--overwrite"] if overwrite else []), check=check)


def assert_refused(result, *needles: str) -> str:
    """Exit status 1, one `error:` line holding every needle, no traceback."""
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_shards_gathered_as_symlinks_merge_with_the_records_beside_their_targets(job, tmp_path):
    """Shard CSVs linked into one folder (each record stays beside its CSV): the links' targets' records are
    read, and the merge equals the unsharded CSV."""
    gathered = tmp_path / "gathered"
    gathered.mkdir()
    links = []
    for k, path in enumerate(job["shards"]):
        link = gathered / f"part-{k}.csv"
        link.symlink_to(path)
        links.append(link)
    out = tmp_path / "merged.csv"
    merge(out, *links, check=True)
    assert out.read_bytes() == job["single"].read_bytes()


def test_merged_shards_equal_the_unsharded_csv_byte_for_byte(job, photos, tmp_path):
    shards = job["shards"]
    for k, path in enumerate(shards):
        record = read_job_record(path)
        rows = read_rows(path)
        assert record.shard == (k, N) and record.rows == len(rows) > 0, "each shard gets some files"
        assert record.source == str(photos) and record.model.startswith("sha256:")
    out = tmp_path / "merged" / "labels.csv"
    result = merge(out, *reversed(shards), check=True)
    assert out.read_bytes() == job["single"].read_bytes()
    rows = read_rows(out)
    errors = sum(row[4] == "error" for row in rows)
    neither = sum(row[1] == "neither" for row in rows)
    assert read_job_record(out).neither, "the job could say neither, so the summary counts those rows"
    assert (f"merged {N} shards of {photos}: {len(rows)} rows ({len(rows) - errors} ok, {errors} error); "
            f"{neither} of the ok neither a cat nor a dog -> {out}") in result.stderr
    assert errors >= 5 and len(rows) == sum(1 for p in photos.rglob("*") if p.is_file())
    assert "odd/x\\xff.jpg" in {row[0] for row in rows}
    frame = pd.read_csv(out, keep_default_na=False, dtype=str)
    assert list(frame.columns) == list(COLUMNS) and "odd/NA" in set(frame["path"])
    assert sorted(p.name for p in out.parent.iterdir()) == ["labels.csv", "labels.csv.job.json"], "no temporary files left"
    record = read_job_record(out)
    assert (record.shard, record.rows) == ((0, 1), len(rows))
    assert record.csv_sha256 == hashlib.sha256(out.read_bytes()).hexdigest()
    assert dataclasses.replace(record, shard=(0, N)).job() == read_job_record(shards[0]).job()


def test_merge_refuses_a_missing_shard(job, tmp_path):
    shards = copy_shards(job, tmp_path)
    result = merge(tmp_path / "out.csv", shards[0], shards[2])
    assert_refused(result, f"shard 1/{N}", "missing")
    assert not (tmp_path / "out.csv").exists()


def test_merge_refuses_a_shard_given_twice(job, tmp_path):
    shards = copy_shards(job, tmp_path)
    assert_refused(merge(tmp_path / "out.csv", *shards, shards[1]), f"{shards[1]} given twice")
    copy = tmp_path / "copy-of-1.csv"
    shutil.copy2(shards[1], copy)
    shutil.copy2(job_record_path(shards[1]), job_record_path(copy))
    assert_refused(merge(tmp_path / "out.csv", *shards, copy), f"shard 1/{N} given twice", str(shards[1]), str(copy))
    assert not (tmp_path / "out.csv").exists()


@pytest.mark.parametrize("differs", ["source", "model", "threshold", "shards", "recursive", "follow_links"])
def test_merge_refuses_shards_of_different_jobs(differs, job, photos, tiny_bundle, tmp_path):
    """Shard 1 replaced by a real run of another job: another folder (same files), model, threshold, N, recursion
    or link following."""
    shards = copy_shards(job, tmp_path / "job")
    folder, model, extra = photos, tiny_bundle, []
    if differs == "source":
        folder = tmp_path / "same-photos-elsewhere"
        shutil.copytree(photos, folder)
    elif differs == "model":
        model = tmp_path / "other-model"
        shutil.copytree(tiny_bundle, model)
        meta = json.loads((model / "meta.json").read_text())
        (model / "meta.json").write_text(json.dumps({**meta, "model": "small_cnn, retrained"}))
    elif differs == "threshold":
        extra = ["--threshold", "0.3"]
    elif differs == "recursive":
        extra = ["--no-recursive"]
    elif differs == "follow_links":
        extra = ["--no-follow-links"]
    foreign = tmp_path / "foreign.csv"
    shard = f"1/{N + 1}" if differs == "shards" else f"1/{N}"
    catdog("predict-folder", folder, "--model", model, "--out", foreign, "--shard", shard, *extra)
    result = merge(tmp_path / "out.csv", shards[0], foreign, shards[2])
    assert_refused(
        result, f"{foreign} is from a different job than {shards[0]}: {differs} ",
        f"(see {job_record_path(foreign)} and {job_record_path(shards[0])})",
    )
    assert not (tmp_path / "out.csv").exists()


def test_merge_refuses_a_path_in_two_shards(job, tmp_path):
    shards = copy_shards(job, tmp_path)
    stray = read_rows(shards[0])[0]
    rewrite(shards[2], read_rows(shards[2]) + [stray])
    result = merge(tmp_path / "out.csv", *shards)
    assert_refused(result, f"path {stray[0]!r} is in two shards", f"{shards[0]} (shard 0/{N})", f"{shards[2]} (shard 2/{N})")
    assert not (tmp_path / "out.csv").exists()


def test_merge_refuses_a_row_in_the_wrong_shard_for_its_hash(job, tmp_path):
    shards = copy_shards(job, tmp_path)
    rows = read_rows(shards[0])
    moved, rows = rows[-1], rows[:-1]
    assert shard_of(moved[0], N) == 0
    rewrite(shards[0], rows)
    rewrite(shards[1], read_rows(shards[1]) + [moved])
    result = merge(tmp_path / "out.csv", *shards)
    assert_refused(result, f"{shards[1]}: path {moved[0]!r} belongs to shard 0/{N}, not 1/{N}")
    assert not (tmp_path / "out.csv").exists()


@pytest.mark.parametrize("cut", ["mid_row", "whole_rows"])
def test_merge_refuses_a_truncated_csv(cut, job, tmp_path):
    shards = copy_shards(job, tmp_path)
    data = shards[1].read_bytes()
    if cut == "mid_row":
        shards[1].write_bytes(data[: len(data) - 12])
    else:  # as a copy interrupted between two rows would leave it
        lines = data.split(b"\r\n")
        shards[1].write_bytes(b"\r\n".join(lines[:2]) + b"\r\n")
    result = merge(tmp_path / "out.csv", *shards)
    assert_refused(result, str(shards[1]), "truncated")
    assert not (tmp_path / "out.csv").exists()


@pytest.mark.parametrize("content", ["other_header", "empty", "resaved_by_pandas", "binary"])
def test_merge_refuses_a_file_that_is_not_a_catdog_csv(content, job, tmp_path):
    shards = copy_shards(job, tmp_path)
    target = shards[2]
    if content == "other_header":
        target.write_text("path,label\r\nodd/NA,cat\r\n", encoding="utf-8")
        needle = "line 1: not a catdog labels CSV: the header is 'path,label'"
    elif content == "empty":
        target.write_bytes(b"")
        needle = "is empty: not a catdog labels CSV"
    elif content == "resaved_by_pandas":  # same rows and header, "\n" line ends: not what the run wrote
        pd.read_csv(target, keep_default_na=False, dtype=str).to_csv(target, index=False)
        needle = "differs from the CSV its run wrote"
    else:
        target.write_bytes(bytes(range(256)) * 4)
        needle = "not a catdog labels CSV"
    result = merge(tmp_path / "out.csv", *shards)
    assert_refused(result, str(target), needle)
    assert not (tmp_path / "out.csv").exists()


@pytest.mark.parametrize("record", ["missing", "not_json", "wrong_type"])
def test_merge_refuses_a_shard_without_a_valid_job_record(record, job, tmp_path):
    shards = copy_shards(job, tmp_path)
    path = job_record_path(shards[1])
    if record == "missing":
        path.unlink()
        needle = f"{path} not found"
    elif record == "not_json":
        path.write_text("{not json")
        needle = f"invalid job record {path}"
    else:
        path.write_text(json.dumps({**json.loads(path.read_text()), "rows": "12"}))
        needle = f"invalid job record {path}: rows must be a count"
    assert_refused(merge(tmp_path / "out.csv", *shards), needle)


def test_merge_never_replaces_out_without_overwrite(job, tmp_path):
    shards = copy_shards(job, tmp_path / "shards")
    out = tmp_path / "labels.csv"
    out.write_text("precious\n")
    assert_refused(merge(out, *shards), f"{out} already exists; pass --overwrite to replace it")
    assert out.read_text() == "precious\n"
    shards[0].write_bytes(shards[0].read_bytes()[:-3])  # a failing merge leaves OUT as it was, and no temp file
    assert_refused(merge(out, *shards, overwrite=True), str(shards[0]))
    assert out.read_text() == "precious\n" and sorted(p.name for p in tmp_path.iterdir()) == ["labels.csv", "shards"]
    assert_refused(merge(shards[1], *shards, overwrite=True), f"{shards[1]} is one of the shard CSVs")
    merge(out, *copy_shards(job, tmp_path / "intact"), overwrite=True, check=True)
    assert out.read_bytes() == job["single"].read_bytes()


def write_big_job(root: Path, rows: int, n: int = N, source: str = "/data") -> list[Path]:
    """n shard CSVs of a made-up job with `rows` rows in all, each in the shard its path hashes to, and
    records that match them."""
    from catdog.labeling.jobrecord import JobRecord

    N = n
    root.mkdir(parents=True)
    shards = [root / f"labels-{k}.csv" for k in range(N)]
    handles = [open_csv(path, "w") for path in shards]
    writers = [csv_writer(fh) for fh in handles]
    for writer in writers:
        writer.writerow(COLUMNS)
    counts = [0] * N
    for rel in sorted(f"folder{i % 97:02d}/photo {i:08d}.jpg" for i in range(rows)):
        k = shard_of(rel, N)
        fields = {"path": rel, "label": "dog", "p_dog": "0.734512", "pet_score": "0.912345", "status": "ok", "error": ""}
        writers[k].writerow([fields[c] for c in COLUMNS])
        counts[k] += 1
    for fh in handles:
        fh.close()
    for k, path in enumerate(shards):
        write_job_record(path, JobRecord(
            source=source, model="sha256:" + "0" * 64, threshold=0.5, shard=(k, N), recursive=True, rows=counts[k],
            csv_sha256=hashlib.sha256(path.read_bytes()).hexdigest(), listing="0" * 32,
        ))
    return shards


def merge_peak_rss_mib(out: Path, shards: list[Path]) -> float:
    """Peak RSS (VmHWM: ru_maxrss would count the forking pytest's) of a fresh process that merges `shards`."""
    script = (
        "import re, sys; from pathlib import Path; from catdog.labeling.merge import MergeOptions, merge_labels; "
        "merge_labels(MergeOptions(Path(sys.argv[1]), tuple(Path(p) for p in sys.argv[2:]))); "
        "print(re.search(r'VmHWM:\\s+(\\d+) kB', Path('/proc/self/status').read_text()).group(1))"
    )
    result = run([sys.executable, "-c", script, str(out), *map(str, shards)], timeout=300)
    return int(result.stdout.split()[-1]) / 1024


def test_merge_streams_rows_instead_of_holding_them(tmp_path):
    """300,000 rows (134 MiB when held as rows) cost no more memory to merge than 3,000."""
    small = merge_peak_rss_mib(tmp_path / "small.csv", write_big_job(tmp_path / "small", 3_000))
    big_shards = write_big_job(tmp_path / "big", 300_000)
    big = merge_peak_rss_mib(tmp_path / "big.csv", big_shards)
    assert big - small < 10, f"peak RSS {small:.0f} MiB for 3,000 rows, {big:.0f} MiB for 300,000"
    with open_csv(tmp_path / "big.csv") as fh:
        paths = [row[0] for row in csv.reader(fh)][1:]
    assert len(paths) == 300_000 and paths == sorted(paths)


# --- the job record of every run (issue 21.2) and hardening (issue 20) -------------------------------------


def test_every_run_writes_a_job_record_saying_what_made_the_csv(job, photos, tiny_bundle):
    single = job["single"]
    raw = json.loads(job_record_path(single).read_text())
    record = read_job_record(single)
    assert raw["version"] == 2 and record.shard == (0, 1) and record.source == str(photos) and record.endpoint is None
    assert record.rows == len(read_rows(single)) and record.csv_sha256 == hashlib.sha256(single.read_bytes()).hexdigest()
    meta = json.loads((tiny_bundle / "meta.json").read_text())
    assert record.threshold == meta["threshold"] and record.pet_threshold == meta.get("pet_threshold")
    assert record.neither is True and (record.recursive, record.follow_links) == (True, True)
    assert record.model.startswith("sha256:") and len(record.listing) == 32
    assert record.catdog_version == catdog_module.__version__ and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", record.written)
    # Every shard saw the same listing of the whole folder: the unsharded run's.
    assert {read_job_record(path).listing for path in job["shards"]} == {record.listing}


def test_merge_refuses_a_record_of_an_older_catdog_saying_to_relabel(job, tmp_path):
    shards = copy_shards(job, tmp_path)
    path = job_record_path(shards[1])
    old = {k: v for k, v in json.loads(path.read_text()).items() if k in (
        "source", "model", "threshold", "shard", "recursive", "follow_links", "rows", "csv_sha256")}
    path.write_text(json.dumps({**old, "version": 1}))
    assert_refused(merge(tmp_path / "out.csv", *shards), f"{path} was written by an older catdog", f"relabel {shards[1]}")


def test_merge_refuses_shards_that_listed_different_files_naming_the_shard(tiny_bundle, real_photos, tmp_path):
    """Shard 0 labeled, then a file that hashes to shard 0 added, then shards 1 and 2: the new file is in no
    shard, and a merge that said nothing would drop it."""
    folder = tmp_path / "photos"
    shutil.copytree(real_photos / "train" / "cats", folder)
    out = tmp_path / "runs"
    catdog("predict-folder", folder, "--model", tiny_bundle, "--out", out / "labels-0.csv", "--shard", f"0/{N}")
    name = next(f"new{i}.jpg" for i in range(1000) if shard_of(f"new{i}.jpg", N) == 0)
    shutil.copy2(sorted(folder.iterdir())[0], folder / name)
    for k in (1, 2):
        catdog("predict-folder", folder, "--model", tiny_bundle, "--out", out / f"labels-{k}.csv", "--shard", f"{k}/{N}")
    shards = [out / f"labels-{k}.csv" for k in range(N)]
    assert_refused(
        merge(tmp_path / "merged.csv", *shards),
        f"{shards[0]} (shard 0/{N}) was labeled from a different listing of {folder} than {shards[1]} (shard 1/{N})",
        "added, removed or renamed",
    )
    assert not (tmp_path / "merged.csv").exists()


NESTED = "[" * 60_000  # within the size limit (the 100,000 of the issue is refused for its size)


@pytest.mark.parametrize("record", ["nested", "fifo", "huge"])
def test_merge_refuses_a_broken_record_in_one_line_without_hanging(record, job, tmp_path):
    shards = copy_shards(job, tmp_path)
    path = job_record_path(shards[1])
    path.unlink()
    if record == "nested":
        path.write_text(NESTED)
        needle = "nested too deeply"
    elif record == "fifo":
        os.mkfifo(path)
        needle = "not a regular file"
    else:
        path.write_text(" " * 10_000_000 + "{}")
        needle = "larger than"
    result = catdog("merge-labels", tmp_path / "out.csv", *shards, check=False, timeout=60)
    assert_refused(result, f"invalid job record {path}: {needle}")


def peak_rss_mib(script: str, *args: str) -> tuple[float, str]:
    """Run `script` in a fresh interpreter; its peak RSS (VmHWM) in MiB and what it printed."""
    script += "\nimport re; from pathlib import Path as _P; print(re.search(r'VmHWM:\\s+(\\d+) kB', _P('/proc/self/status').read_text()).group(1))"
    result = run([sys.executable, "-c", script, *args], timeout=120)
    *printed, peak = result.stdout.split("\n")[:-1]
    return int(peak) / 1024, "\n".join(printed)


READ_ONE = """
import sys
from pathlib import Path
from catdog.errors import CatdogError
from catdog.labeling.merge import MergeOptions, merge_labels
try:
    merge_labels(MergeOptions(Path(sys.argv[1]), tuple(Path(p) for p in sys.argv[2:])))
except CatdogError as exc:
    print(exc)
"""


def test_merge_of_a_csv_without_line_breaks_stays_in_bounded_memory(tmp_path):
    """A shard CSV of 40 MB on one line (and /dev/zero) is refused as soon as its first row is too long."""
    small = write_big_job(tmp_path / "small", 300)
    baseline, _ = peak_rss_mib(READ_ONE, str(tmp_path / "small.csv"), *map(str, small))
    shards = write_big_job(tmp_path / "job", 300)
    with open(shards[1], "ab") as fh:
        fh.write(b"x" * 40_000_000)
    record = read_job_record(shards[1])
    write_job_record(shards[1], dataclasses.replace(record, csv_sha256=hashlib.sha256(shards[1].read_bytes()).hexdigest()))
    peak, said = peak_rss_mib(READ_ONE, str(tmp_path / "out.csv"), *map(str, shards))
    assert f"{shards[1]}: line " in said and "longer than" in said, said
    assert peak - baseline < 20, f"peak RSS {baseline:.0f} MiB for 300 rows, {peak:.0f} MiB for a 40 MB line"
    zero = tmp_path / "zero" / "labels-1.csv"
    zero.parent.mkdir()
    zero.symlink_to("/dev/zero")
    shutil.copy2(job_record_path(shards[1]), job_record_path(zero))
    result = catdog("merge-labels", tmp_path / "z.csv", shards[0], zero, shards[2], check=False, timeout=60)
    assert_refused(result, str(zero))


MERGE_UNDER_LIMIT = """
import resource, sys
from pathlib import Path
soft, hard = int(sys.argv[1]), int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
from catdog.labeling.merge import MergeOptions, merge_labels
summary = merge_labels(MergeOptions(Path(sys.argv[3]), tuple(Path(p) for p in sys.argv[4:])))
print(summary.rounds, summary.rows, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
"""


@pytest.mark.parametrize("hard", [40, 4096])
def test_merge_of_more_shards_than_open_files_allowed(hard, tmp_path):
    """60 shards under a soft limit of 40 open files: the soft limit is raised to the hard one when it can be;
    when it cannot (hard limit 40 too), the merge goes in rounds. The CSV is the same either way."""
    shards = write_big_job(tmp_path / "job", 6_000, n=60)
    out = tmp_path / "merged.csv"
    result = run([sys.executable, "-c", MERGE_UNDER_LIMIT, "40", str(hard), str(out), *map(str, shards)], timeout=300)
    rounds, rows, soft = map(int, result.stdout.split())
    assert rows == 6_000 and soft == hard
    assert rounds == (1 if hard > 100 else 2), result.stdout
    with open_csv(out) as fh:
        paths = [row[0] for row in csv.reader(fh)][1:]
    assert paths == sorted(f"folder{i % 97:02d}/photo {i:08d}.jpg" for i in range(6_000))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job", "merged.csv", "merged.csv.job.json"], "no round files left"


def test_a_forged_record_cannot_write_terminal_escapes(tmp_path):
    forged = "/data\x1b[2K\r\x1b[32mall rows verified\x1b[0m"
    shards = write_big_job(tmp_path / "job", 300, source=forged)
    done = merge(tmp_path / "out.csv", *shards, check=True)
    assert "\x1b" not in done.stderr and "\r" not in done.stderr
    assert "merged 3 shards of /data\\x1b[2K\\r\\x1b[32mall rows verified\\x1b[0m: 300 rows" in done.stderr
    missing = merge(tmp_path / "out2.csv", shards[0], shards[2])
    assert "\x1b" not in assert_refused(missing, "shard 1/3 of /data\\x1b[2K\\r")


def test_merge_messages_name_the_real_problem(job, tmp_path):
    shards = copy_shards(job, tmp_path / "shards")
    (tmp_path / "file").write_text("")
    assert_refused(merge(tmp_path / "file" / "out.csv", *shards), f"cannot write {tmp_path}/file/out.csv: {tmp_path}/file is not a folder")
    (tmp_path / "folder.csv").mkdir()
    assert_refused(merge(tmp_path / "out.csv", shards[0], tmp_path / "folder.csv", shards[2]), f"{tmp_path}/folder.csv is a folder, not a shard CSV")


@pytest.mark.parametrize("edit", ["banana", "flipped"])
def test_merge_checks_every_row_as_report_does(edit, job, tmp_path):
    """A shard edited by hand, its record's sha256 refreshed: only the rows themselves can show it."""
    shards = copy_shards(job, tmp_path)
    rows = read_rows(shards[1])
    i = next(i for i, row in enumerate(rows) if row[COLUMNS.index("label")] in ("cat", "dog", "neither"))
    label = rows[i][1]
    rows[i][1] = "banana" if edit == "banana" else {"cat": "dog", "dog": "cat", "neither": "cat"}[label]
    rewrite(shards[1], rows)
    needle = "label 'banana' is not one of cat, dog, neither" if edit == "banana" else f"label {rows[i][1]!r} does not follow from p_dog"
    assert_refused(merge(tmp_path / "out.csv", *shards), f"{shards[1]}: line {i + 2}: {needle}")
    assert not (tmp_path / "out.csv").exists()


# Names whose text looks like an escape: a naive JSON export of an emoji name, a backslash, and a real
# undecodable byte beside the literal text of its old escape.
ESCAPE_LOOKALIKES = [b"cat\\ud83d\\udc31.jpg", b"a\\xffb.jpg", b"a\xffb.jpg", b"a\\udcffb.jpg", b"caf\xe9.jpg", b"back\\slash.jpg"]


def test_merge_of_names_that_look_like_escapes_equals_the_unsharded_csv(tiny_bundle, real_photos, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    sample = sorted((real_photos / "train" / "dogs").iterdir())[0].read_bytes()
    for name in ESCAPE_LOOKALIKES:
        (folder / os.fsdecode(name)).write_bytes(sample)
    runs = tmp_path / "runs"
    catdog("predict-folder", folder, "--model", tiny_bundle, "--out", runs / "single.csv")
    shards = []
    for k in range(N):
        shards.append(runs / f"labels-{k}.csv")
        catdog("predict-folder", folder, "--model", tiny_bundle, "--out", shards[-1], "--shard", f"{k}/{N}")
    merge(tmp_path / "merged.csv", *shards, check=True)
    assert (tmp_path / "merged.csv").read_bytes() == (runs / "single.csv").read_bytes()
    paths = [row[0] for row in read_rows(tmp_path / "merged.csv")]
    assert len(set(paths)) == len(ESCAPE_LOOKALIKES) and all(row[COLUMNS.index("status")] == "ok" for row in read_rows(runs / "single.csv"))


def test_merge_refuses_shards_of_the_same_bucket_on_two_stores(tiny_bundle, real_photos, tmp_path):
    from conftest import aws_free_env, moto_s3

    env = aws_free_env(tmp_path, AWS_ACCESS_KEY_ID="k", AWS_SECRET_ACCESS_KEY="s")
    files = sorted((real_photos / "train" / "cats").iterdir())[:6]
    out = tmp_path / "runs"
    with moto_s3() as (first_url, first), moto_s3() as (second_url, second):
        for client in (first, second):
            client.create_bucket(Bucket="photos")
            for path in files:
                client.put_object(Bucket="photos", Key=f"batch/{path.name}", Body=path.read_bytes())
        for k, url in ((0, first_url), (1, second_url), (2, second_url)):
            catdog(
                "predict-folder", "s3://photos/batch", "--model", tiny_bundle, "--out", out / f"labels-{k}.csv",
                "--shard", f"{k}/{N}", "--s3-endpoint-url", url + "/", env=env,
            )
    assert read_job_record(out / "labels-0.csv").endpoint == first_url
    shards = [out / f"labels-{k}.csv" for k in range(N)]
    assert_refused(merge(tmp_path / "merged.csv", *shards), f"{shards[1]} is from a different job than {shards[0]}: endpoint ")


def test_merge_refuses_a_five_column_csv_from_before_neither_saying_to_relabel(job, tmp_path):
    shards = copy_shards(job, tmp_path)
    status = COLUMNS.index("pet_score")
    with open_csv(shards[2]) as fh:
        rows = [row[:status] + row[status + 1:] for row in csv.reader(fh)]
    with open_csv(shards[2], "w") as fh:
        csv_writer(fh).writerows(rows)
    record = read_job_record(shards[2])
    write_job_record(shards[2], dataclasses.replace(record, csv_sha256=hashlib.sha256(shards[2].read_bytes()).hexdigest()))
    assert_refused(merge(tmp_path / "out.csv", *shards), f"{shards[2]} was written by an older catdog (five columns, no pet_score): relabel it")


UNREADABLE = """
import builtins, errno, os, sys
target = sys.argv[1]
real_open, real_os_open = builtins.open, os.open

def denied(path):
    if str(path) == target:
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

builtins.open = lambda file, *a, **k: denied(file) or real_open(file, *a, **k)
os.open = lambda path, *a, **k: denied(path) or real_os_open(path, *a, **k)
from catdog.cli import main
sys.argv = ["catdog", *sys.argv[2:]]
main()
"""


@pytest.mark.parametrize("which", ["csv", "record"])
def test_an_unreadable_input_is_a_one_line_error(which, job, tmp_path):
    """As a user without read permission sees it (simulated: the tests may run as root, who reads anything)."""
    shards = copy_shards(job, tmp_path)
    target = shards[1] if which == "csv" else job_record_path(shards[1])
    result = run([sys.executable, "-c", UNREADABLE, str(target), "merge-labels", str(tmp_path / "out.csv"), *map(str, shards)], check=False)
    assert_refused(result, f"cannot read {'shard CSV' if which == 'csv' else 'job record'} {target}: Permission denied")
    result = run([sys.executable, "-c", UNREADABLE, str(target), "report", str(shards[1]), "--images", str(tmp_path), "--out", str(tmp_path / "r.html")], check=False)
    if which == "csv":
        assert_refused(result, f"cannot read labels CSV {target}: Permission denied")
    else:  # a record the report cannot read is ignored
        assert result.returncode == 0, result.stderr
