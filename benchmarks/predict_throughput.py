"""Labeling throughput: catdog's `predict-folder` against the course notebook's loop and its own bounds (issue 3).

On one folder of real photos (the shared 3k zip, hard-linked into bigger folders) and one trained bundle:

  A  baseline: the course notebook's loop, per file `keras.utils.load_img` + `img_to_array` +
     `model.predict(x[None])` with the Keras model (timed on --baseline-files files);
  B  decode only: `catdog.images.load_image` in a thread pool with os.cpu_count() threads, no model;
  C  model only: LiteRT (`load_predictor(model, "litert")`) on in-memory batches of 64; Keras for reference;
  D  `python -m catdog predict-folder DIR --model M --out CSV --overwrite` as a subprocess, end to end
     (files / wall time, interpreter start and model load included), with its peak RSS, on --files
     and on --big-files files.

L = 1 / (1/B + 1/C) is what a perfect pipeline gets if decoding and the model cannot overlap (both use
all cores). Targets: D/A >= 10, D/L >= 0.8, and peak RSS that does not grow with the folder beyond
the path list. Every figure comes from the same run; B, C and D are measured in --repeats interleaved
rounds and D/L is the median of the per-round ratios, so a noisy neighbour hits both sides alike.

    python benchmarks/predict_throughput.py --model /tmp/p2/models
    python benchmarks/predict_throughput.py --model models --files 3000 --big-files 30000 --baseline-files 200
    python benchmarks/predict_throughput.py --model models --profile   # also: where does D lose time?
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ZIP = REPO.parent / "shared" / "datasets" / "cats_and_dogs_3k.zip"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------- data


def extract_photos(archive: Path, dest: Path) -> list[Path]:
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(dest)
    photos = sorted(p for p in dest.rglob("*") if p.is_file() and p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not photos:
        raise SystemExit(f"no photos in {archive}")
    return photos


def linked_folder(photos: list[Path], root: Path, dest: Path, n: int) -> Path:
    """`n` files under `dest`: the photos hard-linked, copy k of the set in subfolder copy<k>/."""
    for i in range(n):
        src = photos[i % len(photos)]
        target = dest / f"copy{i // len(photos):03d}" / src.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(src, target)
    return dest


def files_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


# --------------------------------------------------------------------------------------- measures


def bench_baseline(model_dir: Path, files: list[Path], size: int) -> float:
    """A: the course notebook's per-file loop with the Keras model; images/s."""
    import keras  # TF_CPP_MIN_LOG_LEVEL is set at the top of this file

    model = keras.saving.load_model(model_dir / "model.keras", compile=False)

    def one(path: Path) -> float:
        img = keras.utils.load_img(path, target_size=(size, size))
        x = keras.utils.img_to_array(img)
        return float(model.predict(x[None], verbose=0)[0, 0])

    one(files[0])  # warm-up: first call builds the predict function
    start = time.perf_counter()
    for path in files:
        one(path)
    return len(files) / (time.perf_counter() - start)


def decode_all(files: list[Path], size: int, workers: int) -> tuple[float, float, list[np.ndarray]]:
    """B: decode and resize every file with catdog.images.load_image on `workers` threads.

    Returns (images/s, CPU seconds per image, the arrays)."""
    from catdog.images import load_image

    with ThreadPoolExecutor(max_workers=workers) as pool:
        cpu, start = time.process_time(), time.perf_counter()
        arrays = list(pool.map(lambda p: load_image(p, size), files))
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return len(files) / seconds, cpu / len(files), arrays


def bench_model(predictor, batches: list[np.ndarray], min_seconds: float, min_batches: int) -> tuple[float, float]:
    """C: (images/s, CPU seconds per image) of `predictor.predict` on in-memory batches, after a warm-up call."""
    predictor.predict(batches[0])
    done, i = 0, 0
    cpu, start = time.process_time(), time.perf_counter()
    while True:
        batch = batches[i % len(batches)]
        predictor.predict(batch)
        done += len(batch)
        i += 1
        elapsed = time.perf_counter() - start
        if i >= min_batches and elapsed >= min_seconds:
            return done / elapsed, (time.process_time() - cpu) / done


def run_cli(folder: Path, model_dir: Path, out: Path, extra: list[str] = ()) -> dict:
    """D: `python -m catdog predict-folder` in a subprocess: wall and CPU seconds, peak RSS (MiB), its own rate."""
    cmd = [sys.executable, "-m", "catdog", "predict-folder", str(folder), "--model", str(model_dir), "--out", str(out), "--overwrite", *extra]
    # Peak RSS through /usr/bin/time: the rusage of a child forked straight from this (big) process can
    # report this process's RSS, inherited at fork time, instead of the labeler's own.
    timer = ["/usr/bin/time", "-f", "BENCH_MAXRSS_KB %M"] if Path("/usr/bin/time").exists() else []
    err = out.with_suffix(".stderr")
    with open(err, "wb") as fh:
        start = time.perf_counter()
        proc = subprocess.Popen(timer + cmd, stdout=subprocess.DEVNULL, stderr=fh, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)  # includes the grandchild when /usr/bin/time is in between
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    text = err.read_text(errors="replace")
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}:\n{text}")
    rss_kb = usage.ru_maxrss
    for line in text.splitlines():
        if line.startswith("BENCH_MAXRSS_KB "):
            rss_kb = int(line.split()[1])
    text = "\n".join(line for line in text.splitlines() if not line.startswith("BENCH_MAXRSS_KB "))
    rows = sum(1 for _ in open(out, encoding="utf-8")) - 1
    labeled_s = None
    for line in text.splitlines():
        if "images/s" in line:  # "labeled N files: ... in 12.3s (245.6 images/s) -> out.csv"
            labeled_s = float(line.split(" in ")[-1].split("s (")[0])
    return {
        "wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "rss_mib": rss_kb / 1024, "rows": rows,
        "labeled_s": labeled_s, "stderr": text.strip(),
    }


def path_list_mib(folder: Path) -> float:
    """Python heap taken by predict's path list (LocalSource.list) for `folder`, in MiB."""
    from catdog.labeling.sources import LocalSource

    gc.collect()
    tracemalloc.start()
    listing = LocalSource(str(folder)).list()
    current, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del listing
    return current / 2**20


LISTING_PROBE = """
import os, resource, sys, time, tracemalloc
from catdog.labeling.sources import LocalSource

def resident():  # bytes resident now (the peak, ru_maxrss, may date from the imports)
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

trace = sys.argv[2] == "trace"  # tracemalloc's own bookkeeping would inflate the RSS, so RSS is a separate run
before, peak_before = resident(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
if trace:
    tracemalloc.start()
started = time.perf_counter()
listing = LocalSource(sys.argv[1]).list()
seconds = time.perf_counter() - started
current, peak = tracemalloc.get_traced_memory() if trace else (0, 0)
text = sum(len(p) for p in listing.paths)
grown, peak_grown = resident() - before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - peak_before
print(len(listing), text, current, peak, grown, seconds, max(grown, peak_grown))
"""


def listing_cost(n: int, root: Path) -> dict:
    """List `n` generated empty files (1,000 per folder) in a fresh process, no decode: what the driver keeps per
    file beyond the path text (tracemalloc, after listing), its peak during the listing, and the RSS growth."""
    per_folder = 1000
    for i in range(0, n, per_folder):
        folder = root / f"d{i // per_folder:05d}"
        folder.mkdir(parents=True)
        for j in range(min(per_folder, n - i)):
            os.close(os.open(folder / f"photo_{i + j:08d}.jpg", os.O_CREAT | os.O_WRONLY, 0o644))
    def probe(mode: str) -> list[str]:
        return subprocess.run([sys.executable, "-c", LISTING_PROBE, str(root), mode], capture_output=True, text=True, check=True).stdout.split()

    traced, plain = probe("trace"), probe("rss")
    files, text, current, peak = int(traced[0]), int(traced[1]), int(traced[2]), int(traced[3])
    rss, seconds, peak_rss = int(plain[4]), float(plain[5]), int(plain[6])
    return {"files": files, "text_b": text / files, "kept_b": (current - text) / files, "peak_b": (peak - text) / files,
            "rss_mib": rss / 2**20, "rss_b": rss / files - text / files, "peak_rss_mib": peak_rss / 2**20, "seconds": seconds}


# --------------------------------------------------------------------------------------- profile


def score_ahead(entries, predictor, batch_size: int, workers: int, ahead: int):
    """A copy of catdog.labeling.engines.score_local with the prefetch depth as a knob (catdog uses ahead=2)."""
    from collections import deque

    from catdog.images import load_image

    size = predictor.meta.image_size
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending = deque()
        for i in range(0, len(entries), batch_size):
            pending.append(pool.map(lambda e: load_image(e, size), entries[i : i + batch_size]))
            if len(pending) > ahead:
                yield predictor.predict(np.stack(list(pending.popleft())))
        while pending:
            yield predictor.predict(np.stack(list(pending.popleft())))


def profile(files: list[Path], model_dir: Path, size: int, batch_arrays: list[np.ndarray], repeats: int) -> list[tuple[str, float, float, float]]:
    """In-process labeling variants (decode threads, LiteRT threads, batch size, prefetch depth): best, median images/s, CPU s/image."""
    from catdog.labeling.engines import score_local
    from catdog.labeling.runtime import load_predictor
    from catdog.labeling.sources import Listing, LocalSource

    entries = [str(p) for p in files]
    source, listing = LocalSource("/"), Listing(entries)

    def score_files(_entries, predictor, batch, workers):
        return score_local(source, listing, predictor, batch, workers)

    cores = os.cpu_count() or 1
    variants = [
        ("score_files as shipped: workers={c} litert_threads={c} batch=64 ahead=2", "sf", cores, cores, 64, 2),
        ("score_files workers={c} litert_threads=1 batch=64", "sf", cores, 1, 64, 2),
        ("score_files workers=1 litert_threads={c} batch=64", "sf", 1, cores, 64, 2),
        ("score_files workers=1 litert_threads=1 batch=64", "sf", 1, 1, 64, 2),
        ("score_files batch=32", "sf", cores, cores, 32, 2),
        ("score_files batch=128", "sf", cores, cores, 128, 2),
        ("copy of score_files, prefetch ahead=1", "ahead", cores, cores, 64, 1),
        ("copy of score_files, prefetch ahead=2 (= shipped)", "ahead", cores, cores, 64, 2),
        ("copy of score_files, prefetch ahead=4", "ahead", cores, cores, 64, 4),
        ("copy of score_files, decode workers={c2} (2x cores), ahead=4", "ahead", 2 * cores, cores, 64, 4),
    ]
    predictors = {t: load_predictor(model_dir, "litert", threads=t) for t in {1, cores}}
    rates: dict[int, list[float]] = {i: [] for i in range(len(variants))}
    cpus: dict[int, list[float]] = {i: [] for i in range(len(variants))}
    for _ in range(repeats):  # interleaved rounds, so machine noise hits every variant alike
        for i, (_, kind, workers, threads, batch, ahead) in enumerate(variants):
            predictor = predictors[threads]
            cpu, start = time.process_time(), time.perf_counter()
            if kind == "sf":
                n = sum(len(b) for b in score_files(entries, predictor, batch, workers))
            else:
                n = sum(len(b) for b in score_ahead(entries, predictor, batch, workers, ahead))
            rates[i].append(n / (time.perf_counter() - start))
            cpus[i].append((time.process_time() - cpu) / n)
    rows = []
    for threads in sorted(predictors):
        r = [bench_model(predictors[threads], batch_arrays, 3.0, 5) for _ in range(repeats)]
        rows.append((f"model only, litert_threads={threads} batch=64", max(x[0] for x in r), float(np.median([x[0] for x in r])), min(x[1] for x in r)))
    for workers in sorted({1, cores}):
        r = [decode_all(files[:1000], size, workers)[:2] for _ in range(repeats)]
        rows.append((f"decode only, threads={workers}", max(x[0] for x in r), float(np.median([x[0] for x in r])), min(x[1] for x in r)))
    for i, (name, *_rest) in enumerate(variants):
        rows.append((name.format(c=cores, c2=2 * cores), max(rates[i]), float(np.median(rates[i])), min(cpus[i])))
        log(f"  {rows[-1][0]}: best {rows[-1][1]:.1f} images/s")
    return rows


# ------------------------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, required=True, help="model bundle folder (model.keras, model.tflite, meta.json)")
    ap.add_argument("--files", type=int, default=3000, help="files in the main folder (default 3000)")
    ap.add_argument("--big-files", type=int, default=30000, help="files in the big folder, for peak RSS (default 30000; 0 skips)")
    ap.add_argument("--baseline-files", type=int, default=200, help="files the slow baseline loop is timed on (default 200)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds of B, C and D; best and median reported (default 3)")
    ap.add_argument("--zip", type=Path, default=DEFAULT_ZIP, help="photo archive (default: the shared cats_and_dogs_3k.zip)")
    ap.add_argument("--listing-files", type=int, default=1_000_000, help="generated empty files for the listing-cost row (default 1,000,000; 0 skips)")
    ap.add_argument("--profile", action="store_true", help="also time in-process labeling variants (threads, batch, prefetch)")
    args = ap.parse_args()

    from catdog.labeling.runtime import ModelMeta, load_predictor

    model_dir = args.model.resolve()
    meta = ModelMeta.read(model_dir / "meta.json")
    size = meta.image_size
    cores = os.cpu_count() or 1
    tmp = Path(tempfile.mkdtemp(prefix="catdog-bench-"))
    try:
        log(f"extracting {args.zip} into {tmp}")
        photos = extract_photos(args.zip, tmp / "src")
        main_dir = linked_folder(photos, tmp / "src", tmp / "main", args.files)
        files = files_in(main_dir)
        log(f"{len(files)} files (hard links to {len(photos)} photos); model {meta.model} at {size} px; {cores} cores")

        # A first predict-folder run on a small folder warms the interpreter's caches (bytecode, shared libraries).
        warm = linked_folder(photos, tmp / "src", tmp / "warm", 128)
        run_cli(warm, model_dir, tmp / "warm.csv")

        log(f"A: notebook loop on {args.baseline_files} files ...")
        a = bench_baseline(model_dir, files[: args.baseline_files], size)
        log(f"   {a:.1f} images/s")

        _, _, arrays = decode_all(files[:640], size, cores)
        batch_arrays = [np.stack(arrays[i : i + 64]) for i in range(0, len(arrays) - 63, 64)]
        del arrays
        litert = load_predictor(model_dir, "litert")
        bs, cs, ds = [], [], []
        for r in range(args.repeats):  # interleaved, so a noisy spell hits B, C and D alike
            b_rate, b_cpu, arrays = decode_all(files, size, cores)
            del arrays
            bs.append((b_rate, b_cpu))
            cs.append(bench_model(litert, batch_arrays, 8.0, 10))
            d = run_cli(main_dir, model_dir, tmp / "main.csv")
            assert d["rows"] == len(files), d
            ds.append(d)
            log(f"round {r + 1}: B {b_rate:.1f}, C {cs[-1][0]:.1f}, D {len(files) / d['wall']:.1f} images/s "
                f"(D wall {d['wall']:.1f}s, labeling {d['labeled_s']}s, peak RSS {d['rss_mib']:.0f} MiB)")
        log("C': model only, Keras batch 64 (reference) ...")
        c_keras = bench_model(load_predictor(model_dir, "keras"), batch_arrays, 8.0, 5)[0]
        log(f"   {c_keras:.1f} images/s")

        big = None
        if args.big_files:
            big_dir = linked_folder(photos, tmp / "src", tmp / "big", args.big_files)
            log(f"D: predict-folder on {args.big_files} files (peak RSS) ...")
            big = run_cli(big_dir, model_dir, tmp / "big.csv")
            assert big["rows"] == args.big_files, big
            log(f"   {args.big_files / big['wall']:.1f} images/s, peak RSS {big['rss_mib']:.0f} MiB")
            paths_small, paths_big = path_list_mib(main_dir), path_list_mib(big_dir)

        listing = None
        if args.listing_files:
            log(f"listing {args.listing_files:,} generated files ...")
            listing = listing_cost(args.listing_files, tmp / "listing")
            shutil.rmtree(tmp / "listing", ignore_errors=True)

        prof = profile(files[:1500], model_dir, size, batch_arrays, args.repeats) if args.profile else []
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    n = len(files)
    b_best, b_med = max(x[0] for x in bs), float(np.median([x[0] for x in bs]))
    c_best, c_med = max(x[0] for x in cs), float(np.median([x[0] for x in cs]))
    d_rates = [n / d["wall"] for d in ds]
    d_best, d_med = max(d_rates), float(np.median(d_rates))
    d_lab = [n / d["labeled_s"] for d in ds if d["labeled_s"]]
    l_best, l_med = 1 / (1 / b_best + 1 / c_best), 1 / (1 / b_med + 1 / c_med)
    b_cpu, c_cpu = min(x[1] for x in bs), min(x[1] for x in cs)
    d_cpu = min(d["cpu"] for d in ds) / n
    startup = float(np.median([d["wall"] - d["labeled_s"] for d in ds if d["labeled_s"]]))

    print()
    print(f"predict throughput: model {meta.model}, {size} px, {model_dir}; {cores} cores; {n} files; "
          f"best and median of {args.repeats} interleaved rounds")
    print(f"{'measure':<58} {'best/s':>8} {'median/s':>9} {'CPU ms/img':>11}")
    print("-" * 90)
    print(f"{'A  notebook loop: load_img + predict(x[None]), Keras':<58} {a:>8.1f} {'':>9} {'':>11}  ({args.baseline_files} files, once)")
    print(f"{f'B  decode only: load_image, {cores} threads':<58} {b_best:>8.1f} {b_med:>9.1f} {1000 * b_cpu:>11.2f}")
    print(f"{'C  model only: LiteRT, batch 64, in memory':<58} {c_best:>8.1f} {c_med:>9.1f} {1000 * c_cpu:>11.2f}")
    print(f"{'   (model only: Keras, batch 64, in memory; once)':<58} {c_keras:>8.1f} {'':>9} {'':>11}")
    print(f"{'L  = 1/(1/B + 1/C)':<58} {l_best:>8.1f} {l_med:>9.1f} {1000 * (b_cpu + c_cpu):>11.2f}  (CPU: B + C)")
    print(f"{'D  predict-folder subprocess, files / wall':<58} {d_best:>8.1f} {d_med:>9.1f} {1000 * d_cpu:>11.2f}  (CPU incl. start-up)")
    if d_lab:
        print(f"{'   (labeling only: its own seconds, no start-up/model load)':<58} {max(d_lab):>8.1f} {float(np.median(d_lab)):>9.1f}")
        print(f"{'   start-up + model load, seconds (median)':<58} {startup:>8.2f}")
    if big:
        print(f"{f'D  predict-folder subprocess, {args.big_files} files (once)':<58} {args.big_files / big['wall']:>8.1f} "
              f"{'':>9} {1000 * big['cpu'] / args.big_files:>11.2f}  ({big['wall']:.1f} s wall)")
    print()
    print(f"D/A = {d_med / a:6.2f}   target >= 10   {'MET' if d_med / a >= 10 else 'MISSED'}   (median D; best D / A {d_best / a:.2f})")
    per_round = [(n / d["wall"]) / (1 / (1 / b[0] + 1 / c[0])) for b, c, d in zip(bs, cs, ds)]
    d_l = float(np.median(per_round))
    print(f"D/L = {d_l:6.2f}   target >= 0.8  {'MET' if d_l >= 0.8 else 'MISSED'}   (median of the per-round ratios "
          f"{', '.join(f'{x:.2f}' for x in per_round)}; best D / best L {d_best / l_best:.2f})")
    print()
    print(f"{'predict-folder peak RSS':<30} {'files':>7} {'RSS MiB':>8} {'path list MiB':>14}")
    print(f"{'':<30} {n:>7} {max(d['rss_mib'] for d in ds):>8.0f} {paths_small if big else float('nan'):>14.1f}")
    if big:
        growth = big["rss_mib"] - max(d["rss_mib"] for d in ds)
        excess = growth - (paths_big - paths_small)
        print(f"{'':<30} {args.big_files:>7} {big['rss_mib']:>8.0f} {paths_big:>14.1f}")
        print(f"RSS growth {growth:+.0f} MiB for {args.big_files / n:.0f}x the files; the path list accounts for "
              f"{paths_big - paths_small:+.0f} MiB; beyond it {excess:+.0f} MiB  {'OK (bounded)' if excess <= 20 else 'GROWS'}")
    if listing:
        print()
        print(f"listing {listing['files']:,} generated files, no decode ({listing['seconds']:.1f} s): path text {listing['text_b']:.0f} B/file; "
              f"kept beyond it {listing['kept_b']:.0f} B/file (peak while listing {listing['peak_b']:.0f}); "
              f"RSS growth {listing['rss_mib']:.0f} MiB = {listing['rss_b']:.0f} B/file beyond the text (peak RSS growth "
              f"{listing['peak_rss_mib']:.0f} MiB)   "
              f"target <= 150 B/file  {'MET' if max(listing['kept_b'], listing['rss_b']) <= 150 else 'MISSED'}")
    if prof:
        print()
        print(f"{f'profile: in-process labeling of {min(n, 1500)} files':<72} {'best/s':>8} {'median/s':>9} {'CPU ms/img':>11}")
        for name, best, med, cpu in prof:
            print(f"{name:<72} {best:>8.1f} {med:>9.1f} {1000 * cpu:>11.2f}")


if __name__ == "__main__":
    main()
