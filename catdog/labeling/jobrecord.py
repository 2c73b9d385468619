"""The job record of a sharded labeling run: `<out>.job.json` beside its CSV, what `merge-labels` checks.

It says which job the CSV belongs to (source, model digest, threshold, shard K/N, recursion, links followed) and what the
finished CSV holds (row count and sha256), so a merge can refuse shards of different jobs, a missing or
doubled shard, and a CSV that was truncated or changed after its run.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from catdog.errors import CatdogError
from catdog.fsutil import write_json

JOB_RECORD_VERSION = 1
_FIELDS = ("version", "source", "model", "threshold", "shard", "recursive", "follow_links", "rows", "csv_sha256")
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class JobRecord:
    source: str  # an absolute folder path, or s3://bucket/prefix
    model: str  # model_digest(): "sha256:<hex>" of the model file used and its meta.json
    threshold: float
    shard: tuple[int, int]  # (K, N)
    recursive: bool
    rows: int  # data rows in the finished CSV
    csv_sha256: str  # hex sha256 of the finished CSV's bytes
    follow_links: bool = True  # whether symlinked folders were entered
    version: int = JOB_RECORD_VERSION

    def job(self) -> dict:
        """What every shard of one job shares: its sharded runs differ only in K, rows and csv_sha256."""
        return {"source": self.source, "model": self.model, "threshold": self.threshold, "shards": self.shard[1],
                "recursive": self.recursive, "follow_links": self.follow_links}


def job_record_path(out: Path) -> Path:
    """Where the run that wrote the CSV `out` records its job."""
    return out.with_name(out.name + ".job.json")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def model_digest(model_file: Path, meta_file: Path) -> str:
    """A content digest of the model a run used: the model file and its meta.json (class names, image size),
    each length-prefixed, so the same bundle mounted or baked anywhere gives the same digest."""
    digest = hashlib.sha256()
    for path in (model_file, meta_file):
        digest.update(path.stat().st_size.to_bytes(8, "big"))
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def write_job_record(out: Path, record: JobRecord) -> None:
    """Write `<out>.job.json` atomically."""
    write_json(job_record_path(out), {
        "version": record.version, "source": record.source, "model": record.model, "threshold": record.threshold,
        "shard": list(record.shard), "recursive": record.recursive, "follow_links": record.follow_links, "rows": record.rows, "csv_sha256": record.csv_sha256,
    })


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def read_job_record(out: Path) -> JobRecord:
    """The record beside the CSV `out`; CatdogError naming the file when it is missing or invalid."""
    path = job_record_path(out)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CatdogError(f"{path} not found: {out} has no job record (only `predict-folder --shard K/N` writes one)") from None
    except (OSError, ValueError) as exc:
        raise CatdogError(f"invalid job record {path}: {' '.join(str(exc).split())}") from None
    if not isinstance(raw, dict) or set(raw) != set(_FIELDS):
        keys = ", ".join(_FIELDS)
        raise CatdogError(f"invalid job record {path}: expected an object with exactly the keys {keys}")
    if raw["version"] != JOB_RECORD_VERSION:
        raise CatdogError(f"invalid job record {path}: version {raw['version']!r}, this catdog reads version {JOB_RECORD_VERSION}")
    shard = raw["shard"]
    problems = [
        (isinstance(raw["source"], str) and raw["source"], "source must be a non-empty string"),
        (isinstance(raw["model"], str) and raw["model"].startswith("sha256:") and _SHA256.fullmatch(raw["model"][7:]),
         "model must be sha256:<64 hex digits>"),
        (isinstance(raw["threshold"], (int, float)) and not isinstance(raw["threshold"], bool) and 0 < raw["threshold"] < 1,
         "threshold must be a number between 0 and 1"),
        (isinstance(shard, list) and len(shard) == 2 and all(map(_is_int, shard)) and 0 <= shard[0] < shard[1],
         "shard must be [K, N] with 0 <= K < N"),
        (isinstance(raw["recursive"], bool), "recursive must be true or false"),
        (isinstance(raw["follow_links"], bool), "follow_links must be true or false"),
        (_is_int(raw["rows"]) and raw["rows"] >= 0, "rows must be a count"),
        (isinstance(raw["csv_sha256"], str) and _SHA256.fullmatch(raw["csv_sha256"]), "csv_sha256 must be 64 hex digits"),
    ]
    for ok, what in problems:
        if not ok:
            raise CatdogError(f"invalid job record {path}: {what}")
    return JobRecord(
        source=raw["source"], model=raw["model"], threshold=float(raw["threshold"]), shard=(shard[0], shard[1]),
        recursive=raw["recursive"], follow_links=raw["follow_links"], rows=raw["rows"], csv_sha256=raw["csv_sha256"], version=raw["version"],
    )
