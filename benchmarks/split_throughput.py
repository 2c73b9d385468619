"""How long `split` takes to validate (full decode + sha256) a large folder, on all cores vs one.

Builds a cats_and_dogs_filtered-like tree of N files by hard-linking the shared photos (no copies), then
times `catdog.training.split.split_dataset` with every core and with one worker, and prints the ratio.

    python benchmarks/split_throughput.py --files 25000
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import zipfile
from pathlib import Path

from catdog.training.params import SplitParams
from catdog.training.split import split_dataset

SHARED_ZIP = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "cats_and_dogs_3k.zip"


def build_tree(src: Path, dest: Path, n_files: int) -> int:
    photos = sorted(p for p in src.rglob("*.jpg"))
    made = 0
    while made < n_files:
        for photo in photos:
            if made == n_files:
                break
            rel = photo.relative_to(src)
            target = dest / rel.parent / f"{made // len(photos)}_{rel.name}"
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(photo, target)
            made += 1
    return made


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zip", type=Path, default=SHARED_ZIP)
    parser.add_argument("--files", type=int, default=25_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        with zipfile.ZipFile(args.zip) as zf:
            zf.extractall(tmp / "src")
        n = build_tree(tmp / "src", tmp / "tree", args.files)
        timings = {}
        for label, workers in (("all cores", os.cpu_count()), ("one worker", 1)):
            started = time.perf_counter()
            result = split_dataset(tmp / "tree", SplitParams(), seed=42, workers=workers)
            timings[label] = time.perf_counter() - started
        report = result.report()
        print(f"files: {n}  kept: {report['n_images']}  duplicates: {report['n_duplicates']}  rejected: {report['n_rejected']}")
        for label, seconds in timings.items():
            print(f"{label:>10}: {seconds:7.1f} s  ({n / seconds:7.0f} files/s)")
        print(f"speed-up with {os.cpu_count()} cores: {timings['one worker'] / timings['all cores']:.2f}x")


if __name__ == "__main__":
    main()
