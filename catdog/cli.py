"""The `catdog` command line: one thin command per pipeline stage (parse, call one function, write, report).

Heavy modules (TensorFlow among them) are imported inside the commands, so `catdog --help` is fast.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from catdog.errors import CatdogError

app = typer.Typer(
    help="catdog: a reproducible cat/dog classifier pipeline and batch labeler.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ParamsOpt = Annotated[Path, typer.Option("--params", help="The params YAML file (e.g. params.yaml).")]


def _say(message: str) -> None:
    typer.echo(message, err=True)


@app.command()
def fetch(
    params: ParamsOpt,
    dataset_out: Annotated[Path, typer.Option(help="Folder to extract the dataset archive into (replaced whole).")],
    weights_out: Annotated[Path, typer.Option(help="Path to write the backbone weights file to.")],
    downloads: Annotated[Path, typer.Option(help="Download cache: archives, partial downloads and their sha256 records.")],
) -> None:
    """Download (or copy) the dataset archive and backbone weights, verify sha256, extract safely."""
    from catdog.fetch import fetch as run
    from catdog.params import load_params

    dataset, weights = run(load_params(params).fetch, dataset_out, weights_out, downloads)
    for item, dest in ((dataset, dataset_out), (weights, weights_out)):
        _say(f"fetched {item.path.name} ({item.size:,} bytes, sha256 {item.sha256[:16]}…) -> {dest}")


@app.command()
def split(
    params: ParamsOpt,
    images: Annotated[Path, typer.Option(help="The extracted dataset folder.")],
    out_dir: Annotated[Path, typer.Option(help="Folder for train.csv, val.csv and test.csv.")],
    report: Annotated[Path, typer.Option(help="JSON report: counts, rejected files, duplicates.")],
) -> None:
    """Validate every image and write seeded, stratified, duplicate-free train/val/test manifests."""
    from catdog.params import load_params
    from catdog.split import split_dataset, write_split

    p = load_params(params)
    result = split_dataset(images, p.split, p.base.seed)
    write_split(result, out_dir, report)
    summary = result.report()
    counts = ", ".join(f"{name} {c['total']}" for name, c in summary["counts"].items())
    _say(f"split {summary['n_images']} images: {counts}; rejected {summary['n_rejected']}, duplicates {summary['n_duplicates']}")


@app.command()
def train(
    params: ParamsOpt,
    train_csv: Annotated[Path, typer.Option("--train", help="Training manifest.")],
    val_csv: Annotated[Path, typer.Option("--val", help="Validation manifest (early stopping, threshold).")],
    images: Annotated[Path, typer.Option(help="Folder the manifest paths are relative to.")],
    model_dir: Annotated[Path, typer.Option(help="Output model bundle folder (model.keras, model.tflite, meta.json).")],
    live_dir: Annotated[Path, typer.Option(help="dvclive folder for per-epoch training logs.")],
    weights: Annotated[Optional[Path], typer.Option(help="ImageNet backbone weights (.h5), for mobilenet_v2.")] = None,
) -> None:
    """Train the model named in params and save the model bundle."""
    from catdog.params import load_params
    from catdog.train import train as run

    result = run(load_params(params), train_csv, val_csv, images, weights, model_dir, live_dir)
    m = result.val_metrics
    _say(f"trained {result.epochs_run} epochs; val accuracy {m['accuracy']:.4f} at threshold {result.threshold:.3f} -> {model_dir}")


@app.command()
def evaluate(
    params: ParamsOpt,
    model: Annotated[Path, typer.Option(help="Model bundle folder or model file.")],
    test_csv: Annotated[Path, typer.Option("--test", help="Test manifest.")],
    images: Annotated[Path, typer.Option(help="Folder the manifest paths are relative to.")],
    metrics: Annotated[Path, typer.Option(help="Metrics JSON to write.")],
    plots_dir: Annotated[Path, typer.Option(help="Folder for plot data (CSV) and the contact sheet.")],
) -> None:
    """Score the test split at the model's threshold; write metrics and plots."""
    from catdog.evaluate import evaluate as run
    from catdog.params import load_params
    from catdog.runtime import load_predictor

    p = load_params(params)
    result = run(load_predictor(model), test_csv, images, metrics, plots_dir, p.evaluate.n_wrong, p.evaluate.batch_size)
    t = result["test"]
    ci = t["accuracy_ci95"]
    _say(f"test accuracy {t['accuracy']:.4f} (95% CI {ci['low']:.4f}-{ci['high']:.4f}), ROC AUC {t['roc_auc']}, n {t['n']} -> {metrics}")


@app.command("predict-folder")
def predict_folder(
    folder: Annotated[Path, typer.Argument(help="Folder of images to label.")],
    model: Annotated[Path, typer.Option(envvar="CATDOG_MODEL", help="Model bundle folder, or its model.tflite / model.keras.")],
    out: Annotated[Path, typer.Option(help="CSV to write: path,label,p_dog,status,error.")],
    batch_size: Annotated[int, typer.Option(min=1, help="Images per model call.")] = 64,
    threshold: Annotated[Optional[float], typer.Option(help="p_dog at or above which the label is dog [default: the model's].")] = None,
    recursive: Annotated[bool, typer.Option("--recursive/--no-recursive", help="Label files in subfolders too.")] = True,
    shard: Annotated[str, typer.Option(help="Label only shard K of N (0 <= K < N), chosen by a stable hash of each path.")] = "0/1",
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run from its saved progress.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing CSV at --out.")] = False,
    runtime: Annotated[str, typer.Option(help="auto (LiteRT if available), litert or keras.")] = "auto",
    workers: Annotated[Optional[int], typer.Option(min=1, help="Decoding threads [default: all cores].")] = None,
) -> None:
    """Label every file under FOLDER as cat or dog into a CSV; bad files get status 'error' and a reason."""
    from catdog.predict import parse_shard, progress_path
    from catdog.predict import predict_folder as run
    from catdog.runtime import load_predictor

    shard_k_n = parse_shard(shard)
    try:
        summary = run(
            folder, load_predictor(model, runtime), model, out, batch_size, threshold, recursive,
            shard_k_n, resume, overwrite, workers,
        )
    except KeyboardInterrupt:
        saved = progress_path(out)
        hint = f"progress kept in {saved}; rerun with --resume to continue" if saved.exists() else "nothing labeled yet"
        typer.echo(f"interrupted: {hint}", err=True)
        raise typer.Exit(130) from None
    total = summary.ok + summary.error
    earlier = f" ({total - summary.labeled_now} of them by the interrupted run)" if total > summary.labeled_now else ""
    _say(
        f"labeled {total} files{earlier}: {summary.ok} ok, {summary.error} error "
        f"in {summary.seconds:.1f}s ({summary.rate:.1f} images/s) -> {summary.out}"
    )


def main() -> None:
    """Entry point: run the app, turning expected failures into one-line errors."""
    try:
        app()
    except CatdogError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except OSError as exc:  # e.g. an unwritable output folder or a full disk
        where = f"{exc.filename}: " if exc.filename else ""
        typer.echo(f"error: {where}{exc.strerror or exc}", err=True)
        sys.exit(1)
    # Ctrl-C: typer itself exits 130 (predict-folder first says how to resume).
