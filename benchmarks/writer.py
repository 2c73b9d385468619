"""The labels CSV writer on its own, before and after in one run (issue 22): rows/s of formatting plus writing,
with no model and no decoding, through the real `LabelsCSV`.

  before  rows formatted by `csv.writer` into a StringIO (the old `format_rows`), progress saved after every
          block (an fsync of the partial and an atomic rewrite of the progress JSON, as the writer did per batch)
  after   `format_rows` (fields joined by hand, tested equal to csv.writer) and progress saved at most once
          per `SAVE_SECONDS` (what `LabelsCSV.write_block` does now)

Both write the same bytes (checked). `writer_rates` is what benchmarks/scale_out.py can call for its table.

    python benchmarks/writer.py
    python benchmarks/writer.py --rows 1000000 --batch 256 --kind ok
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=64, help="rows per block (the local engine's batch)")
    parser.add_argument("--kind", choices=("error", "ok"), default="error")
    parser.add_argument("--folder", type=Path, default=None, help="where to write (default: the system temp folder)")
    args = parser.parse_args()
    rates = writer_rates(args.rows, args.batch, args.kind, args.folder)
    print(f"CSV writer, {args.rows:,} {args.kind} rows in blocks of {args.batch}:")
    print(f"  before (csv.writer, fsync + progress JSON per block): {rates['before']:>10,.0f} rows/s")
    print(f"  after  (format_rows, progress once per second):       {rates['after']:>10,.0f} rows/s  "
          f"({rates['after'] / rates['before']:.1f}x)")


if __name__ == "__main__":
    main()
