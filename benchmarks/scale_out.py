"""Scale-out: the local engine against the Ray engine on one and two nodes of this machine, the driver's own
ceilings, the S3 listing, and from those a scaling table on paper for 10 million images (issues 11 and 22).

One run, every figure from it, ratios against a baseline measured in the same run:

  photos    `catdog predict-folder DIR` with the local engine, then `--engine ray` on a one-node and a two-node
            Ray cluster on this machine (the CPUs split between the nodes), end to end, as subprocesses;
            `--copies K` labels K copies of the photos (30,000 = 3,000 x 10); the 16-file runs give the
            fixed seconds (interpreter, model, cluster join, actors);
  hand-back rows/s Ray hands back to the driver from actors that do nothing, on the two-node cluster: the old
            path (64-row batches in 256-row blocks, one Python object per row; `old_handback`) against the
            new (`ray_engine.run_blocks`: blocks of up to 4,096 rows formatted in the actor, one object each);
            end to end and steady (after the first block);
  writer    the CSV writer: benchmarks/writer.py's before/after (format + write per 64-row batch), and
            `LabelsCSV.write_block` appending blocks already formatted (the Ray driver's share);
  broken    folders of broken files (a JPEG header and junk: each is read, fails to decode and is an error
            row, so no model time hides the rest) labelled by both engines, the CSVs compared; and by the local
            engine of each `--baseline` git revision (unpacked from this repository), for before/after;
  folder    the largest broken-file folder (250 subfolders of 1,000 files at 250,000) listed as `--engine ray`
            lists it: by the driver alone, and spread over the two-node cluster (the same listing, checked); and
            what bounds a folder of ten million: one part's walk on one core, the driver joining the parts, its
            files digest and Arrow blocks;
  listing   an S3 prefix of --list-keys keys under many sub-prefixes on a moto server on 127.0.0.1, listed
            one page at a time (LIST_CONCURRENCY=1, as before) and by sub-prefixes concurrently; again with
            --list-latency-ms added to every list request (moto answers from this machine's CPUs; S3 from afar);
            then spread over a two-node Ray cluster as `--engine ray` lists (the same listing, checked); and
            what bounds a listing of ten million keys: botocore parsing a page on one core (with its dateutil
            timestamps, as before, and with timestamps kept as text, as now) and the driver joining the parts.

    python benchmarks/scale_out.py --model models
    python benchmarks/scale_out.py --model models --copies 10 --broken 50000,250000 --list-keys 100000
    python benchmarks/scale_out.py --model models --only handback,writer
    python benchmarks/scale_out.py --model models --only folder --broken 250000
    python benchmarks/scale_out.py --model models --only broken --broken 50000,250000 --baseline c6b05fb
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent))

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ZIP = REPO.parent / "shared" / "datasets" / "cats_and_dogs_3k.zip"
RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
TARGET = 10_000_000
NODE_CORES = 8
# The local engine before issue 22 (writer: fsync + progress JSON per batch), and before decoding processes.
BASELINES = "a2d4c06^,c6b05fb"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def extract(archive: Path, dest: Path, files: int, copies: int = 1) -> Path:
    """`files` photos of the archive, `copies` times (copy K under copyK/, hard links to the first)."""
    with zipfile.ZipFile(archive) as zf:
        names = sorted(n for n in zf.namelist() if n.lower().endswith(".jpg"))[:files]
        for name in names:
            first = dest / "copy0" / name
            first.parent.mkdir(parents=True, exist_ok=True)
            first.write_bytes(zf.read(name))
            for k in range(1, copies):
                target = dest / f"copy{k}" / name
                target.parent.mkdir(parents=True, exist_ok=True)
                os.link(first, target)
    return dest


def broken_folder(dest: Path, files: int) -> Path:
    """`files` broken files, 1,000 per folder: a JPEG header and junk (read, then refused by the decoder)."""
    if dest.is_dir() and sum(1 for _ in dest.rglob("*.jpg")) == files:
        return dest
    shutil.rmtree(dest, ignore_errors=True)
    junk = os.urandom(4096)
    for i in range(files):
        if i % 1000 == 0:
            (dest / f"{i // 1000:04d}").mkdir(parents=True)
        with open(dest / f"{i // 1000:04d}" / f"junk_{i:07d}.jpg", "wb") as fh:
            fh.write(b"\xff\xd8\xff\xe0" + junk[i % 3000 : i % 3000 + 60])
    return dest


def checkout(rev: str, dest: Path) -> Path:
    """The catdog package as it was at git revision `rev` of this repository, unpacked under `dest` (a PYTHONPATH)."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "catdog"], capture_output=True, check=True).stdout
    dest.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(dest, filter="data")
    return dest


def label(folder: Path, model: Path, out: Path, *extra: str, code: Path | None = None) -> tuple[float, int, str]:
    """Wall seconds, rows and the summary line of one predict-folder subprocess (with catdog from `code` if given)."""
    env = {**os.environ, **RAY_ENV, **({"PYTHONPATH": str(code)} if code else {})}
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "catdog", "predict-folder", str(folder), "--model", str(model), "--out", str(out), "--overwrite", *extra],
        capture_output=True, text=True, env=env, cwd=code,  # `-m` puts the working folder first on sys.path
    )
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"predict-folder {' '.join(extra)} failed:\n{result.stderr}")
    rows = sum(1 for _ in open(out, newline="", encoding="utf-8")) - 1
    return wall, rows, result.stderr.strip().splitlines()[-1]


class RayCluster:
    """A Ray cluster on this machine (loopback only, no dashboard) with `nodes` nodes sharing `cpus` CPUs."""

    def __init__(self, nodes: int, cpus: int):
        os.environ.update(RAY_ENV)
        from ray.cluster_utils import Cluster

        share = [cpus // nodes + (1 if i < cpus % nodes else 0) for i in range(nodes)]
        self.cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": share[0], "include_dashboard": False, "object_store_memory": 200 * 2**20})
        for n in share[1:]:
            self.cluster.add_node(num_cpus=n, object_store_memory=200 * 2**20)
        self.cluster.wait_for_nodes()
        self.address = self.cluster.address

    def close(self) -> None:
        self.cluster.shutdown()


class IdleBlocks:
    """A do-nothing actor of the new shape: each block's rows, as error rows, formatted and packed by the actor."""

    def __init__(self, decision):
        self.decision = decision

    def __call__(self, block):
        from catdog.labeling.ray_engine import pack_block

        rels = block.column("rel").to_pylist()
        return pack_block(block.column("i")[0].as_py(), ((rel, None, None, "not an image") for rel in rels), self.decision)


class IdleRows:
    """A do-nothing actor of the old shape: one numpy row per file (index, p_dog, pet, reason)."""

    def __call__(self, b):
        import numpy as np

        n = len(b["i"])
        return {"i": np.asarray(b["i"]), "p_dog": np.full(n, np.nan), "pet": np.full(n, np.nan),
                "reason": np.array([b"not an image"] * n, dtype=object)}


def _connect(address: str):
    import ray
    import ray.data

    ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.ERROR)
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False
    return ray


def new_handback(address: str, rows: int) -> tuple[float, float, float]:
    """(end-to-end, steady) rows/s of `ray_engine.run_blocks` with IdleBlocks actors, one per CPU, and the
    driver process's own CPU seconds per block once running (all its threads: Ray Data's executor included).
    Here the actors share the driver's 2 cores, so the steady wall-clock rate is theirs as much as the
    driver's; on a cluster they run elsewhere and the driver's CPU per block is its ceiling."""
    from catdog.labeling.labels import Decision
    from catdog.labeling.ray_engine import block_rows, run_blocks
    from catdog.labeling.sources import Listing

    ray = _connect(address)
    try:
        actors = int(ray.cluster_resources().get("CPU", 1))
        listing = Listing([f"d{i % 997:03d}/photo_{i:08d}.jpg" for i in range(rows)])
        listing.paths.sort()
        started = time.perf_counter()
        first, n, blocks = None, 0, 0
        for block in run_blocks(listing, IdleBlocks, {"decision": Decision(("cat", "dog"), 0.5)}, actors=actors, cpus=1,
                                rows=block_rows(rows, actors, 64)):
            if first is None:
                first, after, cpu = time.perf_counter(), block.rows, time.process_time()
            n += block.rows
            blocks += 1
        done, cpu = time.perf_counter(), time.process_time() - cpu
        assert n == rows
        return rows / (done - started), (rows - after) / max(done - first, 1e-9), cpu / max(blocks - 1, 1)
    finally:
        ray.shutdown()


def old_handback(address: str, rows: int) -> tuple[float, float]:
    """The same with the engine's old shape: 64-row batches in 256-row blocks, one numpy row per file handed back
    and turned into one Scored tuple per row in the driver (as ray_engine did before issue 22)."""
    import numpy as np
    import pyarrow as pa

    ray = _connect(address)
    try:
        actors = int(ray.cluster_resources().get("CPU", 1))
        paths = sorted(f"d{i % 997:03d}/photo_{i:08d}.jpg" for i in range(rows))
        started = time.perf_counter()
        tables = [pa.table({"i": pa.array(range(s, min(s + 256, rows)), pa.int64()),
                            "rel": pa.array([r.encode() for r in paths[s : s + 256]], pa.binary())}) for s in range(0, rows, 256)]
        ds = ray.data.from_arrow(tables).map_batches(IdleRows, batch_size=64, batch_format="numpy", num_cpus=1,
                                                     compute=ray.data.ActorPoolStrategy(size=actors))
        expected, first = 0, None
        for out in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2):
            indices = out["i"]
            if not np.array_equal(indices, np.arange(expected, expected + len(indices))):
                raise SystemExit("old path: rows out of order")
            batch = []
            for i, p, q, reason in zip(indices, out["p_dog"], out["pet"], out["reason"]):
                text = bytes(reason).decode("utf-8")
                pet = None if np.isnan(q) else float(q)
                batch.append((paths[i], None, None, text) if text else (paths[i], float(p), pet, None))
            if first is None:
                first, after = time.perf_counter(), len(indices)
            expected += len(indices)
        done = time.perf_counter()
        assert expected == rows
        return rows / (done - started), (rows - after) / max(done - first, 1e-9)
    finally:
        ray.shutdown()


def append_rate(rows: int, folder: Path, block: int = 4096) -> float:
    """Rows/s `LabelsCSV.write_block` appends when the rows come formatted (the Ray driver's share of the writing)."""
    from catdog.labeling.labels import Decision, LabelsCSV, format_rows
    from catdog.labeling.sources import files_digest

    decision = Decision(("cat", "dog"), 0.5)
    paths = sorted(f"d{i % 997:03d}/photo_{i:08d}.jpg" for i in range(rows))
    blocks = [format_rows(((rel, None, None, "not an image") for rel in paths[s : s + block]), decision) for s in range(0, rows, block)]
    started = time.perf_counter()
    with LabelsCSV(folder / "append.csv", {"bench": True}, files_digest(paths), decision, resume=False) as labels:
        for data, counts, last in blocks:
            labels.write_block(data, counts, last)
        labels.finish()
    return rows / (time.perf_counter() - started)


@contextlib.contextmanager
def moto_bucket(keys: int):
    """A moto server on 127.0.0.1 whose bucket `bench` holds `keys` keys under photos/ (200 folders of 10
    sub-folders); yields its URL, with AWS credentials for it in the environment."""
    from moto.backends import get_backend
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    aws = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    with mock.patch.dict(os.environ, aws):  # the environment as it was afterwards
        server.start()
        try:
            host, port = server.get_host_and_port()
            backend = get_backend("s3")["123456789012"]["global"]
            if "bench" not in backend.buckets:
                backend.create_bucket("bench", "us-east-1")
                for i in range(keys):  # into the in-process server's store directly: seconds, not minutes
                    backend.put_object("bench", f"photos/{i % 200:03d}/{i // 200 % 10}/img_{i:08d}.jpg", b"\xff\xd8\xff\xe0junk")
            yield f"http://{host}:{port}"
        finally:
            server.stop()


def listing_rates(keys: int, latency_ms: float) -> dict[str, float]:
    """Keys/s listing an S3 prefix of `keys` keys on moto: one page at a time against sub-prefixes concurrently,
    each with and without `latency_ms` per request."""
    from moto.s3.models import S3Backend

    from catdog.labeling import sources

    plain = S3Backend.list_objects_v2
    concurrency = sources.LIST_CONCURRENCY
    rates = {}
    try:
        with moto_bucket(keys) as url:

            def slow(self, *args, **kwargs):
                time.sleep(latency_ms / 1000)
                return plain(self, *args, **kwargs)

            expected = None
            for delay in (False, True):
                S3Backend.list_objects_v2 = slow if delay else plain
                for name, n in (("serial", 1), ("concurrent", concurrency)):
                    sources.LIST_CONCURRENCY = n
                    source = sources.S3Source.parse("s3://bench/photos", url)
                    started = time.perf_counter()
                    paths = source.list().paths
                    rates[f"{name}{' +latency' if delay else ''}"] = len(paths) / (time.perf_counter() - started)
                    expected = expected or paths
                    assert paths == expected and len(paths) == keys, "listings differ"
                    log(f"  listing {name}{f' +{latency_ms:g} ms' if delay else ''}: {rates[list(rates)[-1]]:,.0f} keys/s")
    finally:
        S3Backend.list_objects_v2 = plain
        sources.LIST_CONCURRENCY = concurrency
    return rates


def parse_rate(text_timestamps: bool = True) -> float:
    """Keys/s one core lists at, beyond the requests: botocore parsing ListObjectsV2 pages and catdog keeping
    each key (path text, size, ETag stamp); a listing's ceiling in one process, however many requests are in
    flight (the answers are parsed in its one event loop). `text_timestamps`: as catdog's S3 session now parses
    (LastModified left as text), else with botocore's default (dateutil), as before."""
    import botocore.session
    from botocore.parsers import RestXMLParser

    from catdog.labeling.sources import _Part

    shape = botocore.session.get_session().get_service_model("s3").operation_model("ListObjectsV2").output_shape
    items = "".join(
        f"<Contents><Key>photos/{i % 200:03d}/{i // 200 % 10}/img_{i:08d}.jpg</Key><LastModified>2026-01-01T00:00:00.000Z"
        f"</LastModified><ETag>&quot;{i:032x}&quot;</ETag><Size>123456</Size><StorageClass>STANDARD</StorageClass></Contents>"
        for i in range(1000)
    )
    body = ('<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
            f"<Name>b</Name><Prefix>photos/</Prefix><KeyCount>1000</KeyCount><MaxKeys>1000</MaxKeys><IsTruncated>true"
            f"</IsTruncated><NextContinuationToken>t</NextContinuationToken>{items}</ListBucketResult>").encode()
    parser, pages = RestXMLParser(**({"timestamp_parser": str} if text_timestamps else {})), 50
    part = _Part(len("photos/"))
    parser.parse({"body": body, "headers": {}, "status_code": 200}, shape)  # warm
    started = time.process_time()
    for _ in range(pages):
        part.take(parser.parse({"body": body, "headers": {}, "status_code": 200}, shape)["Contents"])
    return pages * 1000 / (time.process_time() - started)


def join_rate(keys: int = 1_000_000, parts: int = 32) -> float:
    """Keys/s the driver joins a spread listing's parts at: each part unpickled (as Ray hands it over), appended,
    and the whole checked in order."""
    import pickle

    from catdog.labeling.sources import _Part

    blobs = []
    for k in range(parts):
        part = _Part(0)
        part.take([{"Key": f"{k:03d}/{i // 1000:04d}/img_{i:08d}.jpg", "Size": 123456, "ETag": f'"{i:032x}"'}
                   for i in range(k * keys // parts, (k + 1) * keys // parts)])
        blobs.append(pickle.dumps(part))
    started = time.perf_counter()
    whole = _Part(0)
    for blob in blobs:
        whole.extend(pickle.loads(blob))
    whole.sort()
    return keys / (time.perf_counter() - started)


def spread_listing_rate(address: str, keys: int) -> dict[str, float]:
    """Keys/s listing --list-keys keys on moto in this process (concurrently) against spread over the Ray
    cluster at `address` (as `--engine ray` lists), the listings compared."""
    from catdog.labeling import sources
    from catdog.labeling.ray_engine import ClusterSpread, disconnect

    with moto_bucket(keys) as url:
        source = sources.S3Source.parse("s3://bench/photos", url)
        started = time.perf_counter()
        here = source.list()
        here_s = time.perf_counter() - started
        spread = ClusterSpread(address)
        try:
            started = time.perf_counter()
            there = source.list(spread=spread)
            there_s = time.perf_counter() - started
        finally:
            disconnect()
    assert there.paths == here.paths and there.sizes == here.sizes and there.stamps == here.stamps, "listings differ"
    return {"here": keys / here_s, "spread": keys / there_s, "parts": min(sources.SPREAD_PARTS, spread.width)}


def _tail_rate(listing) -> float:
    """Files/s of the driver's work between a listing and the first block: the files digest and the Arrow blocks."""
    import ray.data  # noqa: F401 - imported by the driver long before (a second of import is not listing)

    from catdog.labeling.ray_engine import _dataset
    from catdog.labeling.sources import files_digest

    started = time.perf_counter()
    files_digest(listing.paths)
    with mock.patch("ray.data.from_blocks", lambda blocks: blocks):
        _dataset(listing, 4096)
    return len(listing) / (time.perf_counter() - started)


class _Replayed:
    """A `sources.Spread` that runs its parts here the first time (kept pickled, as Ray hands them over) and only
    unpickles them the next: the driver's own share of a spread listing, timed alone."""

    def __init__(self, width: int):
        self.width, self.blobs = width, None

    def __call__(self, fn, calls):
        import pickle

        if self.blobs is None:
            self.blobs = [pickle.dumps(fn(*args)) for args in calls]
        return [pickle.loads(blob) for blob in self.blobs]


def folder_listing_rates(folder: Path, address: str) -> dict[str, float]:
    """A folder of subfolders listed as `--engine ray` lists it, in files/s: by the driver alone (`serial`, then
    with the digest and blocks: `folder`); a part's walk in one process (`part`); the driver's share of a listing
    in SPREAD_PARTS parts (the top level, unpickling and joining the parts, sorting: `join`); the digest and the
    blocks (`tail`); and the whole spread over the two-node cluster at `address` (`spread`), listings compared."""
    from catdog.labeling import sources
    from catdog.labeling.ray_engine import ClusterSpread, disconnect

    source = sources.LocalSource(str(folder))
    source.list()  # warm the page cache
    started = time.perf_counter()
    here = source.list()
    serial_s = time.perf_counter() - started
    tail = _tail_rate(here)
    top = sorted((entry.path, entry.name + "/") for entry in os.scandir(folder) if entry.is_dir(follow_symlinks=False))
    started = time.perf_counter()
    sources.list_folders(source, top, True, None, {})
    part_s = time.perf_counter() - started
    replayed = _Replayed(sources.SPREAD_PARTS)
    assert source.list(spread=replayed) == here, "listings differ"
    started = time.perf_counter()
    source.list(spread=replayed)
    join_s = time.perf_counter() - started
    spread = ClusterSpread(address)
    try:
        source.list(spread=spread)  # the cluster's worker processes started
        started = time.perf_counter()
        there = source.list(spread=spread)
        spread_s = time.perf_counter() - started
    finally:
        disconnect()
    assert there == here, "listings differ"
    n = len(here)
    return {"serial": n / serial_s, "folder": 1 / (serial_s / n + 1 / tail), "part": n / part_s, "join": n / join_s,
            "tail": tail, "spread": n / spread_s, "parts": min(sources.SPREAD_PARTS, spread.width)}


def folder_list_seconds(cores: int, rates: dict[str, float]) -> float:
    """Seconds to list TARGET files of a folder of subfolders as `--engine ray` does on `cores` cores: up to
    SPREAD_PARTS parts walked side by side, then the driver's join, files digest and blocks."""
    from catdog.labeling.sources import SPREAD_PARTS

    return TARGET / (rates["part"] * min(SPREAD_PARTS, cores)) + TARGET / rates["join"] + TARGET / rates["tail"]


def s3_list_seconds(cores: int, core_rate: float, join: float, latency_s: float) -> float:
    """Seconds to list TARGET keys as `--engine ray` does on `cores` cores: up to SPREAD_PARTS parts, each a
    process parsing `core_rate` keys/s with LIST_CONCURRENCY pages of 1,000 in flight (`latency_s` each), then
    the driver joining them at `join` keys/s."""
    from catdog.labeling.sources import LIST_CONCURRENCY, SPREAD_PARTS

    parts = min(SPREAD_PARTS, cores)
    return max(TARGET / (core_rate * parts), TARGET / 1000 * latency_s / (parts * LIST_CONCURRENCY)) + TARGET / join


def paper_table(per_core: float, start_s: float, block_s: float, append: float, folder_seconds, s3_seconds) -> list[str]:
    """Hours for TARGET images on 1, 10, 100 and 1,000 nodes of NODE_CORES cores: the listing (a shared folder of
    subfolders: `folder_seconds(cores)`, or S3: `s3_seconds(cores)`), then start-up, then the slowest of the workers, Ray's hand-back to the
    driver (`block_s` seconds per block, blocks as `block_rows` sizes them for that many actors) and the driver's
    CSV appends; speed-up per node against one node, and what bounds each row."""
    from catdog.labeling.ray_engine import block_rows

    lines = [f"{'nodes':>5} {'cores':>6} {'workers img/s':>14} {'hand-back':>10} {'labeling bound':>15} {'folder h':>9} {'x/node':>6} "
             f"{'S3 h':>6} {'x/node':>6}  bound by (folder; S3)"]
    base = {}
    for nodes in (1, 10, 100, 1000):
        actors = NODE_CORES * nodes
        workers = per_core * actors
        handback = block_rows(TARGET, actors, 64) / block_s
        limits = {"workers": workers, "hand-back": handback, "CSV appends": append}
        bound = min(limits, key=limits.get)
        label_s = TARGET / limits[bound]
        cells, names = [], []
        for source, list_s in (("folder", folder_seconds(actors)), ("S3", s3_seconds(actors))):
            seconds = list_s + start_s + label_s
            base.setdefault(source, seconds)
            cells.append((seconds / 3600, base[source] / seconds / nodes))
            parts = {"listing": list_s, "start-up": start_s, bound: label_s}
            names.append(max(parts, key=parts.get))
        lines.append(f"{nodes:>5} {actors:>6} {workers:>14,.0f} {handback:>10,.0f} {bound:>15} {cells[0][0]:>9.2f} {cells[0][1]:>6.2f} "
                     f"{cells[1][0]:>6.2f} {cells[1][1]:>6.2f}  {names[0]}; {names[1]}")
    return lines


def main() -> None:
    from catdog.labeling.ray_engine import block_rows

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, required=True, help="a trained bundle folder (model.tflite, meta.json)")
    ap.add_argument("--zip", type=Path, default=DEFAULT_ZIP, help="photo archive (default: the shared cats_and_dogs_3k.zip)")
    ap.add_argument("--files", type=int, default=3000, help="photos to label per engine (default 3000)")
    ap.add_argument("--copies", type=int, default=1, help="label this many copies of the photos (default 1)")
    ap.add_argument("--handback-rows", type=int, default=1_000_000, help="rows for the new hand-back (default 1,000,000)")
    ap.add_argument("--old-handback-rows", type=int, default=100_000, help="rows for the old hand-back (default 100,000)")
    ap.add_argument("--writer-rows", type=int, default=1_000_000, help="rows for the writer (default 1,000,000)")
    ap.add_argument("--broken", default="50000", help="sizes of the broken-file folders, comma-separated (default 50000)")
    ap.add_argument("--baseline", default=BASELINES, help=f"git revisions whose local engine also labels the broken files (default {BASELINES}; '' for none)")
    ap.add_argument("--scratch", type=Path, default=None, help="where the broken-file folders are kept between runs (default: a temp dir)")
    ap.add_argument("--list-keys", type=int, default=100_000, help="S3 keys to list (default 100,000; 0: skip)")
    ap.add_argument("--list-latency-ms", type=float, default=50.0, help="latency added to each list request in the second pass")
    ap.add_argument("--only", default="photos,handback,writer,broken,folder,listing", help="sections to run (comma-separated)")
    args = ap.parse_args()
    only = set(args.only.split(","))
    cpus = len(os.sched_getaffinity(0))
    model = args.model.resolve()
    tmp = Path(tempfile.mkdtemp(prefix="catdog-scale-"))
    scratch = args.scratch or tmp
    photos: dict[str, dict] = {}
    broken: dict[int, dict[str, float]] = {}
    figures: dict[str, object] = {}
    try:
        if "photos" in only or "broken" in only:
            small = extract(args.zip, tmp / "small", 16)
            label(small, model, tmp / "warm.csv")  # warm the page cache and bytecode
        if "photos" in only:
            folder = extract(args.zip, tmp / "photos", args.files, args.copies)
            n = sum(1 for p in folder.rglob("*") if p.is_file())
            log(f"{n} photos, model {model}, {cpus} CPUs")
            csvs = {}
            for name, nodes, extra in [("local", None, ()), ("ray, 1 node", 1, ("--engine", "ray")), ("ray, 2 nodes", 2, ("--engine", "ray"))]:
                cluster = RayCluster(nodes, cpus) if nodes else None
                try:
                    more = (*extra, "--ray-address", cluster.address) if cluster else extra
                    start_s, _, _ = label(small, model, tmp / "small.csv", *more)
                    wall, rows, _ = label(folder, model, tmp / f"{len(csvs)}.csv", *more)
                    assert rows == n, (name, rows, n)
                    # Steady rate: what the big run took beyond the 16-file run's fixed seconds.
                    photos[name] = {"rate": n / wall, "start": start_s, "labeling_rate": (n - 16) / max(wall - start_s, 1e-9)}
                    csvs[name] = (tmp / f"{len(csvs)}.csv").read_bytes()
                    photos[name]["same"] = csvs[name] == csvs["local"]
                    log(f"{name}: {n / wall:.1f} images/s end to end, {start_s:.1f} s on 16 files")
                finally:
                    if cluster:
                        cluster.close()
            figures["photos"] = n
        if "handback" in only:
            cluster = RayCluster(2, cpus)
            try:
                log(f"hand-back, old path, {args.old_handback_rows:,} rows ...")
                figures["old"] = old_handback(cluster.address, args.old_handback_rows)
                log(f"hand-back, new path, {args.handback_rows:,} rows ...")
                figures["new"] = new_handback(cluster.address, args.handback_rows)
                figures["block"] = block_rows(args.handback_rows, int(cpus), 64)
            finally:
                cluster.close()
        if "writer" in only:
            from writer import writer_rates

            log(f"writer, {args.writer_rows:,} rows ...")
            figures["writer"] = writer_rates(args.writer_rows, folder=tmp)
            figures["append"] = append_rate(args.writer_rows, tmp)
        baselines = {rev: checkout(rev, tmp / f"baseline-{i}") for i, rev in enumerate(x for x in args.baseline.split(",") if x)} if "broken" in only else {}
        for size in [int(x) for x in args.broken.split(",") if x] if "broken" in only else []:
            folder = broken_folder(scratch / f"broken-{size}", size)
            label(folder, model, tmp / "broken-local.csv")  # warm the page cache: every engine then reads the same way
            # The local engines by turns, twice, with no Ray cluster running beside them; each keeps its faster run.
            walls: dict[str | None, float] = {}
            for _ in range(2):
                for rev, code in [(None, None), *baselines.items()]:
                    wall, rows, _ = label(folder, model, tmp / ("broken-local.csv" if rev is None else f"broken-{rev}.csv"), code=code)
                    assert rows == size, (rev, rows, size)
                    walls[rev] = min(wall, walls.get(rev, wall))
            local_wall = walls.pop(None)
            before = {rev: {"rate": size / wall, "wall": wall, "csv": (tmp / f"broken-{rev}.csv").read_bytes()} for rev, wall in walls.items()}
            for rev, b in before.items():
                log(f"broken {size:,}: local engine at {rev}: {b['rate']:,.0f} rows/s")
            cluster = RayCluster(2, cpus)
            try:
                ray_wall, ray_rows, _ = label(folder, model, tmp / "broken-ray.csv", "--engine", "ray", "--ray-address", cluster.address)
                figures["folder"] = folder_listing_rates(folder, cluster.address)
            finally:
                cluster.close()
            assert ray_rows == size, (ray_rows, size)
            same = (tmp / "broken-local.csv").read_bytes() == (tmp / "broken-ray.csv").read_bytes()
            local_csv = (tmp / "broken-local.csv").read_bytes()
            broken[size] = {"local": size / local_wall, "ray": size / ray_wall, "same": same, "walls": (local_wall, ray_wall),
                            "before": {rev: {"rate": b["rate"], "wall": b["wall"], "same": b["csv"] == local_csv} for rev, b in before.items()}}
            log(f"broken {size:,}: local {size / local_wall:,.0f} rows/s, ray {size / ray_wall:,.0f} rows/s, CSVs equal: {same}")
        if "folder" in only and "folder" not in figures:  # the folder listing alone, on the largest broken folder
            folder = broken_folder(scratch / f"broken-{max(int(x) for x in args.broken.split(','))}", max(int(x) for x in args.broken.split(',')))
            cluster = RayCluster(2, cpus)
            try:
                figures["folder"] = folder_listing_rates(folder, cluster.address)
            finally:
                cluster.close()
        if "folder" in figures:
            fr = figures["folder"]
            log(f"folder listing: driver alone {fr['serial']:,.0f} files/s, spread over 2 nodes {fr['spread']:,.0f}; part {fr['part']:,.0f}, "
                f"join {fr['join']:,.0f}, digest + blocks {fr['tail']:,.0f}")
        if "listing" in only and args.list_keys:
            log(f"listing {args.list_keys:,} keys on moto ...")
            figures["listing"] = listing_rates(args.list_keys, args.list_latency_ms)
            cluster = RayCluster(2, cpus)
            try:
                figures["spread"] = spread_listing_rate(cluster.address, args.list_keys)
            finally:
                cluster.close()
            log(f"  listing spread over 2 nodes: {figures['spread']['spread']:,.0f} keys/s, here {figures['spread']['here']:,.0f}")
        figures["parse_before"], figures["parse"], figures["join"] = parse_rate(False), parse_rate(True), join_rate()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print()
    print(f"scale-out on this machine ({cpus} CPUs), model {model}")
    if photos:
        local = photos["local"]
        print(f"{figures['photos']} photos: {'engine':<14} {'images/s':>9} {'x local':>8} {'labeling/s':>11} {'16 files, s':>12}   CSV equals local")
        for name, r in photos.items():
            print(f"{'':>{len(str(figures['photos'])) + 8}} {name:<14} {r['rate']:>9.1f} {r['rate'] / local['rate']:>8.2f} "
                  f"{r['labeling_rate']:>11.1f} {r['start']:>12.1f}   {'yes' if r['same'] else 'NO'}")
    if "new" in figures:
        (old_all, old_steady), (new_all, new_steady, new_cpu) = figures["old"], figures["new"]
        print(f"hand-back from do-nothing actors, 2 nodes: old {old_all:,.0f} rows/s ({old_steady:,.0f} steady), "
              f"new {new_all:,.0f} rows/s ({new_steady:,.0f} steady): x{new_all / old_all:.1f} ({new_steady / old_steady:.1f} steady); "
              f"the driver's own CPU: {new_cpu * 1000:.1f} ms per block of {figures['block']:,} rows")
    if "writer" in figures:
        w = figures["writer"]
        print(f"CSV writer (format + write, 64-row batches): before {w['before']:,.0f} rows/s, after {w['after']:,.0f} rows/s "
              f"(x{w['after'] / w['before']:.0f}); appending formatted 4,096-row blocks: {figures['append']:,.0f} rows/s")
    for size, r in broken.items():
        print(f"broken files, {size:,}: local {r['local']:,.0f} rows/s, ray (2 nodes) {r['ray']:,.0f} rows/s, "
              f"ray/local {r['ray'] / r['local']:.2f}, CSVs equal: {'yes' if r['same'] else 'NO'}")
        for rev, b in r["before"].items():
            print(f"  local engine at {rev}: {b['rate']:,.0f} rows/s; now x{r['local'] / b['rate']:.1f}, "
                  f"CSV equal: {'yes' if b['same'] else 'NO'}")
    if len(broken) > 1:  # between the smallest and the largest folder the fixed seconds cancel
        (small, a), (large, b) = min(broken.items()), max(broken.items())
        local_rate, ray_rate = (large - small) / (b["walls"][0] - a["walls"][0]), (large - small) / (b["walls"][1] - a["walls"][1])
        print(f"broken files, {small:,} -> {large:,} (start-up cancels): local {local_rate:,.0f} rows/s, ray {ray_rate:,.0f} rows/s, "
              f"ray/local {ray_rate / local_rate:.2f}")
        for rev in a["before"]:
            rate = (large - small) / (b["before"][rev]["wall"] - a["before"][rev]["wall"])
            print(f"  local engine at {rev}: {rate:,.0f} rows/s; now x{local_rate / rate:.1f}")
    if "listing" in figures:
        lr = figures["listing"]
        print(f"S3 listing, {args.list_keys:,} keys on moto: serial {lr['serial']:,.0f} keys/s, concurrent {lr['concurrent']:,.0f} "
              f"(x{lr['concurrent'] / lr['serial']:.1f}); with {args.list_latency_ms:g} ms per request: serial {lr['serial +latency']:,.0f}, "
              f"concurrent {lr['concurrent +latency']:,.0f} (x{lr['concurrent +latency'] / lr['serial +latency']:.1f})")
    if "spread" in figures:
        sp = figures["spread"]
        print(f"S3 listing spread over a 2-node Ray cluster ({sp['parts']} parts, as --engine ray lists): {sp['spread']:,.0f} keys/s "
              f"against {sp['here']:,.0f} in the driver alone (moto's CPUs are the limit here), the same listing")
    print(f"one core lists (parses a page, keeps each key) {figures['parse_before']:,.0f} keys/s before, {figures['parse']:,.0f} now "
          f"(x{figures['parse'] / figures['parse_before']:.1f}); the driver joins listed parts at {figures['join']:,.0f} keys/s")
    if photos and "new" in figures and "append" in figures and broken:
        ray2 = photos["ray, 2 nodes"]
        per_core = ray2["labeling_rate"] / cpus
        latency_s = args.list_latency_ms / 1000
        fr = figures["folder"]
        print(f"a folder of subfolders: the driver alone lists {fr['serial']:,.0f} files/s ({fr['folder']:,.0f} with the digest and "
              f"blocks, as before); spread over the 2-node cluster ({fr['parts']} parts) {fr['spread']:,.0f}, the same listing; one part "
              f"walks {fr['part']:,.0f} files/s, the driver joins parts at {fr['join']:,.0f} and digests + blocks {fr['tail']:,.0f}: "
              f"{TARGET:,} files in {TARGET / fr['folder']:.1f} s in the driver alone, {folder_list_seconds(NODE_CORES, fr):.1f} s "
              f"spread over one node, {folder_list_seconds(100 * NODE_CORES, fr):.1f} s over 100")
        print(f"S3 listed on the cluster: {TARGET:,} keys in {s3_list_seconds(NODE_CORES, figures['parse'], figures['join'], latency_s):.0f} s "
              f"on one node, {s3_list_seconds(100 * NODE_CORES, figures['parse'], figures['join'], latency_s):.0f} s on 100 "
              f"({args.list_latency_ms:g} ms a request); before, in the driver alone: {TARGET / figures['parse_before']:.0f} s")
        print()
        # The driver's ceiling on a cluster: its own CPU per block (here the actors' share of the 2 cores slows
        # the steady wall-clock rate as well; that rate is printed above).
        block_s = figures["new"][2]
        print(f"on paper, {TARGET:,} images, nodes of {NODE_CORES} cores at this run's Ray rate of {per_core:.0f} images/s per core, "
              f"start-up {ray2['start']:.0f} s, the driver's CPU {block_s * 1000:.1f} ms per block (steady hand-back here "
              f"{figures['new'][1]:,.0f} rows/s, actors on the same cores), appends {figures['append']:,.0f} rows/s:")
        s3_seconds = lambda cores: s3_list_seconds(cores, figures["parse"], figures["join"], latency_s)  # noqa: E731
        folder_seconds = lambda cores: folder_list_seconds(cores, figures["folder"])  # noqa: E731
        for line in paper_table(per_core, ray2["start"], block_s, figures["append"], folder_seconds, s3_seconds):
            print(line)


if __name__ == "__main__":
    main()
