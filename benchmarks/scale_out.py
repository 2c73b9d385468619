"""Scale-out: the local engine against the Ray engine on one and two nodes of this machine, the driver's own
ceiling, and from those a scaling table on paper for 10 million images (issue 11).

One run, every figure from it, ratios against the local engine measured in the same run:

  local   `catdog predict-folder DIR` (thread pool), end to end, as a subprocess;
  ray-1   `--engine ray` on a one-node Ray cluster with all of this machine's CPUs;
  ray-2   `--engine ray` on a two-node cluster on this machine (the CPUs split between the nodes);
  start   the same three on a 16-file folder: the fixed seconds (interpreter, model, cluster join, actors);
  driver  rows/s the driver receives, sorts and writes when the model is free: a listing of --driver-rows
          generated paths through the real CSV writer (fsync + progress file per batch), and rows/s that
          Ray hands back from actors that do no work.

    python benchmarks/scale_out.py --model models
    python benchmarks/scale_out.py --model models --files 3000 --driver-rows 1000000
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ZIP = REPO.parent / "shared" / "datasets" / "cats_and_dogs_3k.zip"
RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
TARGET = 10_000_000
NODE_CORES = 8


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def extract(archive: Path, dest: Path, files: int) -> Path:
    with zipfile.ZipFile(archive) as zf:
        names = sorted(n for n in zf.namelist() if n.lower().endswith(".jpg"))[:files]
        for name in names:
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(zf.read(name))
    return dest


def label(folder: Path, model: Path, out: Path, *extra: str) -> tuple[float, int, str]:
    """Wall seconds, rows and the summary line of one predict-folder subprocess."""
    env = {**os.environ, **RAY_ENV}
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "catdog", "predict-folder", str(folder), "--model", str(model), "--out", str(out), "--overwrite", *extra],
        capture_output=True, text=True, env=env,
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


def driver_write_ceiling(rows: int, out: Path, batch: int = 64) -> float:
    """Rows/s through the real driver path with a free model: sort the listing, format and write every row
    (with the fsync and progress file after each batch)."""
    from catdog.labeling.labels import LabelsCSV
    from catdog.labeling.sources import files_digest

    paths = [f"d{i % 997:03d}/photo_{(i * 7919) % rows:08d}.jpg" for i in range(rows)]
    started = time.perf_counter()
    paths.sort()
    with LabelsCSV(out, {"bench": True}, files_digest(paths), ("cat", "dog"), 0.5, resume=False) as labels:
        for start in range(0, rows, batch):
            labels.write([(rel, 0.25, None) for rel in paths[start : start + batch]])
        labels.finish()
    return rows / (time.perf_counter() - started)


def ray_receive_ceiling(address: str, rows: int, batch: int = 64) -> float:
    """Rows/s a Ray Data pipeline of the engine's shape hands back to the driver when the actors do nothing."""
    import numpy as np
    import ray

    from catdog.labeling.ray_engine import _dataset
    from catdog.labeling.sources import Listing

    class Idle:
        def __call__(self, b):
            return {"i": np.asarray(b["i"]), "p_dog": np.full(len(b["i"]), 0.25), "reason": np.array([b""] * len(b["i"]), dtype=object)}

    ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True
        context.enable_progress_bars = False
        listing = Listing([f"photo_{i:08d}.jpg" for i in range(rows)])
        started = time.perf_counter()
        ds = _dataset(listing, batch).map_batches(Idle, batch_size=batch, batch_format="numpy", num_cpus=0.5,
                                                  compute=ray.data.ActorPoolStrategy(min_size=1, max_size=2))
        n = sum(len(b["i"]) for b in ds.iter_batches(batch_size=None, batch_format="numpy"))
        assert n == rows
        return rows / (time.perf_counter() - started)
    finally:
        ray.shutdown()


def paper_table(per_core: float, start_s: float, driver: float, receive: float) -> list[str]:
    """Images/s and hours for TARGET images on 1, 10 and 100 nodes of NODE_CORES cores."""
    lines = [f"{'nodes':>5} {'cores':>6} {'workers images/s':>17} {'bound by':>10} {'images/s':>10} {'hours':>7}"]
    for nodes in (1, 10, 100):
        workers = per_core * NODE_CORES * nodes
        limits = {"workers": workers, "driver": driver, "ray": receive}
        bound = min(limits, key=limits.get)
        rate = limits[bound]
        hours = (TARGET / rate + start_s) / 3600
        lines.append(f"{nodes:>5} {NODE_CORES * nodes:>6} {workers:>17,.0f} {bound:>10} {rate:>10,.0f} {hours:>7.2f}")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, required=True, help="a trained bundle folder (model.tflite, meta.json)")
    ap.add_argument("--zip", type=Path, default=DEFAULT_ZIP, help="photo archive (default: the shared cats_and_dogs_3k.zip)")
    ap.add_argument("--files", type=int, default=3000, help="photos to label per engine (default 3000)")
    ap.add_argument("--driver-rows", type=int, default=1_000_000, help="rows for the driver's write ceiling (default 1,000,000)")
    ap.add_argument("--receive-rows", type=int, default=100_000, help="rows for Ray's receive ceiling (default 100,000)")
    args = ap.parse_args()
    cpus = len(os.sched_getaffinity(0))
    model = args.model.resolve()
    tmp = Path(tempfile.mkdtemp(prefix="catdog-scale-"))
    results: dict[str, dict] = {}
    try:
        folder = extract(args.zip, tmp / "photos", args.files)
        small = extract(args.zip, tmp / "small", 16)
        n = sum(1 for p in folder.rglob("*") if p.is_file())
        log(f"{n} photos, model {model}, {cpus} CPUs")
        label(small, model, tmp / "warm.csv")  # warm the page cache and bytecode
        runs = [("local", None, ()), ("ray, 1 node", 1, ("--engine", "ray")), ("ray, 2 nodes", 2, ("--engine", "ray"))]
        csvs = {}
        receive = None
        for name, nodes, extra in runs:
            cluster = RayCluster(nodes, cpus) if nodes else None
            try:
                more = (*extra, "--ray-address", cluster.address) if cluster else extra
                start_s, _, _ = label(small, model, tmp / "small.csv", *more)
                wall, rows, _ = label(folder, model, tmp / f"{len(csvs)}.csv", *more)
                assert rows == n, (name, rows, n)
                # Steady rate: what the big run took beyond the 16-file run's fixed seconds.
                results[name] = {"wall": wall, "rate": n / wall, "start": start_s, "labeling_rate": (n - 16) / max(wall - start_s, 1e-9)}
                csvs[name] = (tmp / f"{len(csvs)}.csv").read_bytes()
                log(f"{name}: {n / wall:.1f} images/s end to end, {start_s:.1f} s on 16 files")
                if nodes == 2:
                    log(f"ray receive ceiling on {args.receive_rows:,} rows ...")
                    receive = ray_receive_ceiling(cluster.address, args.receive_rows)
            finally:
                if cluster:
                    cluster.close()
        log(f"driver write ceiling on {args.driver_rows:,} rows ...")
        driver = driver_write_ceiling(args.driver_rows, tmp / "driver.csv")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    local = results["local"]
    print()
    print(f"scale-out on this machine: {n} photos, {cpus} CPUs, model {model}")
    print(f"{'engine':<14} {'images/s':>9} {'x local':>8} {'labeling/s':>11} {'16 files, s':>12}   CSV equals local")
    for name, r in results.items():
        same = "yes" if csvs[name] == csvs["local"] else "NO"
        print(f"{name:<14} {r['rate']:>9.1f} {r['rate'] / local['rate']:>8.2f} {r['labeling_rate']:>11.1f} {r['start']:>12.1f}   {same}")
    print(f"driver: writes {driver:,.0f} rows/s (sort + CSV + fsync per 64-row batch); Ray hands back {receive:,.0f} rows/s from idle actors")
    ray2 = results["ray, 2 nodes"]
    per_core = ray2["labeling_rate"] / cpus
    print()
    print(f"on paper, {TARGET:,} images, nodes of {NODE_CORES} cores at this run's Ray rate of {per_core:.0f} images/s per core "
          f"(start-up {ray2['start']:.0f} s):")
    for line in paper_table(per_core, ray2["start"], driver, receive):
        print(line)


if __name__ == "__main__":
    main()
