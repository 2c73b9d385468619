"""Batch labeling: one run lists a source, has an engine score it, and writes the one labels CSV.

The pieces live elsewhere: where files come from in `catdog.labeling.sources` (a folder or an S3 prefix), who
scores them in `catdog.labeling.engines` (local threads) and `catdog.labeling.ray_engine` (a Ray cluster), and the CSV with
its progress file and lock in `catdog.labeling.labels`. This module puts them together under one typed options
object, so the CLI, the benchmarks and the tests cannot pass them in the wrong order.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from catdog.errors import CatdogError, redact_url
from catdog.labeling.engines import Block
from catdog.labeling.labels import Decision, LabelsCSV, check_out_path, check_output, own_files, progress_path, resume_hint, run_lock
from catdog.progress import progress_bar
from catdog.labeling.jobrecord import JobRecord, file_sha256, model_digest, write_job_record
from catdog.labeling.runtime import ModelMeta, Predictor, load_predictor, resolve_model_file
from catdog.labeling.sources import Listing, Source, StoreError, files_digest, open_source, parse_shard, shard_of
from catdog.labeling.update import after, check_update_output, identified, identity_digest, merged, plan_update, write_files

ENGINES = ("local", "ray")

__all__ = ["PredictOptions", "RayOptions", "Summary", "check_counts", "decision_for", "predict", "parse_shard", "progress_path", "resume_hint", "shard_of"]


@dataclass(frozen=True)
class RayOptions:
    address: str | None = None  # None: Ray's own rules (RAY_ADDRESS, else a new local cluster)
    cpus_per_actor: int = 1  # each actor's LiteRT and decode threads
    actors: int | None = None  # None: the cluster's CPUs / cpus_per_actor


@dataclass(frozen=True)
class PredictOptions:
    source: str  # a folder, or s3://bucket/prefix
    model: Path  # bundle folder, or its model.tflite / model.keras
    out: Path
    batch_size: int = 64
    threshold: float | None = None  # None: the model's (meta.json)
    pet_threshold: float | None = None  # None: the model's (meta.json); label `neither` below it
    neither: bool = True  # False: never label `neither` (folders known to hold only cats and dogs)
    recursive: bool = True
    follow_links: bool = True
    shard: tuple[int, int] = (0, 1)
    resume: bool = False
    overwrite: bool = False
    update: bool = False  # keep the rows of --out whose files are unchanged; label only new and changed files
    runtime: str = "auto"
    engine: str = "local"
    workers: int | None = None  # local engine's decode threads; None: the CPUs this process may use
    max_pixels: int | None = None  # None: the limit the model was trained with
    s3_endpoint_url: str | None = None
    ray: RayOptions = field(default_factory=RayOptions)


@dataclass(frozen=True)
class Summary:
    out: Path
    ok: int  # rows in the CSV, an earlier interrupted run's included
    error: int
    seconds: float
    labeled_now: int  # files this run labeled (fewer than ok + error after --resume or with --update)
    neither: int | None = None  # ok rows labeled `neither`; None when the run could not say `neither`
    discarded: bool = False  # an interrupted run's progress was dropped (--overwrite without --resume starts over)
    kept: int = 0  # --update: rows kept from the earlier CSV (their files unchanged)
    dropped: int = 0  # --update: rows of the earlier CSV whose files are gone
    note: str | None = None  # --update: why no row could be kept, when there was an earlier CSV

    @property
    def rate(self) -> float:
        return self.labeled_now / self.seconds if self.seconds > 0 else 0.0


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def check_counts(batch_size: object, workers: object = None, max_pixels: object = None) -> None:
    """What the CLI's options check for the sizes of a run, for callers that pass them from Python: a one-line
    CatdogError naming the first that is not a whole number >= 1 (`workers` and `max_pixels` may be None)."""
    for name, value, optional in (("batch_size", batch_size, False), ("workers", workers, True), ("max_pixels", max_pixels, True)):
        if not (_is_count(value) or (optional and value is None)):
            raise CatdogError(f"invalid {name} {value!r}: must be a whole number >= 1")


def _check_options(options: PredictOptions) -> None:
    """The options the CLI checks while parsing (`parse_shard`, typer's minimums), checked again for a caller
    that built PredictOptions itself (the Python API): a shard (5, 2) would otherwise label no file at all."""
    check_counts(options.batch_size, options.workers, options.max_pixels)
    shard = options.shard
    if not (isinstance(shard, tuple) and len(shard) == 2 and all(isinstance(x, int) and not isinstance(x, bool) for x in shard)
            and 0 <= shard[0] < shard[1]):
        raise CatdogError(f"invalid shard {shard!r}: must be (K, N) with 0 <= K < N")


def _model_meta(options: PredictOptions) -> ModelMeta:
    """The bundle's meta.json, read without loading the model."""
    model_file, _ = resolve_model_file(options.model, options.runtime)
    return ModelMeta.read(model_file.parent / "meta.json")


def _model_digest(options: PredictOptions) -> str:
    """The content digest of the model file this run uses and its meta.json: the resume key and the job record's."""
    model_file, _ = resolve_model_file(options.model, options.runtime)
    return model_digest(model_file, model_file.parent / "meta.json")


def _listing(source: Source, options: PredictOptions) -> tuple[Listing, str]:
    """This run's files (its shard's) and the digest of the whole source's listing (the job record's `listing`:
    shards of one job must have seen the same files)."""
    spread = None
    if options.engine == "ray" and options.recursive:
        from catdog.labeling.ray_engine import ClusterSpread  # the folders or sub-prefixes are listed on the cluster's CPUs

        spread = ClusterSpread(options.ray.address)
    listing = source.list(options.recursive, options.follow_links, skip=own_files(options.out), spread=spread)
    whole = files_digest(listing.paths)
    k, n = options.shard
    if n > 1:
        listing = listing.only([rel for rel in listing.paths if shard_of(rel, n) == k])
    return listing, whole


def predict(options: PredictOptions, predictor: Predictor | None = None, say: Callable[[str], None] | None = None) -> Summary:
    """Label every file of `options.source` into the CSV `options.out` (columns path,label,p_dog,pet_score,status,error).

    `predictor` replaces the model the local engine would load (tests wrap it); the Ray engine's actors
    load the bundle themselves. `say` gets the one line an update prints before it relabels every file.
    """
    started = time.perf_counter()
    _check_options(options)
    if options.engine not in ENGINES:
        raise CatdogError(f"unknown engine {options.engine!r}: choose one of {', '.join(ENGINES)}")
    check_out_path(options.out)
    if options.engine == "ray":
        from catdog.labeling.ray_engine import require_ray

        require_ray()
    source = open_source(options.source, options.s3_endpoint_url)
    if predictor is None and not options.update:  # an update loads the model only if it has files to label
        predictor = load_predictor(options.model, options.runtime)
    meta = predictor.meta if predictor is not None else _model_meta(options)
    decision = decision_for(meta, options)
    out = options.out
    with run_lock(out), _left_cluster(options):
        if options.update:
            check_update_output(out, options.resume, options.overwrite)
            check_output(out, options.resume, overwrite=True)
        else:
            check_output(out, options.resume, options.overwrite)
        listing, whole = _listing(source, options)
        listing = identified(source, listing)
        files = (whole if options.shard[1] == 1 else files_digest(listing.paths)) + identity_digest(listing)
        model = _model_digest(options)
        same_files = {  # what must match for a row to be kept by a later --update
            "source": source.describe(),
            "endpoint": source.endpoint(),
            "model": model,
            "shard": list(options.shard),
            "recursive": options.recursive,
            "follow_links": options.follow_links,
            "max_pixels": options.max_pixels,
        }
        plan = plan_update(out, same_files, listing, options.overwrite) if options.update else None
        if plan is not None and plan.note and say is not None:
            say(plan.note)
        key = {
            **same_files,
            "threshold": decision.threshold,
            "pet_threshold": decision.pet_threshold,
            **({"update": plan.old_sha256} if plan is not None else {}),
        }
        labels = LabelsCSV(out, key, files, decision, options.resume)
        todo = listing if plan is None else plan.to_label
        steps = plan.steps if plan is not None else []
        if labels.resume_after is not None:
            todo = todo.only([rel for rel in todo.paths if rel > labels.resume_after])
            steps = after(plan, labels.resume_after) if plan is not None else []
        thresholds = {"threshold": decision.threshold, "pet_threshold": decision.pet_threshold}
        with labels, progress_bar(f"label {redact_url(source.describe())}", len(listing) - labels.ok - labels.error) as advance:
            if todo.paths and predictor is None:
                predictor = load_predictor(options.model, options.runtime)
            batches = _engine(source, todo, predictor, options, decision) if todo.paths else iter(())
            if plan is not None:  # kept rows copied as they are when the thresholds are the old CSV's
                batches = merged(plan, steps, batches, options.batch_size, copy=plan.old_decision == thresholds)
            try:
                for batch in batches:
                    if isinstance(batch, Block):  # rows the engine's workers formatted already
                        labels.write_block(batch.data, batch.counts, batch.last)
                        advance(batch.rows)
                    else:
                        labels.write(batch)
                        advance(len(batch))
            except StoreError as exc:  # the credentials or the store failed: the progress is kept (labels saves it)
                raise CatdogError(f"{exc}; fix it and rerun with {resume_hint(out)}") from None
            if labels.ok + labels.error != len(listing):
                raise CatdogError(f"internal error: {labels.ok + labels.error} rows written for {len(listing)} files")
            labels.finish(_finisher(
                options, listing, same_files, thresholds, _job_recorder(source, options, decision, meta, model, labels, whole)))
    return Summary(out, labels.ok, labels.error, time.perf_counter() - started, len(todo),
                   None if decision.pet_threshold is None else labels.counts.neither, labels.discarded,
                   kept=plan.kept if plan else 0, dropped=plan.dropped if plan else 0, note=plan.note if plan else None)


@contextmanager
def _left_cluster(options: PredictOptions) -> Iterator[None]:
    """A Ray run leaves the cluster at its end, also when it listed there and had nothing to label."""
    try:
        yield
    finally:
        if options.engine == "ray":
            from catdog.labeling.ray_engine import disconnect

            disconnect()


def decision_for(meta: ModelMeta, options: PredictOptions) -> Decision:
    """The labeling rule of a run: the model's thresholds unless the options override them; `neither` only when
    the options allow it and the model has a pet score."""
    threshold = meta.threshold if options.threshold is None else options.threshold
    if not 0 < threshold < 1:
        raise CatdogError(f"invalid threshold {threshold}: must be between 0 and 1")
    pet_threshold = meta.pet_threshold if options.pet_threshold is None else options.pet_threshold
    if pet_threshold is not None and not 0 < pet_threshold < 1:
        raise CatdogError(f"invalid pet threshold {pet_threshold}: must be between 0 and 1")
    if options.pet_threshold is not None and meta.pet_threshold is None:
        raise CatdogError("--pet-threshold: this model has no pet score (it was trained before catdog could say `neither`); retrain it")
    return Decision(meta.classes, threshold, pet_threshold if options.neither else None)


def _engine(source: Source, listing: Listing, predictor: Predictor, options: PredictOptions, decision: Decision):
    if options.engine == "ray":
        from catdog.labeling.ray_engine import score_ray

        return score_ray(source, listing, options, decision)
    from catdog.labeling.engines import score_local

    return score_local(source, listing, predictor, options.batch_size, options.workers, options.max_pixels)


def _finisher(options: PredictOptions, listing: Listing, same_files: dict, thresholds: dict,
              record: Callable[[Path, str], None]) -> Callable[[Path], None]:
    """What is written beside the finished CSV before it appears: `<out>.files` (the identities a later --update
    compares) and the job record, both with the CSV's sha256 (read once)."""

    def finish(partial: Path) -> None:
        sha256 = file_sha256(partial)
        write_files(options.out, sha256, same_files, thresholds, listing)
        record(partial, sha256)

    return finish


def _job_recorder(source: Source, options: PredictOptions, decision: Decision, meta: ModelMeta, model: str,
                  labels: LabelsCSV, listing: str):
    """Write `<out>.job.json` (what made the CSV; what `merge-labels`, `report` and `--update` read) before the
    CSV appears, for every run. Its pet_threshold is the run's even with `neither` off (then `neither` is false)."""
    pet_threshold = decision.pet_threshold if options.neither else (
        meta.pet_threshold if options.pet_threshold is None else options.pet_threshold)

    def record(partial: Path, csv_sha256: str | None = None) -> None:
        write_job_record(options.out, JobRecord(
            source=source.describe(), endpoint=source.endpoint(), model=model, threshold=decision.threshold,
            pet_threshold=pet_threshold, neither=options.neither, shard=options.shard, recursive=options.recursive,
            follow_links=options.follow_links, rows=labels.ok + labels.error, csv_sha256=csv_sha256 or file_sha256(partial),
            listing=listing,
        ))

    return record

