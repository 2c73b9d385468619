"""The `catdog` command line: one thin command per pipeline stage (parse, call one function, write, report).

Heavy modules (TensorFlow among them) are imported inside the commands, so `catdog --help` is fast.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from catdog.errors import CatdogError, printable, redact

app = typer.Typer(
    help="catdog: a reproducible cat/dog classifier pipeline and batch labeler.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ParamsOpt = Annotated[Path, typer.Option("--params", help="The params YAML file (e.g. params.yaml).")]


def _say(message: str) -> None:
    """One line for the user on stderr; user text in it (file names, a record's source) cannot move the cursor."""
    typer.echo(printable(message), err=True)


@app.callback()
def _global_options(
    verbose: Annotated[
        bool, typer.Option("--verbose", help="Show TensorFlow's and LiteRT's own log lines (or set CATDOG_LOG_LEVEL=debug).")
    ] = False,
) -> None:
    from catdog.logs import configure

    configure(verbose)


@app.command()
def fetch(
    params: ParamsOpt,
    dataset_out: Annotated[Path, typer.Option(help="Folder to extract the dataset archive into (replaced whole).")],
    weights_out: Annotated[Path, typer.Option(help="Path to write the backbone weights file to.")],
    downloads: Annotated[Path, typer.Option(help="Download cache: archives, partial downloads and their sha256 records.")],
) -> None:
    """Download (or copy) the dataset archive and backbone weights, verify sha256, extract safely."""
    from catdog.training.fetch import fetch as run
    from catdog.training.params import load_params

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
    from catdog.training.params import load_params
    from catdog.training.split import split_dataset, write_split

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
    from catdog.training.params import load_params
    from catdog.training.train import train as run

    result = run(load_params(params), train_csv, val_csv, images, weights, model_dir, live_dir)
    m = result.val_metrics
    _say(
        f"trained {result.epochs_run} epochs; val accuracy {m['accuracy']:.4f} at threshold {result.threshold:.3f}, "
        f"pet threshold {result.pet_threshold:.6f} -> {model_dir}"
    )


@app.command()
def evaluate(
    params: ParamsOpt,
    model: Annotated[Path, typer.Option(help="Model bundle folder or model file.")],
    test_csv: Annotated[Path, typer.Option("--test", help="Test manifest.")],
    images: Annotated[Path, typer.Option(help="Folder the manifest paths are relative to.")],
    metrics: Annotated[Path, typer.Option(help="Metrics JSON to write.")],
    plots_dir: Annotated[Path, typer.Option(help="Folder for plot data (CSV) and the contact sheet.")],
    nonpets: Annotated[str, typer.Option(help="Folder of photos that are neither cats nor dogs: report the share labeled neither per subfolder, and an AUROC (empty: none).")] = "",
) -> None:
    """Score the test split at the model's thresholds; write metrics and plots."""
    from catdog.training.evaluate import evaluate as run
    from catdog.training.params import load_params
    from catdog.labeling.runtime import load_predictor

    p = load_params(params)
    result = run(
        load_predictor(model), test_csv, images, metrics, plots_dir, p.evaluate.n_wrong, p.evaluate.batch_size,
        Path(nonpets) if nonpets else None,
    )
    t = result["test"]
    ci = t["accuracy_ci95"]
    _say(f"test accuracy {t['accuracy']:.4f} (95% CI {ci['low']:.4f}-{ci['high']:.4f}), ROC AUC {t['roc_auc']}, n {t['n']} -> {metrics}")
    if "neither" in result:
        n = result["neither"]
        line = f"test pets keeping their label {n['test_kept']:.4f} (accuracy {n['test_kept_accuracy']}) at pet threshold {n['pet_threshold']}"
        if "nonpets" in n:
            line += f"; non-pets labeled neither {n['nonpets']['neither']:.4f}, AUROC {n['nonpets']['roc_auc']}"
        _say(line)


@app.command("predict-folder")
def predict_folder(
    source: Annotated[str, typer.Argument(metavar="SOURCE", help="Folder of images to label, or an s3://bucket/prefix.")],
    model: Annotated[Path, typer.Option(envvar="CATDOG_MODEL", help="Model bundle folder, or its model.tflite / model.keras.")],
    out: Annotated[Path, typer.Option(help="CSV to write: path,label,p_dog,pet_score,status,error.")],
    batch_size: Annotated[int, typer.Option(min=1, help="Images per model call.")] = 64,
    threshold: Annotated[Optional[float], typer.Option(help="p_dog at or above which the label is dog (default: the model's).")] = None,
    pet_threshold: Annotated[Optional[float], typer.Option(help="pet_score below which the label is neither (default: the model's).")] = None,
    neither: Annotated[bool, typer.Option("--neither/--no-neither", help="Label images that are neither a cat nor a dog `neither` (--no-neither: only cat or dog).")] = True,
    recursive: Annotated[bool, typer.Option("--recursive/--no-recursive", help="Label files in subfolders too.")] = True,
    follow_links: Annotated[bool, typer.Option("--follow-links/--no-follow-links", help="Enter symlinked folders (each real folder once).")] = True,
    shard: Annotated[str, typer.Option(help="Label only shard K of N (0 <= K < N), chosen by a stable hash of each path.")] = "0/1",
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run from its saved progress.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing CSV at --out.")] = False,
    update: Annotated[bool, typer.Option(help="Update the CSV at --out: keep the rows of unchanged files (same path, size and mtime; S3: key, size and ETag), label new and changed ones, drop removed ones.")] = False,
    runtime: Annotated[str, typer.Option(help="auto (LiteRT if available), litert or keras.")] = "auto",
    workers: Annotated[Optional[int], typer.Option(min=1, help="Decoding threads of the local engine (default: the CPUs this process may use).")] = None,
    engine: Annotated[str, typer.Option(help="local (threads on this machine) or ray (a Ray cluster).")] = "local",
    ray_address: Annotated[Optional[str], typer.Option(help="Ray cluster to join (default: $RAY_ADDRESS, else a new local one).")] = None,
    ray_cpus_per_actor: Annotated[int, typer.Option(min=1, help="CPUs (LiteRT and decode threads) per Ray actor.")] = 1,
    ray_actors: Annotated[Optional[int], typer.Option(min=1, help="How many Ray actors (default: the cluster's free CPUs / CPUs per actor).")] = None,
    s3_endpoint_url: Annotated[Optional[str], typer.Option(envvar="CATDOG_S3_ENDPOINT_URL", help="S3-compatible endpoint for s3:// sources (default: AWS's).")] = None,
) -> None:
    """Label every file under SOURCE as cat, dog or neither into a CSV; bad files get status 'error' and a reason."""
    from catdog.labeling.predict import PredictOptions, RayOptions, parse_shard, predict, progress_path, resume_hint

    options = PredictOptions(
        source=source, model=model, out=out, batch_size=batch_size, threshold=threshold, pet_threshold=pet_threshold,
        neither=neither, recursive=recursive,
        follow_links=follow_links, shard=parse_shard(shard), resume=resume, overwrite=overwrite, update=update, runtime=runtime,
        engine=engine, workers=workers, s3_endpoint_url=s3_endpoint_url,
        ray=RayOptions(address=ray_address, cpus_per_actor=ray_cpus_per_actor, actors=ray_actors),
    )
    try:
        summary = predict(options, say=_say)
    except KeyboardInterrupt:
        saved = progress_path(out)
        hint = f"progress kept in {saved}; rerun with {resume_hint(out)} to continue" if saved.exists() else "nothing labeled yet"
        _say(f"interrupted: {hint}")
        raise typer.Exit(130) from None
    total = summary.ok + summary.error
    neither = f"; {summary.neither} of the ok neither a cat nor a dog" if summary.neither is not None else ""
    discarded = " (an interrupted run's progress was discarded: --overwrite without --resume starts over)" if summary.discarded else ""
    if update:
        _say(
            f"updated {total} rows{discarded}: kept {summary.kept}, labeled {summary.labeled_now}, dropped {summary.dropped}; "
            f"{summary.ok} ok, {summary.error} error{neither} in {summary.seconds:.1f}s -> {summary.out}"
        )
        return
    earlier = f" ({total - summary.labeled_now} of them by the interrupted run)" if total > summary.labeled_now else ""
    earlier += discarded
    _say(
        f"labeled {total} files{earlier}: {summary.ok} ok, {summary.error} error{neither} "
        f"in {summary.seconds:.1f}s ({summary.rate:.1f} images/s) -> {summary.out}"
    )


@app.command()
def report(
    labels: Annotated[Path, typer.Argument(metavar="LABELS_CSV", help="The labels CSV written by predict-folder.")],
    images: Annotated[str, typer.Option(metavar="SOURCE", help="The folder (or s3://bucket/prefix) the CSV was made from.")],
    out: Annotated[Path, typer.Option(help="HTML file to write (one self-contained page).")],
    model: Annotated[Optional[Path], typer.Option(envvar="CATDOG_MODEL", help="Model bundle the CSV was made with: its threshold and name.")] = None,
    threshold: Annotated[Optional[float], typer.Option(help="Threshold to mark and measure uncertainty from (default: the one in the CSV's job record, else the model's, else 0.5).")] = None,
    max_images: Annotated[int, typer.Option(min=0, max=1000, help="Thumbnails to show in all: 2/5 the most uncertain, the rest a sample per label.")] = 240,
    seed: Annotated[int, typer.Option(help="Seed of the random sample per label (the same CSV and seed give the same page).")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing file at --out.")] = False,
    s3_endpoint_url: Annotated[Optional[str], typer.Option(envvar="CATDOG_S3_ENDPOINT_URL", help="S3-compatible endpoint for s3:// sources (default: AWS's).")] = None,
) -> None:
    """Write an HTML report of a labels CSV: counts, p_dog histogram, uncertain images, samples, errors."""
    from catdog.labeling.report import ReportOptions, write_report

    options = ReportOptions(
        threshold=threshold, model=model, max_images=max_images, seed=seed, overwrite=overwrite, s3_endpoint_url=s3_endpoint_url,
    )
    result = write_report(labels, images, out, options)
    unreadable = f", {result.unreadable} of them unreadable now" if result.unreadable else ""
    neither = f"; {result.neither} of the ok neither a cat nor a dog" if result.neither else ""
    _say(
        f"report of {result.rows} rows ({result.ok} ok, {result.error} error{neither}), {result.shown} images shown{unreadable} "
        f"-> {result.out}"
    )


@app.command("merge-labels")
def merge_labels(
    out: Annotated[Path, typer.Argument(metavar="OUT", help="The merged CSV to write.")],
    shards: Annotated[list[Path], typer.Argument(metavar="SHARD_CSV", help="The CSVs of `predict-folder --shard K/N`, K = 0..N-1, in any order.")],
    overwrite: Annotated[bool, typer.Option(help="Replace an existing file at OUT.")] = False,
) -> None:
    """Merge the shard CSVs of one sharded run into the CSV an unsharded run writes, checking every shard."""
    from catdog.labeling.merge import MergeOptions
    from catdog.labeling.merge import merge_labels as run

    summary = run(MergeOptions(out=out, shards=tuple(shards), overwrite=overwrite))
    neither = f"; {summary.neither} of the ok neither a cat nor a dog" if summary.neither is not None else ""
    _say(f"merged {summary.shards} shards of {summary.source}: {summary.rows} rows ({summary.ok} ok, {summary.error} error){neither} -> {summary.out}")


@app.command("export-xlsx")
def export_xlsx(
    labels: Annotated[Path, typer.Argument(metavar="LABELS_CSV", help="The labels CSV written by predict-folder or merge-labels.")],
    out: Annotated[Path, typer.Option(help="The .xlsx workbook to write.")],
    overwrite: Annotated[bool, typer.Option(help="Replace an existing file at --out.")] = False,
) -> None:
    """Write a labels CSV as an .xlsx that is safe to open in a spreadsheet: file names stay text (never formulas,
    numbers or dates), p_dog and pet_score are numbers."""
    from catdog.labeling.export import export_xlsx as run

    result = run(labels, out, overwrite)
    sheets = f" on {result.sheets} sheets" if result.sheets > 1 else ""
    _say(f"exported {result.rows} rows{sheets} -> {result.out}")


def main() -> None:
    """Entry point: run the app, turning expected failures into one-line errors."""
    try:
        app()
    except CatdogError as exc:
        typer.echo(f"error: {printable(redact(str(exc)))}", err=True)  # no credentials, no terminal escapes
        sys.exit(1)
    except OSError as exc:  # e.g. an unwritable output folder or a full disk
        # A failed rename (os.replace of an atomic write) names the hidden temporary file first and the output second.
        named = exc.filename2 or exc.filename
        where = f"{named}: " if named else ""
        typer.echo(f"error: {printable(redact(f'{where}{exc.strerror or exc}'))}", err=True)
        sys.exit(1)
    # Ctrl-C: typer itself exits 130 (predict-folder first says how to resume).
