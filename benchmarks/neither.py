"""The `neither` outcome (issue 18): what the pet score keeps and what it calls neither, and what it costs.

One run, one bundle (default: `models` from `make repro`):

  quality  the labeler end to end (catdog.labeling.predict, outcome on) on the test split (data/split/test.csv)
           and on imagenet_sample_even.zip's pets, near and far folders separately: the share kept as cat or
           dog, the share labeled neither, and the cat/dog accuracy of the kept rows (pets only);
  speed    images/s of the same labeler on all those photos with the outcome on (`neither=True`), off
           (`--no-neither`), and with today's model: the same classifier without the pet score (its p_dog
           output alone, cut out of model.keras and converted to LiteRT here), in --repeats interleaved
           rounds; the ratios are medians of the per-round ratios, so a noisy neighbour hits both sides alike.

Targets: test pets kept >= 99% with accuracy >= 0.976; imagenet pets kept >= 95%; far >= 97% neither;
near >= 70% neither; on/off and on/today's >= 0.9.

    python benchmarks/neither.py                       # after `make repro`
    python benchmarks/neither.py --model /tmp/models --test /tmp/data/split/test.csv --images /tmp/data/raw/dataset
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import os
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IMAGENET_ZIP = REPO.parent / "shared" / "datasets" / "imagenet_sample_even.zip"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def build_folder(test_csv: Path, images: Path, imagenet_zip: Path, dest: Path) -> dict[str, Path]:
    """test/<label>/... hard links to the test split's photos, and imagenet_sample_even's pets, near and far."""
    with test_csv.open(newline="") as f:
        for row in csv.DictReader(f):
            target = dest / "test" / row["label"] / row["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(images / row["path"], target)
    with zipfile.ZipFile(imagenet_zip) as zf:
        zf.extractall(dest / "imagenet")
    (top,) = [p for p in (dest / "imagenet").iterdir() if p.is_dir()]
    return {"test": dest / "test", "imagenet pets": top / "pets", "imagenet near": top / "near", "imagenet far": top / "far"}


def label(source: Path, model: Path, out: Path, neither: bool) -> tuple[float, list[dict]]:
    """One end-to-end labeling run, quiet: (images/s, the CSV's rows)."""
    from catdog.labeling.predict import PredictOptions, predict

    with contextlib.redirect_stderr(io.StringIO()):
        summary = predict(PredictOptions(source=str(source), model=model, out=out, overwrite=True, neither=neither))
    with out.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return summary.labeled_now / summary.seconds, rows


def todays_model(model: Path, dest: Path) -> Path:
    """The bundle's classifier without the pet score: model.tflite with the p_dog output only (as before issue 18)."""
    import json

    from catdog.tfsetup import import_tf

    import_tf()
    import keras

    from catdog.training.train import export_tflite

    full = keras.saving.load_model(model / "model.keras", compile=False)
    p_dog = full.get_layer("p_dog_pet_score").input[0]
    export_tflite(keras.Model(full.inputs, p_dog), dest / "model.tflite")
    meta = json.loads((model / "meta.json").read_text())
    meta.pop("pet_threshold", None)
    (dest / "meta.json").write_text(json.dumps(meta))
    return dest


def quality(group: str, rows: list[dict]) -> dict:
    kept = [r for r in rows if r["label"] in ("cat", "dog")]
    truth = {"test": lambda r: r["path"].split("/")[0], "imagenet pets": lambda r: r["path"].split("/")[0]}.get(group)
    return {
        "n": len(rows),
        "kept": len(kept) / len(rows),
        "neither": sum(r["label"] == "neither" for r in rows) / len(rows),
        "accuracy": (sum(r["label"] == truth(r) for r in kept) / len(kept)) if truth and kept else None,
        "errors": sum(r["status"] != "ok" for r in rows),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=REPO / "models")
    ap.add_argument("--test", type=Path, default=REPO / "data" / "split" / "test.csv")
    ap.add_argument("--images", type=Path, default=REPO / "data" / "raw" / "dataset")
    ap.add_argument("--imagenet", type=Path, default=IMAGENET_ZIP)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="neither-bench-") as tmp:
        tmp = Path(tmp)
        folders = build_folder(args.test, args.images, args.imagenet, tmp / "photos")
        log("quality: labeling each group with the outcome on")
        table = {g: quality(g, label(folder, args.model, tmp / "q.csv", True)[1]) for g, folder in folders.items()}

        log("speed: today's model (no pet score) for comparison")
        (tmp / "today").mkdir()
        today = todays_model(args.model, tmp / "today")
        runs: dict[str, list[float]] = {"on": [], "off": [], "today": []}
        everything = tmp / "photos"
        label(everything / "test", args.model, tmp / "warm.csv", True)  # warm the page cache and the imports
        for r in range(args.repeats):
            for name, model, neither in (("on", args.model, True), ("off", args.model, False), ("today", today, False)):
                runs[name].append(label(everything, model, tmp / f"{name}.csv", neither)[0])
            log(f"round {r + 1}/{args.repeats}: " + ", ".join(f"{k} {v[-1]:.1f}/s" for k, v in runs.items()))

    n_all = sum(t["n"] for t in table.values())
    print(f"\nbundle {args.model}; {n_all} photos; speed: median of {args.repeats} interleaved rounds over all of them\n")
    print("| photos | n | kept as cat/dog | neither | cat/dog accuracy of kept |")
    print("|---|---|---|---|---|")
    for group, t in table.items():
        acc = "-" if t["accuracy"] is None else f"{t['accuracy']:.4f}"
        print(f"| {group} | {t['n']} | {t['kept']:.1%} | {t['neither']:.1%} | {acc} |")
    on, off, today_rate = (statistics.median(runs[k]) for k in ("on", "off", "today"))
    ratio = lambda a, b: statistics.median(x / y for x, y in zip(runs[a], runs[b]))  # noqa: E731
    print("\n| labeling (end to end, LiteRT) | images/s | ratio to outcome on |")
    print("|---|---|---|")
    print(f"| outcome on (default) | {on:.1f} | 1.00 |")
    print(f"| outcome off (`--no-neither`) | {off:.1f} | on/off {ratio('on', 'off'):.2f} |")
    print(f"| today's model (no pet score) | {today_rate:.1f} | on/today {ratio('on', 'today'):.2f} |")


if __name__ == "__main__":
    main()
