"""The Ray engine: the driver's listing is handed to Ray Data in blocks, each block is scored and formatted by an
actor, and the driver checks the blocks and appends their bytes to the CSV in order.

Each actor loads the bundle once (shipped through the object store, so nodes need no copy of it) and labels a
block of up to BLOCK_ROWS files with the local engine's pieces (`decode`, the same `load_image` as training, on
as many threads as the CPUs Ray gives it, then `score_batch`: model calls of `--batch-size` images), formats
the rows with `format_rows` (the one way a row is written) and hands back ONE object per block: its first index,
row count, CSV bytes, counts and last path. So the driver handles a few objects per second instead of one
Python object per row. It refuses a block that does not start where the previous one ended or whose last path
is not the listing's (a block come back twice, out of order or for other files) before any of it reaches the
CSV, so a run never writes a CSV with missing, doubled or misplaced rows. `ray.data.read_images` is not used:
one corrupt file would fail or drop its whole block.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from catdog.cpus import usable_cpus
from catdog.errors import CatdogError
from catdog.labeling.engines import Block, decode, score_batch
from catdog.labeling.labels import Decision, RowCounts, Scored, format_rows
from catdog.logs import is_verbose, native_stderr_filtered_live
from catdog.labeling.runtime import resolve_model_file
from catdog.labeling.sources import Listing, LocalSource, Source

if TYPE_CHECKING:
    import pyarrow as pa

    from catdog.labeling.predict import PredictOptions

RETRIES = 4  # restarts of a dead actor, and reruns of a block it was running
ACTOR_WAIT_S = 600  # how long the actor pool may wait for CPUs before the run fails (Ray's default: for ever)
# Rows per block. A block is what an actor is given and hands back whole: the smaller, the shorter the last
# one an actor finishes while the others wait (BLOCKS_PER_ACTOR blocks each); but the driver pays ~20 ms per
# block here (not per row), so a large cluster gets blocks of at least BLOCK_ROWS_PER_ACTOR rows per actor
# (while each still gets MIN_BLOCKS_PER_ACTOR), and no block has over BLOCK_ROWS.
BLOCK_ROWS = 16384
BLOCKS_PER_ACTOR = 64
BLOCK_ROWS_PER_ACTOR = 2
MIN_BLOCKS_PER_ACTOR = 4


def require_ray() -> None:
    """Fail with one line when Ray Data is not installed."""
    try:
        import ray.data  # noqa: F401
    except ImportError:
        raise CatdogError('--engine ray needs Ray Data: pip install "catdog[ray]" (or pip install "ray[data]")') from None


def block_rows(rows: int, actors: int, batch_size: int) -> int:
    """Rows per block for `rows` files on `actors` actors: a whole number of batches (see BLOCK_ROWS)."""
    actors = max(actors, 1)
    wanted = -(-rows // (actors * BLOCKS_PER_ACTOR))
    least = min(BLOCK_ROWS_PER_ACTOR * actors, -(-rows // (actors * MIN_BLOCKS_PER_ACTOR)))
    wanted = min(max(wanted, least, batch_size), max(BLOCK_ROWS, batch_size))
    return -(-wanted // batch_size) * batch_size


def pack_block(start: int, scored: Iterable[Scored], decision: Decision) -> pa.Table:
    """A block's rows as one row of a table: what an actor hands back to the driver."""
    import pyarrow as pa

    data, counts, last = format_rows(scored, decision)
    return pa.table({
        "start": pa.array([start], pa.int64()),
        "rows": pa.array([counts.ok + counts.error], pa.int64()),
        "data": pa.array([data], pa.large_binary()),
        "ok": pa.array([counts.ok], pa.int64()),
        "error": pa.array([counts.error], pa.int64()),
        "neither": pa.array([counts.neither], pa.int64()),
        "last": pa.array([last], pa.string()),
    })


def unpack_blocks(table: pa.Table) -> Iterator[Block]:
    """The blocks in a table of `pack_block` rows (Ray may hand back several in one)."""
    columns = table.to_pydict()
    for start, rows, data, ok, error, neither, last in zip(
        columns["start"], columns["rows"], columns["data"], columns["ok"], columns["error"], columns["neither"], columns["last"],
    ):
        yield Block(start, rows, data, RowCounts(ok, error, neither), last)


def checked_blocks(blocks: Iterable[Block], paths: list[str]) -> Iterator[Block]:
    """`blocks`, each checked before it is passed on: it starts where the previous one ended, holds rows that
    add up, and ends on the listing's path at that row. A block that comes back twice, out of order or short
    is refused (a CatdogError, progress kept) and never passed on; so is a run that ends early."""
    expected = 0
    for block in blocks:
        end = block.start + block.rows
        if block.start != expected or block.rows < 1 or end > len(paths) or block.counts.ok + block.counts.error != block.rows \
                or block.last != paths[end - 1]:
            what = "twice" if block.start < expected else "out of order" if block.start > expected else "damaged"
            raise CatdogError(
                f"the Ray engine returned rows {block.start}-{end - 1} {what} (row {expected} was due); nothing of it was "
                "written, progress is kept: rerun with --resume"
            )
        expected = end
        yield block
    if expected != len(paths):
        raise CatdogError(f"the Ray engine returned {expected} of {len(paths)} rows; progress is kept: rerun with --resume")


class Labeler:
    """A Ray Data actor: one model; called with a block of {"i", "rel", "problem"} rows, returns `pack_block`'s
    one row for it."""

    def __init__(
        self, source: Source, model_name: str, bundle: list, runtime: str, threads: int, max_pixels: int | None,
        batch_size: int, decision: Decision,
    ):
        import ray

        from catdog.labeling.runtime import load_predictor

        model_bytes, meta_bytes = ray.get(bundle[0])  # a reference the driver holds for the whole run
        with tempfile.TemporaryDirectory(prefix="catdog-model-") as tmp:  # LiteRT keeps the model mapped
            folder = Path(tmp)
            (folder / model_name).write_bytes(model_bytes)
            (folder / "meta.json").write_bytes(meta_bytes)
            self.predictor = load_predictor(folder / model_name, runtime, threads=threads)
        from concurrent.futures import ThreadPoolExecutor

        from catdog.labeling.engines import large_decode_gate

        self.source, self.threads, self.batch_size, self.decision = source, threads, batch_size, decision
        self.size = self.predictor.meta.image_size
        self.max_pixels = self.predictor.meta.max_pixels if max_pixels is None else max_pixels
        self.pool = ThreadPoolExecutor(max_workers=threads)
        self.gate = large_decode_gate()

    def __call__(self, block: pa.Table) -> pa.Table:
        indices = block.column("i")
        start = indices[0].as_py()
        if indices[len(indices) - 1].as_py() != start + len(indices) - 1:  # Ray Data hands blocks over whole
            raise CatdogError(f"the Ray engine got a block that is not contiguous at row {start}")
        rels = block.column("rel").to_pylist()
        problems = {rel: p.decode("utf-8", "surrogateescape") for rel, p in zip(rels, block.column("problem").to_pylist()) if p}
        scored: list[Scored] = []
        for at in range(0, len(rels), self.batch_size):
            batch = rels[at : at + self.batch_size]
            # Decode, then score: the actor has `threads` CPUs, so decoding ahead of the model (as the local
            # engine does with a spare core) would only make its threads take turns.
            step = -(-len(batch) // self.threads)
            chunks = [batch[i : i + step] for i in range(0, len(batch), step)]
            decoded = [d for part in self.pool.map(self._decode_all, chunks, [problems] * len(chunks)) for d in part]
            scored += score_batch(batch, decoded, self.predictor)
        return pack_block(start, scored, self.decision)

    def _decode_all(self, rels: list[str], problems: dict[str, str]) -> list:
        return [decode(self.source, rel, problems.get(rel), self.size, self.max_pixels, self.gate) for rel in rels]


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
        # "local": a cluster of our own even when another one runs here (or a dead one left
        # /tmp/ray/ray_current_cluster behind), which ray.init would otherwise try to join.
        own = {"num_cpus": usable_cpus()}
        address = "local"
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
        raise CatdogError(f"cannot connect to the Ray cluster {'(local)' if address == 'local' else address or os.environ.get('RAY_ADDRESS')}: {' '.join(str(exc).split())[:200]}") from None
    if not verbose:
        for name in ("ray", "ray.data", "ray._private"):
            logging.getLogger(name).setLevel(logging.ERROR)


class ClusterSpread:
    """Work of the driver's listing run as Ray tasks on the cluster's CPUs (`sources.Spread`): a folder's
    subfolders are walked, and an S3 prefix's sub-prefixes listed and parsed, there, so ten million files are not
    listed by the driver alone."""

    def __init__(self, address: str | None):
        import ray

        with native_stderr_filtered_live():
            _connect(address)
        self.width = max(1, int(ray.cluster_resources().get("CPU", 1)))

    def __call__(self, fn, calls: list[tuple]) -> list:
        import ray

        task = ray.remote(num_cpus=1, max_retries=RETRIES)(fn)  # retried when a worker dies, not on a listing error
        free = ray.available_resources().get("CPU", 0)
        with native_stderr_filtered_live():
            refs = [task.remote(*args) for args in calls]
            try:
                parts = ray.get(refs)
            except Exception as exc:  # noqa: BLE001 - a RayTaskError around the listing's own one-line error
                for ref in refs:
                    ray.cancel(ref)
                raise CatdogError(_reason(exc)) from None
        # The tasks hand their CPUs back a moment after their results arrive; the engine sizes its actor pool
        # by the free CPUs next, so wait for them (briefly: another job may have taken some meanwhile).
        deadline = time.monotonic() + 2
        while ray.available_resources().get("CPU", 0) < free and time.monotonic() < deadline:
            time.sleep(0.02)
        return parts


def disconnect() -> None:
    """Leave the cluster (a run that listed on it may end without labeling anything)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()


def _dataset(listing: Listing, rows: int):
    """The listing as a Ray dataset of blocks of `rows` rows."""
    import numpy as np
    import pyarrow as pa
    import ray.data

    paths, problems = listing.paths, listing.problems
    tables = []
    for start in range(0, len(paths), rows):
        chunk = paths[start : start + rows]
        troubles = [problems.get(r) for r in chunk] if problems else None
        tables.append(pa.table({
            "i": pa.array(np.arange(start, start + len(chunk), dtype=np.int64)),  # from a range: 0.5 s a million
            "rel": pa.array(chunk, pa.string()),  # path text is valid UTF-8
            "problem": pa.array([p and p.encode("utf-8", "surrogateescape") for p in troubles], pa.binary())
            if troubles else pa.nulls(len(chunk), pa.binary()),
        }))
    # from_blocks keeps the blocks as given and reads their sizes here; from_arrow(_refs) asks a Ray task per
    # block (a worker process to start and pyarrow to import before the first actor: ~3 s on 2 cores).
    return ray.data.from_blocks(tables)


def score_ray(source: Source, listing: Listing, options: PredictOptions, decision: Decision) -> Iterator[Block]:
    """Yield the listing's rows in order as checked `Block`s, scored on the Ray cluster of `options.ray.address`
    and formatted by the actors under `decision`."""
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
        _connect(options.ray.address)
        try:
            import ray

            cpus = options.ray.cpus_per_actor
            largest = max((node["Resources"].get("CPU", 0) for node in ray.nodes() if node.get("Alive")), default=0)
            if cpus > largest:  # Ray would wait for such a node for ever, saying nothing
                raise CatdogError(f"--ray-cpus-per-actor {cpus}: no node of the cluster has that many CPUs (the largest has {largest:g})")
            actors = options.ray.actors or max(1, int(ray.available_resources().get("CPU", 1) // cpus))
            # The bundle goes into the object store once; actors get a reference (inside a list, so Ray does not
            # resolve it for them) that the driver keeps alive, so a restarted actor loads it again.
            bundle = ray.put((model_file.read_bytes(), (model_file.parent / "meta.json").read_bytes()))
            yield from run_blocks(listing, Labeler, {
                "source": source, "model_name": model_file.name, "bundle": [bundle], "runtime": runtime,
                "threads": cpus, "max_pixels": options.max_pixels, "batch_size": options.batch_size, "decision": decision,
            }, actors=actors, cpus=cpus, rows=block_rows(len(listing), actors, options.batch_size))
        finally:
            ray.shutdown()


def run_blocks(listing: Listing, actor: type, kwargs: dict, actors: int, cpus: float, rows: int) -> Iterator[Block]:
    """The listing in blocks of `rows` rows through a fixed pool of `actor(**kwargs)` (each called with one
    block, returning `pack_block`'s row), yielded as checked `Block`s in listing order. Ray must be connected."""
    import ray.data

    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False
    context.wait_for_min_actors_s = ACTOR_WAIT_S
    with warnings.catch_warnings():  # Ray 2.60 deprecates actor options as keywords; nothing replaces them yet
        warnings.simplefilter("ignore", DeprecationWarning)
        out = _dataset(listing, rows).map_batches(
            actor,
            fn_constructor_kwargs=kwargs,
            batch_size=rows,  # one call per block; the actor makes model calls of --batch-size itself
            batch_format="pyarrow",
            zero_copy_batch=True,
            num_cpus=cpus,
            # All actors start at once (growing the pool one actor at a time costs seconds per actor), each
            # with one block queued behind the one it runs, so no actor is left holding several at the end.
            compute=ray.data.ActorPoolStrategy(size=actors, max_tasks_in_flight_per_actor=2),
            # A worker process that dies is replaced and its block run again, a bounded number of times
            # (Ray Data's default is forever: a file that crashes its decoder would hang the run).
            max_restarts=RETRIES,
            max_task_retries=RETRIES,
        )
    done = 0
    try:
        for block in checked_blocks(
            (b for table in out.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=2) for b in unpack_blocks(table)),
            listing.paths,
        ):
            yield block
            done = block.start + block.rows
    except CatdogError:
        raise
    except Exception as exc:  # noqa: BLE001 - a task that failed after its retries ends the run, rows kept
        raise CatdogError(f"the Ray run failed after {done} rows: {_reason(exc)}; rerun with --resume") from None
