"""The labels CSV writer on its own, before and after in one run (issue 22): rows/s of formatting plus writing,
with no model and no decoding, through the real `LabelsCSV`.

  before  rows formatted by `csv.writer` into a StringIO (the old `format_rows`), progress saved after every
          block (an fsync of the partial and an atomic rewrite of the progress JSON, as the writer did per batch)
  after   `format_rows` (fields joined by hand, tested equal to csv.writer) and progress saved at most once
          per `SAVE_SECONDS` (what `LabelsCSV.write_block` does now)

Both write the same bytes (checked). `writer_rates` is what benchmarks/scale_out.py can call for its table.

With `--broken N --model BUNDLE`, also the local engine end to end on N generated broken files (a JPEG header
and junk: each is read, fails to decode and becomes an error row, so no model time hides the writer), with the
progress saved per block (before) and once per second (after); `make_broken_folder` and `local_engine_rate`
are there for the Ray engine's comparison too.

    python benchmarks/writer.py
    python benchmarks/writer.py --rows 1000000 --batch 256 --kind ok
    python benchmarks/writer.py --broken 250000 --model models --folder /scratch
"""

from __future__ import annotations

import argparse
import io
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _old_format_rows(batch, decision):
    """`format_rows` as it was: every row through csv.writer into a StringIO (the baseline)."""
    from catdog.labeling.labels import NEITHER, RowCounts, csv_writer, format_row

    text = io.StringIO()
    writer = csv_writer(text)
    counts = RowCounts()
    last = None
    for rel, p_dog, pet_score, reason in batch:
        row = format_row(rel, p_dog, pet_score, reason, decision)
        writer.writerow(row)
        if reason is None:
            counts.ok += 1
            counts.neither += row[1] == NEITHER
        else:
            counts.error += 1
        last = rel
    return text.getvalue().encode("utf-8", "backslashreplace"), counts, last


def _rows(count: int, kind: str) -> list[tuple]:
    rng = random.Random(0)
    paths = sorted(f"d{i % 997:03d}/photo_{(i * 7919) % count:08d}.jpg" for i in range(count))
    if kind == "error":
        return [(rel, None, None, "not an image (unrecognized format)") for rel in paths]
    return [(rel, rng.random(), rng.random(), None) for rel in paths]


def _run(out: Path, rows: list[tuple], batch: int, old: bool) -> float:
    import catdog.labeling.labels as labels
    from catdog.labeling.labels import Decision, LabelsCSV
    from catdog.labeling.sources import files_digest

    decision = Decision(("cat", "dog"), 0.5, 0.3)
    fmt = _old_format_rows if old else labels.format_rows
    saved = labels.SAVE_SECONDS
    labels.SAVE_SECONDS = 0.0 if old else saved
    try:
        started = time.perf_counter()
        with LabelsCSV(out, {"bench": True}, files_digest([r[0] for r in rows]), decision, resume=False) as csv_out:
            for start in range(0, len(rows), batch):
                csv_out.write_block(*fmt(rows[start : start + batch], decision))
            csv_out.finish()
        return len(rows) / (time.perf_counter() - started)
    finally:
        labels.SAVE_SECONDS = saved


def writer_rates(rows: int = 200_000, batch: int = 64, kind: str = "error", folder: Path | None = None) -> dict[str, float]:
    """Rows/s of the CSV writer before and after (see the module docstring), on `rows` generated rows of
    `kind` ("error" or "ok") in blocks of `batch`; the two CSVs are checked equal."""
    data = _rows(rows, kind)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        before = _run(Path(tmp) / "before.csv", data, batch, old=True)
        after = _run(Path(tmp) / "after.csv", data, batch, old=False)
        if (Path(tmp) / "before.csv").read_bytes() != (Path(tmp) / "after.csv").read_bytes():
            raise SystemExit("the two writers wrote different CSVs")
    return {"before": before, "after": after}


JPEG_HEADER = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"


def make_broken_folder(folder: Path, count: int) -> Path:
    """`count` broken JPEGs (header, then 200 seeded random bytes) in sub-folders of 1,000."""
    rng = random.Random(0)
    for i in range(count):
        sub = folder / f"{i // 1000:04d}"
        if i % 1000 == 0:
            sub.mkdir(parents=True, exist_ok=True)
        (sub / f"{i:07d}.jpg").write_bytes(JPEG_HEADER + rng.randbytes(200))
    return folder


def local_engine_rate(folder: Path, model: Path, out: Path, per_block: bool = False, engine: str = "local") -> float:
    """Rows/s of one `predict` run over `folder` (listing included); `per_block` saves the progress after every
    block, as the writer did before."""
    import catdog.labeling.labels as labels
    from catdog.labeling.predict import PredictOptions, predict

    saved = labels.SAVE_SECONDS
    labels.SAVE_SECONDS = 0.0 if per_block else saved
    try:
        summary = predict(PredictOptions(str(folder), model, out, overwrite=True, engine=engine))
    finally:
        labels.SAVE_SECONDS = saved
    return summary.labeled_now / summary.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=64, help="rows per block (the local engine's batch)")
    parser.add_argument("--kind", choices=("error", "ok"), default="error")
    parser.add_argument("--folder", type=Path, default=None, help="where to write (default: the system temp folder)")
    parser.add_argument("--broken", type=int, default=0, help="also label this many generated broken files with the local engine")
    parser.add_argument("--model", type=Path, default=REPO / "models", help="the bundle for --broken")
    args = parser.parse_args()
    rates = writer_rates(args.rows, args.batch, args.kind, args.folder)
    print(f"CSV writer, {args.rows:,} {args.kind} rows in blocks of {args.batch}:")
    print(f"  before (csv.writer, fsync + progress JSON per block): {rates['before']:>10,.0f} rows/s")
    print(f"  after  (format_rows, progress once per second):       {rates['after']:>10,.0f} rows/s  "
          f"({rates['after'] / rates['before']:.1f}x)")
    if args.broken:
        with tempfile.TemporaryDirectory(dir=args.folder) as tmp:
            folder = make_broken_folder(Path(tmp) / "broken", args.broken)
            before = local_engine_rate(folder, args.model, Path(tmp) / "before.csv", per_block=True)
            after = local_engine_rate(folder, args.model, Path(tmp) / "after.csv")
            same = (Path(tmp) / "before.csv").read_bytes() == (Path(tmp) / "after.csv").read_bytes()
        print(f"local engine, {args.broken:,} broken files (listing included), CSVs {'equal' if same else 'DIFFERENT'}:")
        print(f"  progress per block:      {before:>10,.0f} rows/s")
        print(f"  progress once a second:  {after:>10,.0f} rows/s  ({after / before:.1f}x)")


if __name__ == "__main__":
    main()
