"""The job record of a labeling run: `<out>.job.json` beside its CSV, written by every run just before the CSV
appears, read back by `merge-labels`, `report` and `--update`.

It says what made the CSV, so a CSV found a month later still tells: the source and the store it came from
(the S3 endpoint, never credentials), the model (content digest), both thresholds and whether `neither` was on,
the options that change which files are listed (recursion, link following, shard K/N), a digest of the whole
(unsharded) listing, the catdog version and the time; and what the finished CSV holds (row count and sha256),
so a CSV truncated or changed after its run is caught. A merge refuses shards whose records disagree.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from catdog.errors import CatdogError
from catdog.fsutil import NotRegularFile, open_regular, write_json

JOB_RECORD_VERSION = 2
MAX_RECORD_BYTES = 64 * 1024  # a record is well under 1 KiB; anything larger is not one
_FIELDS = (
    "version", "source", "endpoint", "model", "threshold", "pet_threshold", "neither", "shard", "recursive",
    "follow_links", "listing", "rows", "csv_sha256", "catdog_version", "written",
)
_SHA256 = re.compile(r"[0-9a-f]{64}")
_LISTING = re.compile(r"[0-9a-f]{32}")


def catdog_version() -> str:
    from catdog import __version__

    return __version__


def now_utc() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass(frozen=True)
class JobRecord:
    """One run's record (version 2). `job()` is what every shard of one job shares."""

    source: str  # an absolute folder path, or s3://bucket/prefix
    model: str  # model_digest(): "sha256:<hex>" of the model file used and its meta.json
    threshold: float  # p_dog at or above which the label is classes[1]
    shard: tuple[int, int]  # (K, N); (0, 1) for an unsharded run
    recursive: bool
    rows: int  # data rows in the finished CSV
    csv_sha256: str  # hex sha256 of the finished CSV's bytes
    listing: str  # sources.files_digest of the whole source's listing, before sharding
    follow_links: bool = True  # whether symlinked folders were entered
    endpoint: str | None = None  # the S3 store, without credentials or query; None: a folder or AWS's own S3
    pet_threshold: float | None = None  # pet_score below which a row is `neither`; None: no pet score in the model
    neither: bool = True  # False: the run never labeled `neither` (--no-neither)
    catdog_version: str = field(default_factory=catdog_version)
    written: str = field(default_factory=now_utc)  # UTC, ISO 8601
    version: int = JOB_RECORD_VERSION

    def job(self) -> dict:
        """What every shard of one job shares (the listing digest is checked on its own, naming the shard)."""
        return {
            "source": self.source, "endpoint": self.endpoint, "model": self.model, "threshold": self.threshold,
            "pet_threshold": self.pet_threshold, "neither": self.neither, "shards": self.shard[1],
            "recursive": self.recursive, "follow_links": self.follow_links,
        }


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
        "version": record.version, "source": record.source, "endpoint": record.endpoint, "model": record.model,
        "threshold": record.threshold, "pet_threshold": record.pet_threshold, "neither": record.neither,
        "shard": list(record.shard), "recursive": record.recursive, "follow_links": record.follow_links,
        "listing": record.listing, "rows": record.rows, "csv_sha256": record.csv_sha256,
        "catdog_version": record.catdog_version, "written": record.written,
    })


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_fraction(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 1


def _read_bounded(path: Path) -> bytes:
    """The file's bytes, refusing what cannot be a record without blocking or filling memory: a FIFO or device
    (opened non-blocking and checked before any read), a folder, or more than MAX_RECORD_BYTES."""
    try:
        fd, _ = open_regular(path)
    except NotRegularFile:
        raise CatdogError(f"invalid job record {path}: not a regular file") from None
    with os.fdopen(fd, "rb") as fh:
        data = fh.read(MAX_RECORD_BYTES + 1)
    if len(data) > MAX_RECORD_BYTES:
        raise CatdogError(f"invalid job record {path}: larger than {MAX_RECORD_BYTES:,} bytes")
    return data


def read_job_record(out: Path) -> JobRecord:
    """The record beside the CSV `out` (or, for a symlink to a CSV, beside the CSV it points to when the link has
    none of its own); CatdogError naming the file when it is missing, invalid, or from an older catdog (version
    1: relabel)."""
    path = job_record_path(out)
    if not os.path.lexists(path) and os.path.islink(out):
        beside_target = job_record_path(Path(os.path.realpath(out)))
        if os.path.lexists(beside_target):
            path = beside_target
    try:
        raw = json.loads(_read_bounded(path).decode("utf-8"))
    except FileNotFoundError:
        raise CatdogError(f"{path} not found: {out} has no job record (predict-folder writes one beside every CSV)") from None
    except IsADirectoryError:
        raise CatdogError(f"invalid job record {path}: a folder") from None
    except OSError as exc:
        raise CatdogError(f"cannot read job record {path}: {exc.strerror or exc}") from None
    except RecursionError:
        raise CatdogError(f"invalid job record {path}: nested too deeply") from None
    except ValueError as exc:  # not UTF-8, not JSON
        raise CatdogError(f"invalid job record {path}: {' '.join(str(exc).split())[:200]}") from None
    if isinstance(raw, dict) and raw.get("version") == 1:
        raise CatdogError(f"{path} was written by an older catdog (job record version 1): relabel {out} with this catdog")
    if isinstance(raw, dict) and _is_int(raw.get("version")) and raw["version"] > JOB_RECORD_VERSION:
        raise CatdogError(f"{path} was written by a newer catdog (job record version {raw['version']}): upgrade catdog")
    if not isinstance(raw, dict) or set(raw) != set(_FIELDS):
        raise CatdogError(f"invalid job record {path}: expected an object with exactly the keys {', '.join(_FIELDS)}")
    if raw["version"] != JOB_RECORD_VERSION:
        raise CatdogError(f"invalid job record {path}: version {raw['version']!r}, this catdog reads version {JOB_RECORD_VERSION}")
    shard, endpoint = raw["shard"], raw["endpoint"]
    problems = [
        (isinstance(raw["source"], str) and raw["source"], "source must be a non-empty string"),
        (endpoint is None or (isinstance(endpoint, str) and endpoint and not {"@", "?", "#"} & set(endpoint)),
         "endpoint must be null or a URL without credentials or query"),
        (isinstance(raw["model"], str) and raw["model"].startswith("sha256:") and _SHA256.fullmatch(raw["model"][7:]),
         "model must be sha256:<64 hex digits>"),
        (_is_fraction(raw["threshold"]), "threshold must be a number between 0 and 1"),
        (raw["pet_threshold"] is None or _is_fraction(raw["pet_threshold"]), "pet_threshold must be null or a number between 0 and 1"),
        (isinstance(raw["neither"], bool), "neither must be true or false"),
        (isinstance(shard, list) and len(shard) == 2 and all(map(_is_int, shard)) and 0 <= shard[0] < shard[1],
         "shard must be [K, N] with 0 <= K < N"),
        (isinstance(raw["recursive"], bool), "recursive must be true or false"),
        (isinstance(raw["follow_links"], bool), "follow_links must be true or false"),
        (isinstance(raw["listing"], str) and _LISTING.fullmatch(raw["listing"]), "listing must be 32 hex digits"),
        (_is_int(raw["rows"]) and raw["rows"] >= 0, "rows must be a count"),
        (isinstance(raw["csv_sha256"], str) and _SHA256.fullmatch(raw["csv_sha256"]), "csv_sha256 must be 64 hex digits"),
        (isinstance(raw["catdog_version"], str) and raw["catdog_version"], "catdog_version must be a non-empty string"),
        (isinstance(raw["written"], str) and raw["written"], "written must be a non-empty string"),
    ]
    for ok, what in problems:
        if not ok:
            raise CatdogError(f"invalid job record {path}: {what}")
    return JobRecord(
        source=raw["source"], endpoint=endpoint, model=raw["model"], threshold=float(raw["threshold"]),
        pet_threshold=None if raw["pet_threshold"] is None else float(raw["pet_threshold"]), neither=raw["neither"],
        shard=(shard[0], shard[1]), recursive=raw["recursive"], follow_links=raw["follow_links"], listing=raw["listing"],
        rows=raw["rows"], csv_sha256=raw["csv_sha256"], catdog_version=raw["catdog_version"], written=raw["written"],
        version=raw["version"],
    )
