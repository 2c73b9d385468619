"""The Ray engine: the driver's listing is handed to Ray Data, scored by an actor pool, and read back in order.

Each actor loads the bundle once (shipped through the object store, so nodes need no copy of it), decodes
with `catdog.labeling.engines.decode` (the same `load_image` as training) on as many threads as the CPUs Ray gives
it, and returns, for every input row, its index, p_dog or its one-line reason. The driver checks that the
indices come back complete and in order before any row reaches the CSV, so a run never writes a CSV with
missing rows. `ray.data.read_images` is not used: one corrupt file would fail or drop its whole block.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from catdog.cpus import usable_cpus
from catdog.labeling.engines import decode, score_batch
from catdog.labeling.labels import Scored
from catdog.errors import CatdogError
from catdog.logs import is_verbose, native_stderr_filtered_live
from catdog.labeling.runtime import resolve_model_file
from catdog.labeling.sources import Listing, LocalSource, Source

if TYPE_CHECKING:
    from catdog.labeling.predict import PredictOptions

RETRIES = 4  # restarts of a dead actor, and reruns of a batch it was running
BLOCKS_PER_BATCH = 4
ACTOR_WAIT_S = 600  # how long the actor pool may wait for CPUs before the run fails (Ray's default: for ever)  # rows per Ray block = batch size x this: small enough to spread, large enough to be cheap


def require_ray() -> None:
    """Fail with one line when Ray Data is not installed."""
    try:
        import ray.data  # noqa: F401
    except ImportError:
        raise CatdogError('--engine ray needs Ray Data: pip install "catdog[ray]" (or pip install "ray[data]")') from None


class Labeler:
    """A Ray Data actor: one model, one small decode pool, called with batches of {"i", "rel", "problem"}."""

    def __init__(self, source: Source, model_name: str, bundle: list, runtime: str, threads: int, max_pixels: int | None):
        from concurrent.futures import ThreadPoolExecutor

        import ray

        from catdog.labeling.engines import large_decode_gate
        from catdog.labeling.runtime import load_predictor

        model_bytes, meta_bytes = ray.get(bundle[0])  # a reference the driver holds for the whole run
        with tempfile.TemporaryDirectory(prefix="catdog-model-") as tmp:  # LiteRT keeps the model mapped
            folder = Path(tmp)
            (folder / model_name).write_bytes(model_bytes)
            (folder / "meta.json").write_bytes(meta_bytes)
            self.predictor = load_predictor(folder / model_name, runtime, threads=threads)
        self.source = source
        self.size = self.predictor.meta.image_size
        self.max_pixels = self.predictor.meta.max_pixels if max_pixels is None else max_pixels
        self.pool = ThreadPoolExecutor(max_workers=threads)
        self.gate = large_decode_gate()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rels = [bytes(r).decode("utf-8", "surrogateescape") for r in batch["rel"]]
        problems = [bytes(p).decode("utf-8", "surrogateescape") or None for p in batch["problem"]]
        decoded = list(self.pool.map(lambda rp: decode(self.source, rp[0], rp[1], self.size, self.max_pixels, self.gate), zip(rels, problems)))
        scored = score_batch(rels, decoded, self.predictor)
        return {
            "i": np.asarray(batch["i"], dtype=np.int64),
            "p_dog": np.array([np.nan if p is None else p for _, p, _, _ in scored], dtype=np.float64),
            "pet": np.array([np.nan if q is None else q for _, _, q, _ in scored], dtype=np.float64),
            "reason": np.array([(r or "").encode("utf-8", "backslashreplace") for _, _, _, r in scored], dtype=object),
        }


def _reason(exc: BaseException) -> str:
    """The one line that says why: a catdog error raised in an actor (e.g. the store failed), else Ray's own."""
    seen, link = set(), exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        if isinstance(link, CatdogError):
            return str(link)
        link = getattr(link, "cause", None) or link.__cause__
    return " ".join(str(exc).split())[:300] or type(exc).__name__


def _connect(address: str | None) -> None:
    import ray

    own = {}
    if address is None and not os.environ.get("RAY_ADDRESS"):
        # A cluster of our own on this machine: loopback only, no dashboard, no usage report, and only the
        # CPUs this process may use (Ray would count every core of the node).
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        own = {"num_cpus": usable_cpus()}
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    verbose = is_verbose()
    try:
        # The driver's AWS settings (credentials, region, endpoint) reach the actors that read S3 objects.
        aws = {key: value for key, value in os.environ.items() if key.startswith("AWS_")}
        ray.init(
            address=address, include_dashboard=False, log_to_driver=verbose, runtime_env={"env_vars": aws} if aws else None,
            logging_level=logging.INFO if verbose else logging.ERROR, ignore_reinit_error=True, **own,
        )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise CatdogError(f"cannot connect to the Ray cluster {address or os.environ.get('RAY_ADDRESS') or '(local)'}: {' '.join(str(exc).split())[:200]}") from None
    if not verbose:
        for name in ("ray", "ray.data", "ray._private"):
            logging.getLogger(name).setLevel(logging.ERROR)


def _dataset(listing: Listing, batch_size: int):
    import pyarrow as pa
    import ray.data

    rows = batch_size * BLOCKS_PER_BATCH
    paths, problems = listing.paths, listing.problems
    tables = []
    for start in range(0, len(paths), rows):
        chunk = paths[start : start + rows]
        tables.append(pa.table({
            "i": pa.array(range(start, start + len(chunk)), pa.int64()),
            "rel": pa.array([r.encode("utf-8", "surrogateescape") for r in chunk], pa.binary()),
            "problem": pa.array([problems.get(r, "").encode("utf-8", "surrogateescape") for r in chunk], pa.binary()),
        }))
    return ray.data.from_arrow(tables)


def score_ray(source: Source, listing: Listing, options: PredictOptions) -> Iterator[list[Scored]]:
    """Yield batches in listing order, scored on the Ray cluster of `options.ray.address`."""
    if not listing.paths:
        return
    model_file, runtime = resolve_model_file(options.model, options.runtime)
    if runtime != "litert":
        raise CatdogError("--engine ray runs the bundle's model.tflite with LiteRT: give a bundle with model.tflite (or --runtime litert)")
    if isinstance(source, LocalSource):  # the actors' working folder is not the driver's
        source = LocalSource(source.describe())
    with native_stderr_filtered_live(), warnings.catch_warnings():
        if not is_verbose():  # Ray Data's advice to its own developers ("the operator only received 1 input")
            warnings.filterwarnings("ignore", module=r"ray(\.|$)")
        yield from _score(source, listing, model_file, runtime, options)


def _score(source: Source, listing: Listing, model_file: Path, runtime: str, options: PredictOptions) -> Iterator[list[Scored]]:
    import ray
    import ray.data

    _connect(options.ray.address)
    try:
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True
        context.enable_progress_bars = False
        cpus = options.ray.cpus_per_actor
        largest = max((node["Resources"].get("CPU", 0) for node in ray.nodes() if node.get("Alive")), default=0)
        if cpus > largest:  # Ray would wait for such a node for ever, saying nothing
            raise CatdogError(f"--ray-cpus-per-actor {cpus}: no node of the cluster has that many CPUs (the largest has {largest:g})")
        actors = options.ray.actors or max(1, int(ray.available_resources().get("CPU", 1) // cpus))
        context.wait_for_min_actors_s = ACTOR_WAIT_S
        bundle = ray.put((model_file.read_bytes(), (model_file.parent / "meta.json").read_bytes()))
        with warnings.catch_warnings():  # Ray 2.60 deprecates actor options as keywords; nothing replaces them yet
            warnings.simplefilter("ignore", DeprecationWarning)
            scored = _dataset(listing, options.batch_size).map_batches(
                Labeler,
                # The bundle goes into the object store once; actors get a reference (inside a list, so Ray
                # does not resolve it for them) that the driver keeps alive, so a restarted actor loads it again.
                fn_constructor_kwargs={
                    "source": source, "model_name": model_file.name, "bundle": [bundle], "runtime": runtime,
                    "threads": cpus, "max_pixels": options.max_pixels,
                },
                batch_size=options.batch_size,
                batch_format="numpy",
                zero_copy_batch=True,
                num_cpus=cpus,
                # All actors start at once: growing the pool one actor at a time costs seconds per actor.
                compute=ray.data.ActorPoolStrategy(size=actors),
                # A worker process that dies is replaced and its batch run again, a bounded number of times
                # (Ray Data's default is forever: a file that crashes its decoder would hang the run).
                max_restarts=RETRIES,
                max_task_retries=RETRIES,
            )
        expected = 0
        try:
            for out in scored.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2):
                indices = out["i"]
                if len(indices) and not np.array_equal(indices, np.arange(expected, expected + len(indices))):
                    raise CatdogError(f"the Ray engine returned rows out of order at row {expected}; progress is kept: rerun with --resume")
                rows = []
                for i, p, q, reason in zip(indices, out["p_dog"], out["pet"], out["reason"]):
                    text = bytes(reason).decode("utf-8")
                    pet = None if np.isnan(q) else float(q)
                    rows.append((listing.paths[i], None, None, text) if text else (listing.paths[i], float(p), pet, None))
                expected += len(indices)
                yield rows
        except CatdogError:
            raise
        except Exception as exc:  # noqa: BLE001 - a task that failed after its retries ends the run, rows kept
            raise CatdogError(f"the Ray run failed after {expected} rows: {_reason(exc)}; rerun with --resume") from None
        if expected != len(listing.paths):
            raise CatdogError(f"the Ray engine returned {expected} of {len(listing.paths)} rows; progress is kept: rerun with --resume")
    finally:
        ray.shutdown()
