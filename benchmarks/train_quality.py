"""Training quality and cost of each model on the shared 3k photos, through the real CLI (issue 4).

In a working folder it writes one params file per model (params.yaml's values, with the fetch sources
pointed at ../shared and the per-model overrides below), then runs exactly what the pipeline runs:

    catdog fetch     (the shared zip and MobileNetV2 weights, copied and verified)
    catdog split     (the zip's validation/ folder becomes test; val is carved out of train/)
    catdog train     (per model, timed; seconds per epoch from the time-stamped Keras epoch lines)
    catdog evaluate  (test accuracy and ROC AUC, LiteRT)

and reports test accuracy, ROC AUC, seconds per epoch and the training wall time against the targets:
mobilenet_v2 >= 0.975 in <= 15 min, small_cnn >= 0.85 in <= 45 min, seed_cnn ~0.70 (the course notebook).

It also measures seed_cnn's input throughput: catdog.training.data.make_dataset (the training input pipeline)
against the course notebook's ImageDataGenerator(rescale=1/255).flow_from_directory(...), the same model
(catdog.training.model.seed_cnn), batch size and images, a few epochs each in a fresh process; images/s in
epochs 2 and later. Target: catdog >= 3x.

    python benchmarks/train_quality.py                                   # everything (~45 min on 2 cores)
    python benchmarks/train_quality.py --models seed_cnn --epochs-scale 0.1 --throughput-epochs 2   # smoke
    python benchmarks/train_quality.py --models small_cnn --epochs small_cnn=60   # a shorter small_cnn run
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DATASET_ZIP = SHARED / "datasets" / "cats_and_dogs_3k.zip"
WEIGHTS = SHARED / "weights" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.5_224_no_top.h5"
MODELS = ("mobilenet_v2", "seed_cnn", "small_cnn")

# Per-model overrides of params.yaml (sections base/train). mobilenet_v2 runs params.yaml as it is.
OVERRIDES: dict[str, dict[str, dict]] = {
    # The course notebook: 150 px, RMSprop 1e-3 (catdog.training.model.optimizer), batch 20, 15 epochs, no
    # augmentation, no early stopping, a 0.5 threshold.
    "seed_cnn": {
        "base": {"image_size": 150},
        "train": {"model": "seed_cnn", "batch_size": 20, "epochs": 15, "learning_rate": 0.001, "augment": False,
                  "patience": 1000, "fine_tune_epochs": 0, "threshold": "fixed", "fixed_threshold": 0.5},
    },
    # From scratch: 128 px, the pipeline's augmentation plus mixup (0.2) and decoupled weight decay (0.05),
    # Adam 1e-3 with cosine decay over 120 epochs (about 35 min on 2 cores); no early stopping (val loss is
    # noisy), the best val-loss weights are kept.
    "small_cnn": {
        "base": {"image_size": 128},
        "train": {"model": "small_cnn", "batch_size": 32, "epochs": 120, "learning_rate": 0.001, "augment": True,
                  "mixup": 0.2, "weight_decay": 0.05, "lr_schedule": "cosine", "patience": 120,
                  "fine_tune_epochs": 0},
    },
    "mobilenet_v2": {"train": {"model": "mobilenet_v2"}},
}
TARGETS = {  # model: (min test accuracy, max training minutes); seed_cnn: reproduce ~0.70
    "mobilenet_v2": (0.975, 15),
    "small_cnn": (0.85, 45),
    "seed_cnn": (0.65, None),
}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{e.get('PATH', '')}"
    e["TF_CPP_MIN_LOG_LEVEL"] = "2"
    e["PYTHONUNBUFFERED"] = "1"  # Keras' epoch lines arrive when they are printed, so their time stamps hold
    return e


def run_logged(args: list[str], log_path: Path, cwd: Path) -> tuple[float, list[tuple[float, str]]]:
    """Run a command, time-stamping every output line (stdout and stderr) into `log_path`; (wall s, lines)."""
    lines: list[tuple[float, str]] = []
    start = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as fh:
        proc = subprocess.Popen(args, cwd=cwd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
        assert proc.stdout is not None
        for raw in proc.stdout:
            t = time.perf_counter() - start
            line = raw.rstrip("\n")
            lines.append((t, line))
            fh.write(f"{t:9.2f} {line}\n")
            fh.flush()
        rc = proc.wait()
    wall = time.perf_counter() - start
    if rc != 0:
        tail = "\n".join(line for _, line in lines[-30:])
        raise SystemExit(f"{' '.join(args)} exited {rc} (log: {log_path}):\n{tail}")
    return wall, lines


def catdog(*args: str) -> list[str]:
    return [sys.executable, "-m", "catdog", *args]


def epoch_seconds(lines: list[tuple[float, str]]) -> list[dict]:
    """Per epoch: wall seconds from its 'Epoch k/N' line to its result line, and Keras' own (integer) figure."""
    epochs, begun = [], None
    for t, line in lines:
        m = re.match(r"^Epoch (\d+)/(\d+)", line)
        if m:
            begun = (int(m.group(1)), t)
            continue
        m = re.match(r"^\s*\d+/\d+ - (\d+)s - ", line)
        if m and begun is not None:
            acc = re.search(r"val_accuracy: ([0-9.]+)", line)
            epochs.append({"epoch": begun[0], "seconds": t - begun[1], "keras_seconds": int(m.group(1)),
                           "val_accuracy": float(acc.group(1)) if acc else None})
            begun = None
    return epochs


def median(values: list[float]) -> float:
    values = sorted(values)
    if not values:
        return float("nan")
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def write_params(base: dict, model: str, dest: Path, epochs: int | None, scale: float) -> dict:
    raw = json.loads(json.dumps(base))  # deep copy
    raw["fetch"]["dataset"] = {"url": str(DATASET_ZIP), "sha256": None}
    raw["fetch"]["weights"]["url"] = str(WEIGHTS)
    for section, values in OVERRIDES[model].items():
        raw.setdefault(section, {}).update(values)
    train = raw["train"]
    if epochs is not None:
        train["epochs"] = epochs
    if scale != 1.0:
        train["epochs"] = max(1, math.ceil(train["epochs"] * scale))
        if train.get("fine_tune_epochs"):
            train["fine_tune_epochs"] = max(1, math.ceil(train["fine_tune_epochs"] * scale))
    dest.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return raw


# ------------------------------------------------------------------------- input throughput (seed_cnn)


def throughput_child(kind: str, work: Path, epochs: int, size: int, batch: int) -> None:
    """In a fresh process: train catdog.training.model.seed_cnn on the train split through one input pipeline; print JSON."""
    sys.path.insert(0, str(REPO))
    from catdog.training.split import read_manifest
    from catdog.tfsetup import import_tf, seed_everything

    import_tf()
    import keras

    from catdog.training.model import seed_cnn

    seed_everything(42)
    rows = read_manifest(work / "data" / "split" / "train.csv")
    images = work / "data" / "raw" / "dataset"
    if kind == "catdog":
        from catdog.training.data import make_dataset

        data = make_dataset([images / p for p, _ in rows], [int(label == "dog") for _, label in rows], size, batch, seed=42, augment=False)
    else:
        try:
            from keras.preprocessing.image import ImageDataGenerator  # Keras 2 / tf_keras
        except ImportError:
            from keras.src.legacy.preprocessing.image import ImageDataGenerator  # Keras 3 keeps the real class here
        # The notebook's layout: one folder per class (hard links to the same train-split files).
        folder = work / "notebook_train"
        if not folder.exists():
            for path, label in rows:
                target = folder / f"{label}s" / Path(path).name
                target.parent.mkdir(parents=True, exist_ok=True)
                os.link(images / path, target)
        data = ImageDataGenerator(rescale=1 / 255).flow_from_directory(
            str(folder), target_size=(size, size), batch_size=batch, class_mode="binary"
        )
    model = seed_cnn(size)  # the notebook's rescale=1/255 then meets the model's own Rescaling: same cost, accuracy aside
    model.compile(optimizer=keras.optimizers.RMSprop(learning_rate=1e-3), loss="binary_crossentropy", metrics=["accuracy"])

    class Timer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds = []

        def on_epoch_begin(self, epoch, logs=None):
            self._t = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self._t)

    timer = Timer()
    model.fit(data, epochs=epochs, callbacks=[timer], verbose=2)

    # The input pipeline alone (no model), one more full pass: what it could feed a faster model.
    start = time.perf_counter()
    if kind == "catdog":
        for _ in data:
            pass
    else:
        for i in range(len(data)):
            data[i]
    input_only = time.perf_counter() - start
    print("THROUGHPUT_JSON " + json.dumps({"kind": kind, "n": len(rows), "epoch_seconds": timer.seconds,
                                           "input_only_images_per_s": len(rows) / input_only}), flush=True)


def input_throughput(work: Path, epochs: int, rounds: int, size: int, batch: int, logs: Path) -> dict:
    """Alternate the two pipelines `rounds` times (each a fresh process); per pipeline the best round counts."""
    runs: dict[str, list[dict]] = {"notebook": [], "catdog": []}
    for r in range(rounds):
        for kind in runs:
            log(f"input throughput, round {r + 1}: seed_cnn via the {kind} pipeline, {epochs} epochs ...")
            _, lines = run_logged(
                [sys.executable, str(Path(__file__).resolve()), "--_throughput", kind, "--workdir", str(work),
                 "--throughput-epochs", str(epochs), "--_size", str(size), "--_batch", str(batch)],
                logs / f"throughput_{kind}_{r + 1}.log", work,
            )
            data = next(json.loads(line.split(" ", 1)[1]) for _, line in lines if line.startswith("THROUGHPUT_JSON "))
            later = data["epoch_seconds"][1:] or data["epoch_seconds"]
            data["images_per_s"] = data["n"] / (sum(later) / len(later))
            runs[kind].append(data)
            log(f"   epochs {', '.join(f'{s:.1f}s' for s in data['epoch_seconds'])}: {data['images_per_s']:.0f} images/s (epochs >= 2); "
                f"input alone {data['input_only_images_per_s']:.0f} images/s")
    return {kind: {**max(rs, key=lambda d: d["images_per_s"]), "rounds": rs} for kind, rs in runs.items()}


# ------------------------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {','.join(MODELS)} ('' for none: only the throughput test)")
    ap.add_argument("--epochs", action="append", default=[], metavar="MODEL=N", help="per-model train.epochs override (repeatable)")
    ap.add_argument("--epochs-scale", type=float, default=1.0, help="multiply every model's epochs (and fine-tune epochs), for smoke runs")
    ap.add_argument("--throughput-epochs", type=int, default=3, help="epochs per pipeline in the seed_cnn input-throughput test (0 skips)")
    ap.add_argument("--throughput-rounds", type=int, default=2, help="alternating rounds of the two pipelines; best round each (default 2)")
    ap.add_argument("--workdir", type=Path, default=None, help="working folder (default: a new temp folder, kept)")
    ap.add_argument("--_throughput", choices=("catdog", "notebook"), help=argparse.SUPPRESS)
    ap.add_argument("--_size", type=int, default=150, help=argparse.SUPPRESS)
    ap.add_argument("--_batch", type=int, default=20, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args._throughput:
        throughput_child(args._throughput, args.workdir, args.throughput_epochs, args._size, args._batch)
        return

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if unknown := set(models) - set(MODELS):
        ap.error(f"unknown models: {', '.join(sorted(unknown))}")
    epochs_override = {}
    for item in args.epochs:
        name, _, n = item.partition("=")
        if name not in MODELS or not n.isdigit():
            ap.error(f"--epochs wants MODEL=N, got {item!r}")
        epochs_override[name] = int(n)
    for path in (DATASET_ZIP, WEIGHTS):
        if not path.is_file():
            raise SystemExit(f"missing {path}")

    work = (args.workdir or Path(tempfile.mkdtemp(prefix="catdog-train-bench-"))).resolve()
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log(f"working folder: {work}")
    base = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    started = time.perf_counter()

    params = {m: write_params(base, m, work / f"params_{m}.yaml", epochs_override.get(m), args.epochs_scale) for m in MODELS}
    first = work / f"params_{(models or ['seed_cnn'])[0]}.yaml"  # fetch and split read only sections every model shares
    data, raw = work / "data", work / "data" / "raw"
    run_logged(catdog("fetch", "--params", str(first), "--dataset-out", str(raw / "dataset"), "--weights-out", str(raw / "weights.h5"),
                      "--downloads", str(data / "downloads")), logs / "fetch.log", work)
    _, split_lines = run_logged(catdog("split", "--params", str(first), "--images", str(raw / "dataset"), "--out-dir", str(data / "split"),
                                       "--report", str(data / "split" / "report.json")), logs / "split.log", work)
    log(split_lines[-1][1])
    counts = json.loads((data / "split" / "report.json").read_text())["counts"]

    # Rows of models not rerun now are kept from an earlier run in the same working folder.
    previous = work / "results.json"
    results = json.loads(previous.read_text())["models"] if previous.exists() else {}
    for m in models:
        results.pop(m, None)
    for m in models:
        cfg = params[m]
        log(f"{m}: training ({cfg['base']['image_size']} px, {cfg['train']['epochs']} epochs"
            f"{' + ' + str(cfg['train']['fine_tune_epochs']) + ' fine-tune' if m == 'mobilenet_v2' and cfg['train'].get('fine_tune_epochs') else ''}) ...")
        p = str(work / f"params_{m}.yaml")
        wall, lines = run_logged(
            catdog("train", "--params", p, "--train", str(data / "split" / "train.csv"), "--val", str(data / "split" / "val.csv"),
                   "--images", str(raw / "dataset"), "--weights", str(raw / "weights.h5"), "--model-dir", str(work / f"models_{m}"),
                   "--live-dir", str(work / f"dvclive_{m}")),
            logs / f"train_{m}.log", work,
        )
        epochs = epoch_seconds(lines)
        run_logged(
            catdog("evaluate", "--params", p, "--model", str(work / f"models_{m}"), "--test", str(data / "split" / "test.csv"),
                   "--images", str(raw / "dataset"), "--metrics", str(work / f"metrics_{m}.json"), "--plots-dir", str(work / f"plots_{m}")),
            logs / f"evaluate_{m}.log", work,
        )
        test = json.loads((work / f"metrics_{m}.json").read_text())["test"]
        meta = json.loads((work / f"models_{m}" / "meta.json").read_text())
        results[m] = {
            "image_size": cfg["base"]["image_size"], "epochs_planned": cfg["train"]["epochs"] + (
                cfg["train"].get("fine_tune_epochs", 0) if m == "mobilenet_v2" else 0),
            "epochs_run": meta["epochs_run"], "train_wall_s": wall, "epoch_seconds": [e["seconds"] for e in epochs],
            "val_accuracy_per_epoch": [e["val_accuracy"] for e in epochs], "val_accuracy": meta["val_metrics"]["accuracy"],
            "test_accuracy": test["accuracy"], "test_ci95": test["accuracy_ci95"], "roc_auc": test["roc_auc"],
            "threshold": test["threshold"], "n_test": test["n"],
        }
        (work / "results.json").write_text(json.dumps({"models": results, "split": counts}, indent=2), encoding="utf-8")
        r = results[m]
        log(f"   {r['epochs_run']} epochs, {wall / 60:.1f} min; test accuracy {r['test_accuracy']:.4f}, ROC AUC {r['roc_auc']}")

    throughput = None
    if args.throughput_epochs:
        s = params["seed_cnn"]
        throughput = input_throughput(work, args.throughput_epochs, args.throughput_rounds, s["base"]["image_size"], s["train"]["batch_size"], logs)

    total = time.perf_counter() - started
    (work / "results.json").write_text(json.dumps({"models": results, "input_throughput": throughput, "split": counts,
                                                   "total_s": total}, indent=2), encoding="utf-8")

    print()
    print(f"train quality: train {counts['train']['total']}, val {counts['val']['total']}, test {counts['test']['total']} images; "
          f"{os.cpu_count()} cores; working folder {work}")
    header = f"{'model':<13} {'px':>4} {'epochs':>7} {'test acc':>9} {'95% CI':>15} {'ROC AUC':>8} {'s/epoch':>8} {'1st ep s':>9} {'train min':>10}  target"
    print(header)
    print("-" * (len(header) + 30))
    for m, r in results.items():
        acc_min, max_min = TARGETS[m]
        secs = r["epoch_seconds"]
        if m == "seed_cnn":
            verdict = f"~0.70 (notebook): {'REPRODUCED' if 0.65 <= r['test_accuracy'] <= 0.78 else 'NOT reproduced'}"
        else:
            ok_acc, ok_time = r["test_accuracy"] >= acc_min, r["train_wall_s"] / 60 <= max_min
            verdict = (f">= {acc_min} in <= {max_min} min: {'MET' if ok_acc and ok_time else 'MISSED'}"
                       f"{'' if ok_acc else ' (accuracy)'}{'' if ok_time else ' (time)'}")
        ci = r["test_ci95"]
        print(f"{m:<13} {r['image_size']:>4} {str(r['epochs_run']) + '/' + str(r['epochs_planned']):>7} {r['test_accuracy']:>9.4f} "
              f"{ci['low']:>7.4f}-{ci['high']:.4f} {r['roc_auc']:>8.4f} {median(secs[1:] or secs):>8.1f} {secs[0] if secs else float('nan'):>9.1f} "
              f"{r['train_wall_s'] / 60:>10.1f}  {verdict}")
    if earlier := [m for m in results if m not in models]:
        print(f"({', '.join(earlier)}: from an earlier run in this working folder)")
    print("s/epoch: median wall seconds of epochs >= 2 (train + val); train min: the whole `catdog train` subprocess "
          "(TensorFlow start-up, decoding, LiteRT export included)")
    if throughput:
        nb, cd = throughput["notebook"], throughput["catdog"]
        ratio = cd["images_per_s"] / nb["images_per_s"]
        print()
        print(f"seed_cnn input throughput ({throughput['catdog']['n']} train images, batch {params['seed_cnn']['train']['batch_size']}, "
              f"{params['seed_cnn']['base']['image_size']} px, {args.throughput_epochs} epochs each)")
        print(f"{'pipeline (best of ' + str(args.throughput_rounds) + ' alternating rounds)':<64} {'epoch s':>24} {'images/s (ep>=2)':>17}  all rounds")
        for name, d in (("notebook: ImageDataGenerator(rescale=1/255).flow_from_directory", nb), ("catdog.training.data.make_dataset", cd)):
            print(f"{name:<64} {', '.join(f'{s:.1f}' for s in d['epoch_seconds']):>24} {d['images_per_s']:>17.0f}  "
                  + ", ".join(f"{x['images_per_s']:.0f}" for x in d["rounds"]))
        print(f"catdog / notebook = {ratio:.2f}x   target >= 3x   {'MET' if ratio >= 3 else 'MISSED'}   (training epochs >= 2, best rounds)")
        nb_in = max(x["input_only_images_per_s"] for x in nb["rounds"])
        cd_in = max(x["input_only_images_per_s"] for x in cd["rounds"])
        print(f"input pipeline alone, no model (one more pass after training): notebook {nb_in:.0f}, catdog {cd_in:.0f} images/s "
              f"= {cd_in / nb_in:.1f}x; the model alone caps training at ~{cd['images_per_s']:.0f} images/s here")
    print(f"\ntotal benchmark wall time {total / 60:.1f} min; details in {work / 'results.json'} and {logs}")


if __name__ == "__main__":
    main()
