"""`predict-folder --update` against a full run, in one run (issue 21); every ratio is against the full run measured
in the same run.

Part 1, photos: the shared 3,000 photos ten times over in subfolders (30,000 files), labeled by a full run; then
  1%      300 added, 300 modified (same name, new bytes), 300 deleted, and an update;
  none    an update with nothing changed;
  thresh  an update with only --threshold changed, which must decode nothing (load_image calls are counted);
and each update's CSV is compared byte for byte with a fresh full run's on the same folder and options.
Runs are in-process `predict()` calls, model loading included.

Part 2, 1,000,000 generated empty files (no decode): in fresh subprocesses, seconds and peak traced memory of
  listing   the listing a full run makes (LocalSource.list);
  identity  that listing plus each file's size and mtime (one stat a file), what every run now does;
  join      the join alone (`plan_update` on a listing with identities made beforehand): the old CSV's sha256
            checked and the CSV and its sidecar merge-joined with the listing; its peak is the join's own memory
  update    a whole no-change `predict(update=True)`: listing, identities, the join against a CSV of 1,000,000 ok
            rows and its sidecar (its sha256 checked), writing the new CSV and sidecar; nothing decoded.

    python benchmarks/update.py --model models
    python benchmarks/update.py --copies 1 --files 100000     # a quick look
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
import tracemalloc
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ZIP = REPO.parent / "shared" / "datasets" / "cats_and_dogs_3k.zip"
sys.path.insert(0, str(REPO))


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def tiny_bundle(work: Path) -> Path:
    """A small_cnn bundle at 32 px trained for one epoch on synthetic images (any bundle works: --model)."""
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import catdog, synthetic_dataset, tiny_overrides, write_params

    root = work / "bundle"
    if (root / "models" / "meta.json").exists():
        return root / "models"
    synthetic_dataset(root / "images", n_train=16, n_val=6)
    for split, n in (("train", 16), ("validation", 6)):
        rows = "".join(f"pets/{split}/{c}s/{c}.{split}.{i}.jpg,{c}\n" for c in ("cat", "dog") for i in range(n))
        (root / f"{split}.csv").write_text("path,label\n" + rows)
    shutil.copy2(REPO / "params.yaml", root / "params.yaml")
    write_params(root, tiny_overrides(root / "unused.zip"))
    catdog("train", "--params", root / "params.yaml", "--train", root / "train.csv", "--val", root / "validation.csv",
           "--images", root / "images", "--model-dir", root / "models", "--live-dir", root / "dvclive", cwd=root)
    return root / "models"


def make_photos(archive: Path, folder: Path, copies: int) -> list[bytes]:
    """`copies` copies of the archive's photos under folder/copyN/; returns the photos' bytes (for new files)."""
    with zipfile.ZipFile(archive) as zf:
        names = sorted(n for n in zf.namelist() if n.lower().endswith(".jpg"))
        blobs = [zf.read(n) for n in names]
    for k in range(copies):
        for name, data in zip(names, blobs):
            target = folder / f"copy{k}" / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
    return blobs


class Decodes:
    """Counts load_image calls in every engine thread of this process."""

    def __init__(self):
        import catdog.labeling.engines as engines

        self.count, self._engines, self._inner = 0, engines, engines.load_image

        def counted(*args, **kwargs):
            self.count += 1
            return self._inner(*args, **kwargs)

        engines.load_image = counted

    def take(self) -> int:
        count, self.count = self.count, 0
        return count


def run(folder: Path, model: Path, out: Path, **options) -> tuple[float, object]:
    from catdog.labeling.predict import PredictOptions, predict

    started = time.perf_counter()
    summary = predict(PredictOptions(str(folder), model, out, overwrite=not options.get("update"), **options))
    return time.perf_counter() - started, summary


def photos_part(args, work: Path, model: Path) -> list[tuple[str, float, int, int, bool]]:
    folder = work / "photos"
    if folder.exists():
        shutil.rmtree(folder)
    log(f"copying {args.copies} x the shared photos into {folder} ...")
    blobs = make_photos(args.zip, folder, args.copies)
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    n = len(files)
    one = n // 100
    decodes = Decodes()
    out = work / "labels.csv"
    rows = []

    def fresh(**options) -> bytes:
        seconds, _ = run(folder, model, work / "fresh.csv", **options)
        decodes.take()
        rows.append(("fresh full run (for the comparison)", seconds, n, 0, True))
        return (work / "fresh.csv").read_bytes()

    log(f"full run on {n:,} files ...")
    full, _ = run(folder, model, out)
    rows.append(("full run", full, decodes.take(), 0, True))

    for i, path in enumerate(files[1::100][:one]):  # modified: same name, another photo's bytes
        old, k = path.read_bytes(), i * 7 + 1
        while blobs[k % len(blobs)] == old:
            k += 1
        path.write_bytes(blobs[k % len(blobs)])
    for path in files[2::100][:one]:  # deleted
        path.unlink()
    for i in range(one):  # added
        target = folder / "added" / f"new.{i:05d}.jpg"
        target.parent.mkdir(exist_ok=True)
        target.write_bytes(blobs[(i * 13 + 5) % len(blobs)])

    log("update after 1% added, 1% modified, 1% deleted ...")
    seconds, summary = run(folder, model, out, update=True)
    decoded = decodes.take()
    expected = fresh()
    rows.append(("update: 1% added, 1% modified, 1% deleted", seconds, decoded, summary.kept, out.read_bytes() == expected))
    log("update with nothing changed ...")
    seconds, summary = run(folder, model, out, update=True)
    rows.append(("update: nothing changed", seconds, decodes.take(), summary.kept, out.read_bytes() == expected))
    log("update with only the threshold changed ...")
    seconds, summary = run(folder, model, out, update=True, threshold=0.3)
    decoded = decodes.take()
    assert decoded == 0, f"a threshold-only update decoded {decoded} images"
    rows.append(("update: only --threshold changed", seconds, decoded, summary.kept, out.read_bytes() == fresh(threshold=0.3)))
    return rows


# --- part 2: one million empty files, each measurement in its own process -------------------------------------------

def make_files(folder: Path, count: int) -> None:
    if (folder / "done").exists() and json.loads((folder / "done").read_text()) == count:
        return
    if folder.exists():
        shutil.rmtree(folder)
    per = 1000
    for d in range(0, count, per):
        sub = folder / f"d{d // per:04d}"
        sub.mkdir(parents=True)
        for i in range(d, min(d + per, count)):
            (sub / f"f{i:07d}.jpg").touch()
    (folder / "done").write_text(json.dumps(count))


def measure(what: str, folder: Path, model: Path, out: Path) -> dict:
    """One measurement, run in this (fresh) process: seconds untraced, then peak traced memory in a second pass."""
    from catdog.labeling.labels import own_files
    from catdog.labeling.sources import LocalSource
    from catdog.labeling.update import files_path, identified, plan_update

    source = LocalSource(str(folder))
    if what == "join":  # the listing with identities made first, not measured
        listing = identified(source, source.list(skip=own_files(out)))
        key = json.loads(files_path(out).read_bytes().split(b"\n", 1)[0])["key"]

    def once():
        if what == "listing":
            return source.list(skip=own_files(out))
        if what == "identity":
            return identified(source, source.list(skip=own_files(out)))
        if what == "join":
            plan = plan_update(out, key, listing, overwrite=False)
            assert plan.kept == len(listing) and not plan.to_label.paths, plan.note
            return plan
        return run(folder, model, out, update=True)

    started = time.perf_counter()
    once()
    seconds = time.perf_counter() - started
    tracemalloc.start()
    once()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {"seconds": seconds, "peak": peak}


def old_csv_of_ok_rows(folder: Path, model: Path, out: Path) -> None:
    """A full run's CSV and sidecar on `folder` as if every file were an image (p_dog 0.25), without decoding."""
    import catdog.labeling.predict as predict_module

    def engine(source, listing, predictor, options, decision=None):
        for start in range(0, len(listing.paths), 4096):
            yield [(rel, 0.25, None, None) for rel in listing.paths[start:start + 4096]]

    predict_module._engine = engine
    run(folder, model, out)


def million_part(args, work: Path, model: Path) -> dict:
    folder, out = work / "million", work / "million.csv"
    log(f"generating {args.files:,} empty files in {folder} ...")
    make_files(folder, args.files)
    subprocess.run([sys.executable, __file__, "--old-csv", str(folder), "--model", str(model), "--work", str(out)], check=True)
    results = {}
    for what in ("listing", "identity", "join", "update"):
        log(f"measuring {what} on {args.files:,} files ...")
        done = subprocess.run([sys.executable, __file__, "--measure", what, str(folder), "--model", str(model), "--work", str(out)],
                              check=True, capture_output=True, text=True)
        results[what] = json.loads(done.stdout)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="a model bundle (default: train a tiny one under --work)")
    parser.add_argument("--zip", type=Path, default=DEFAULT_ZIP)
    parser.add_argument("--copies", type=int, default=10)
    parser.add_argument("--files", type=int, default=1_000_000)
    parser.add_argument("--work", type=Path, default=REPO.parent / "scratch" / "update-bench")
    parser.add_argument("--measure", nargs=2, metavar=("WHAT", "FOLDER"), help=argparse.SUPPRESS)
    parser.add_argument("--old-csv", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--skip-photos", action="store_true", help="only the 1,000,000-file part")
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure[0], Path(args.measure[1]), args.model, args.work)))
        return
    if args.old_csv:
        old_csv_of_ok_rows(args.old_csv, args.model, args.work)
        return
    args.work.mkdir(parents=True, exist_ok=True)
    model = args.model or tiny_bundle(args.work)

    if not args.skip_photos:
        rows = photos_part(args, args.work, model)
        full = rows[0][1]
        print(f"\n{'run':<44} {'seconds':>8} {'x full':>7} {'decoded':>8} {'kept':>7}  same CSV as a full run")
        for name, seconds, decoded, kept, same in rows:
            print(f"{name:<44} {seconds:>8.2f} {seconds / full:>7.3f} {decoded:>8,} {kept:>7,}  {'yes' if same else 'NO'}")
        print("targets: 1% update <= 0.05 x full; nothing changed <= 0.02 x full; threshold only: 0 decoded")

    million = million_part(args, args.work, model)
    base = million["listing"]
    print(f"\n{args.files:,} empty files, nothing decoded {'':<14} {'seconds':>8} {'x listing':>9} {'peak MiB':>9} {'x listing':>9}")
    for what, label in (("listing", "listing alone (a full run's)"), ("identity", "listing + size and mtime (stat)"),
                        ("join", "join alone (old CSV + sidecar, sha256 checked)"),
                        ("update", "no-change update: listing + join + write")):
        m = million[what]
        print(f"{label:<49} {m['seconds']:>8.2f} {m['seconds'] / base['seconds']:>9.2f} {m['peak'] / 2**20:>9.1f} {m['peak'] / base['peak']:>9.2f}")
    print("targets: update <= 2 x listing time; peak <= 1.5 x listing's")


if __name__ == "__main__":
    main()
