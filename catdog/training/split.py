"""Splitting the extracted dataset into seeded, stratified, leak-free train/val/test manifests.

Labels come from class folder names (mapped through `split.class_map`, case-insensitively). Every
image is fully decoded once (on all cores) to reject broken files, and hashed so that exact
duplicates never land in two splits. No image is copied, moved or changed.
"""

from __future__ import annotations

import csv
import io
import os
import random
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from catdog.cpus import usable_cpus
from catdog.errors import CatdogError
from catdog.fsutil import write_json, write_text
from catdog.images import inspect_file
from catdog.training.params import SplitParams
from catdog.progress import progress_bar

SPLITS = ("train", "val", "test")
_HELD_OUT_FOLDERS = {"validation", "valid", "val", "test", "testing"}
_PRIORITY = {"test": 0, "val": 1, "train": 2}


@dataclass(frozen=True)
class Candidate:
    path: str  # relative to the dataset root, "/"-separated
    label: str
    held_out: bool  # the source itself put it in a validation/test folder


@dataclass
class SplitResult:
    manifests: dict[str, list[tuple[str, str]]]
    rejected: list[dict[str, str]] = field(default_factory=list)
    duplicates: list[dict[str, str]] = field(default_factory=list)
    unlabeled: int = 0

    def report(self) -> dict:
        counts = {
            name: {
                "cat": sum(1 for _, label in rows if label == "cat"),
                "dog": sum(1 for _, label in rows if label == "dog"),
                "total": len(rows),
            }
            for name, rows in self.manifests.items()
        }
        return {
            "counts": counts,
            "n_images": sum(c["total"] for c in counts.values()),
            "n_rejected": len(self.rejected),
            "n_duplicates": len(self.duplicates),
            "n_unlabeled": self.unlabeled,
            "rejected": self.rejected,
            "duplicates": self.duplicates,
        }


def find_candidates(root: Path, class_map: dict[str, str]) -> tuple[list[Candidate], int]:
    """Every file under `root` whose nearest labelled ancestor folder maps to a class; and how many had none."""
    mapping = {key.casefold(): value for key, value in class_map.items()}
    candidates, unlabeled = [], 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel_dir = Path(dirpath).relative_to(root)
        parts = [p.casefold() for p in rel_dir.parts]
        label = next((mapping[p] for p in reversed(parts) if p in mapping), None)
        for name in sorted(filenames):
            if label is None:
                unlabeled += 1
                continue
            rel = (rel_dir / name).as_posix()
            candidates.append(Candidate(rel, label, any(p in _HELD_OUT_FOLDERS for p in parts)))
    return candidates, unlabeled


def _name_problem(path: str) -> str | None:
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return "file name is not valid UTF-8 (rename it)"
    if "\n" in path or "\r" in path:
        return "file name contains a line break (rename it)"
    return None


def _stratified_take(items: list[Candidate], fraction: float, rng: random.Random) -> tuple[list[Candidate], list[Candidate]]:
    """Split off `fraction` of each class (seeded); return (taken, rest)."""
    taken, rest = [], []
    for label in ("cat", "dog"):
        group = sorted((c for c in items if c.label == label), key=lambda c: c.path)
        rng.shuffle(group)
        k = round(len(group) * fraction)
        taken += group[:k]
        rest += group[k:]
    return taken, rest


def split_dataset(root: Path, params: SplitParams, seed: int, workers: int | None = None) -> SplitResult:
    """Scan, validate, de-duplicate and split the images under `root`."""
    if not root.is_dir():
        raise CatdogError(f"dataset folder not found: {root}")
    candidates, unlabeled = find_candidates(root, params.class_map)
    if not candidates:
        raise CatdogError(f"no images under class folders ({', '.join(sorted(params.class_map))}) in {root}")

    # A manifest must hold each name exactly, one line per row.
    bad_names, named = [], []
    for c in candidates:
        if reason := _name_problem(c.path):
            bad_names.append({"path": os.fsencode(c.path).decode("utf-8", "backslashreplace"), "reason": reason})
        else:
            named.append(c)
    candidates = named

    check = partial(inspect_file, max_pixels=params.max_pixels)
    paths = [root / c.path for c in candidates]
    workers = workers or usable_cpus()
    results = []
    with ProcessPoolExecutor(max_workers=workers) as pool, progress_bar("validate images", len(paths)) as advance:
        for result in pool.map(check, paths, chunksize=16):
            results.append(result)
            advance(1)

    result = SplitResult(manifests={}, rejected=bad_names)
    by_hash: dict[str, list[Candidate]] = defaultdict(list)
    for candidate, (digest, reason) in zip(candidates, results):
        if reason is not None:
            result.rejected.append({"path": candidate.path, "reason": reason})
        else:
            by_hash[digest].append(candidate)

    # One copy of each distinct image, in the split the source held it out for if any copy was.
    kept: list[Candidate] = []
    for digest in sorted(by_hash):
        group = sorted(by_hash[digest], key=lambda c: (not c.held_out, c.path))
        if len({c.label for c in group}) > 1:
            for c in group:
                result.rejected.append({"path": c.path, "reason": f"same content labelled both cat and dog (sha256 {digest[:12]})"})
            continue
        kept.append(group[0])
        result.duplicates += [{"path": c.path, "duplicate_of": group[0].path} for c in group[1:]]
    result.rejected.sort(key=lambda r: r["path"])
    result.duplicates.sort(key=lambda r: r["path"])

    for label in ("cat", "dog"):
        if not any(c.label == label for c in kept):
            raise CatdogError(
                f"no usable {label} images under {root}: a classifier needs both classes "
                f"(check split.class_map: {', '.join(k for k, v in params.class_map.items() if v == label) or 'none'} -> {label})"
            )
    rng = random.Random(seed)
    held_out = [c for c in kept if c.held_out]
    pool_ = [c for c in kept if not c.held_out]
    if held_out:
        test = held_out
    else:
        test, pool_ = _stratified_take(pool_, params.test_fraction, rng)
    # val_fraction is of the training pool (what the test split leaves), with or without a held-out folder.
    val, train = _stratified_take(pool_, params.val_fraction, rng)
    for name, rows in (("train", train), ("val", val), ("test", test)):
        result.manifests[name] = sorted((c.path, c.label) for c in rows)
        if not rows:
            raise CatdogError(f"split {name!r} is empty: {len(kept)} usable images under {root} are too few")
    result.unlabeled = unlabeled
    return result


def manifest_text(rows: list[tuple[str, str]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "label"])
    writer.writerows(rows)
    return buffer.getvalue()


def write_split(result: SplitResult, out_dir: Path, report_path: Path) -> None:
    """Write train.csv, val.csv, test.csv into `out_dir` and the report JSON, each atomically."""
    for name in SPLITS:
        write_text(out_dir / f"{name}.csv", manifest_text(result.manifests[name]))
    write_json(report_path, result.report())


def read_manifest(path: Path) -> list[tuple[str, str]]:
    """Rows (path, label) of a manifest written by `write_split`."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None or not {"path", "label"} <= set(reader.fieldnames):
                raise CatdogError(f"{path}: not a manifest (expected columns path,label)")
            rows = [(row["path"], row["label"]) for row in reader]
    except FileNotFoundError:
        raise CatdogError(f"manifest not found: {path}") from None
    except (csv.Error, UnicodeDecodeError) as exc:
        raise CatdogError(f"{path}: not a readable manifest CSV ({exc})") from None
    bad = next((label for _, label in rows if label not in ("cat", "dog")), None)
    if bad is not None:
        raise CatdogError(f"{path}: unknown label {bad!r} (expected cat or dog)")
    return rows
