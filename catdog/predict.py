"""Batch labeling of a folder: every file listed once, bad files explained, bounded memory, resumable.

Files are listed (not opened) first and sorted; then decoded in parallel threads, a few batches
ahead of the model, and written batch by batch to `<out>.partial`. After each batch the byte size
and last path are saved to `<out>.progress.json`, so `--resume` continues a killed run exactly.
The finished CSV is renamed onto `--out` in one step.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import json
import os
import stat
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from catdog.errors import CatdogError
from catdog.fsutil import write_json
from catdog.images import ImageError, load_image
from catdog.progress import progress_bar
from catdog.runtime import Predictor

COLUMNS = ("path", "label", "p_dog", "status", "error")
PROGRESS_VERSION = 2


@dataclass(frozen=True)
class Entry:
    rel: str  # relative to the labeled folder, "/"-separated
    path: Path
    problem: str | None = None  # known without opening it: broken symlink, FIFO, ...


@dataclass(frozen=True)
class Summary:
    out: Path
    ok: int  # rows in the CSV, an earlier interrupted run's included
    error: int
    seconds: float
    labeled_now: int  # files this run labeled (fewer than ok + error after --resume)

    @property
    def rate(self) -> float:
        return self.labeled_now / self.seconds if self.seconds > 0 else 0.0


def _special(mode: int) -> str | None:
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "symlink to a folder (not followed)"
    kind = {stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a device", stat.S_IFBLK: "a device"}
    return f"not a regular file ({kind.get(stat.S_IFMT(mode), 'special file')})"


def scan_folder(root: Path, recursive: bool = True, skip: Callable[[str], bool] | None = None) -> list[Entry]:
    """Every file under `root` (hidden ones too), sorted by relative path, without opening any.

    Symlinked files are followed; symlinked folders are listed, not entered, so loops cannot hang.
    `skip(path)` leaves out files (not folders) for which it is true; it gets the path with `root` resolved
    (symlinks followed), so a folder reached through a link still recognises its own files.
    """
    real_root = os.path.realpath(root)
    entries: list[Entry] = []
    stack = [(root, "")]
    while stack:
        folder, prefix = stack.pop()
        try:
            with os.scandir(folder) as it:
                children = list(it)
        except OSError as exc:
            if not prefix:
                raise CatdogError(f"cannot read folder {root}: {exc.strerror or exc}") from None
            entries.append(Entry(prefix.rstrip("/"), Path(folder), f"cannot list folder: {exc.strerror or exc}"))
            continue
        for child in children:
            rel = prefix + child.name
            try:
                if skip is not None and not child.is_dir(follow_symlinks=False) and skip(os.path.join(real_root, rel)):
                    continue
                if child.is_symlink():
                    try:
                        problem = _special(os.stat(child.path).st_mode)
                    except OSError as exc:
                        problem = "symlink loop" if exc.errno == errno.ELOOP else "broken symlink"
                    entries.append(Entry(rel, Path(child.path), problem))
                elif child.is_dir(follow_symlinks=False):
                    if recursive:
                        stack.append((child.path, rel + "/"))
                else:
                    entries.append(Entry(rel, Path(child.path), _special(child.stat(follow_symlinks=False).st_mode)))
            except OSError as exc:
                entries.append(Entry(rel, Path(child.path), f"cannot stat: {exc.strerror or exc}"))
    entries.sort(key=lambda e: e.rel)
    return entries


def shard_of(rel: str, count: int) -> int:
    """A stable shard number in [0, count) for a relative path (same on every machine and run)."""
    digest = hashlib.blake2b(rel.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count


def parse_shard(text: str) -> tuple[int, int]:
    """'K/N' with 0 <= K < N."""
    try:
        k, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise CatdogError(f"invalid --shard {text!r}: expected K/N, e.g. 0/4") from None
    if n < 1 or not 0 <= k < n:
        raise CatdogError(f"invalid --shard {text!r}: need 0 <= K < N")
    return k, n


LARGE_DECODE_PIXELS = 16_000_000


def large_decode_gate() -> Callable[[int], AbstractContextManager]:
    """A gate for `load_image` that lets one decode of over LARGE_DECODE_PIXELS run at a time, so memory
    stays near threads x 16 Mpx + one image at the pixel limit, however many cores decode."""
    large = threading.Lock()
    return lambda pixels: large if pixels > LARGE_DECODE_PIXELS else nullcontext()


def score_files(
    entries: list[Entry], predictor: Predictor, batch_size: int, workers: int | None = None,
    max_pixels: int | None = None,
) -> Iterator[list[tuple[Entry, float | None, str | None]]]:
    """Yield batches of (entry, p_dog, None) or (entry, None, reason), in order.

    Decoding runs on a thread pool (Pillow releases the GIL) up to two batches ahead of the model.
    `max_pixels` defaults to the limit the model was trained with (meta.json).
    """
    size = predictor.meta.image_size
    max_pixels = predictor.meta.max_pixels if max_pixels is None else max_pixels

    gate = large_decode_gate()

    def decode(entry: Entry) -> np.ndarray | str:
        if entry.problem:
            return entry.problem
        try:
            return load_image(entry.path, size, max_pixels, gate)
        except ImageError as exc:
            return str(exc)

    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        pending: deque[tuple[list[Entry], list[Future]]] = deque()
        batches = (entries[i : i + batch_size] for i in range(0, len(entries), batch_size))
        try:
            for batch in batches:
                pending.append((batch, [pool.submit(decode, e) for e in batch]))
                if len(pending) > 2:
                    yield _run(*pending.popleft(), predictor)
            while pending:
                yield _run(*pending.popleft(), predictor)
        except BaseException:  # Ctrl-C or an abandoned generator: drop the queued decodes, don't finish them
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def _run(batch: list[Entry], futures: list[Future], predictor: Predictor) -> list[tuple[Entry, float | None, str | None]]:
    decoded = [f.result() for f in futures]
    arrays = [d for d in decoded if isinstance(d, np.ndarray)]
    scores = iter(predictor.predict(np.stack(arrays)) if arrays else ())
    return [(e, float(next(scores)), None) if isinstance(d, np.ndarray) else (e, None, d) for e, d in zip(batch, decoded)]


def _job_key(root: Path, model: Path, threshold: float, shard: tuple[int, int], recursive: bool) -> dict:
    model_files = sorted(model.iterdir()) if model.is_dir() else [model]
    identity = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in model_files if p.is_file()]
    return {
        "root": os.path.abspath(root),
        "model": hashlib.sha256(json.dumps(identity).encode()).hexdigest(),
        "threshold": threshold,
        "shard": list(shard),
        "recursive": recursive,
    }


def _files_digest(entries: list[Entry]) -> str:
    """A digest of the relative paths to label: resuming is only exact when they have not changed."""
    digest = hashlib.blake2b(digest_size=16)
    for entry in entries:
        digest.update(entry.rel.encode("utf-8", "surrogatepass") + b"\0")
    return digest.hexdigest()


def partial_path(out: Path) -> Path:
    """Where a run writing `out` appends its rows until the CSV is complete (then renamed onto `out`)."""
    return out.with_name(out.name + ".partial")


def progress_path(out: Path) -> Path:
    """Where a run writing `out` saves its progress after each batch (removed when the CSV is complete)."""
    return out.with_name(out.name + ".progress.json")


def _load_progress(progress: Path, partial: Path, key: dict, files: str) -> tuple[int, str | None]:
    """(bytes to keep of the partial CSV, last path written) from a previous run of the same job."""
    if not progress.exists() or not partial.exists():
        return 0, None
    try:
        saved = json.loads(progress.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise CatdogError(f"cannot resume: {progress} is unreadable; rerun without --resume") from None
    if saved.get("version") != PROGRESS_VERSION or saved.get("key") != key:
        raise CatdogError(
            f"cannot resume: {progress} belongs to a different run (folder, model, threshold, shard or recursion differ); "
            "rerun without --resume"
        )
    if saved.get("files") != files:
        raise CatdogError(
            "cannot resume: files were added, removed or renamed under the folder since the interrupted run; "
            "rerun with --overwrite to start over"
        )
    if not isinstance(saved.get("bytes"), int) or partial.stat().st_size < saved["bytes"]:
        raise CatdogError(f"cannot resume: {partial} does not match its saved progress; rerun without --resume")
    return saved["bytes"], saved.get("last")


def own_files(out: Path) -> Callable[[str], bool]:
    """Whether a (resolved) path is this run's own: the CSV at `out`, its `.partial` and `.progress.json`,
    or a hidden temporary file of their atomic writes. Those are never labelled; every other file is."""
    folder = os.path.realpath(out.parent)
    progress = progress_path(out).name
    exact = {os.path.join(folder, name) for name in (out.name, partial_path(out).name, progress)}
    temp_prefixes = (f".{out.name}.", f".{progress}.")

    def own(path: str) -> bool:
        parent, name = os.path.split(path)
        return path in exact or (parent == folder and name.startswith(temp_prefixes) and name.endswith(".tmp"))

    return own


def _count_statuses(partial: Path) -> tuple[int, int]:
    with open(partial, newline="", encoding="utf-8", errors="backslashreplace") as fh:
        statuses = [row["status"] for row in csv.DictReader(fh)]
    return statuses.count("ok"), statuses.count("error")


def predict_folder(
    root: Path,
    predictor: Predictor,
    model_path: Path,
    out: Path,
    batch_size: int = 64,
    threshold: float | None = None,
    recursive: bool = True,
    shard: tuple[int, int] = (0, 1),
    resume: bool = False,
    overwrite: bool = False,
    workers: int | None = None,
    max_pixels: int | None = None,
) -> Summary:
    """Label every file under `root` into the CSV `out` (columns path,label,p_dog,status,error).

    `max_pixels` defaults to the limit the model was trained with (meta.json).
    """
    started = time.perf_counter()
    if not root.is_dir():
        raise CatdogError(f"folder not found: {root}" if not root.exists() else f"not a folder: {root}")
    if out.exists() and not overwrite:
        raise CatdogError(f"{out} already exists; pass --overwrite to replace it")
    if out.is_dir():
        raise CatdogError(f"--out {out} is a folder; give a CSV file path")
    threshold = predictor.meta.threshold if threshold is None else threshold
    if not 0 < threshold < 1:
        raise CatdogError(f"invalid threshold {threshold}: must be between 0 and 1")
    classes = predictor.meta.classes
    partial = partial_path(out)
    progress = progress_path(out)
    if progress.exists() and not (resume or overwrite):
        raise CatdogError(f"an interrupted run left its progress in {progress}; pass --resume to continue it or --overwrite to start over")
    key = _job_key(root, model_path, threshold, shard, recursive)

    entries = scan_folder(root, recursive, skip=own_files(out))
    k, n = shard
    if n > 1:
        entries = [e for e in entries if shard_of(e.rel, n) == k]
    files = _files_digest(entries)
    keep, last = _load_progress(progress, partial, key, files) if resume else (0, None)
    if last is not None:
        entries = [e for e in entries if e.rel > last]

    out.parent.mkdir(parents=True, exist_ok=True)
    ok = error = 0
    if keep:
        os.truncate(partial, keep)
        ok, error = _count_statuses(partial)
    elif progress.exists():  # starting over: an older run's progress no longer describes the partial CSV
        progress.unlink()
    with open(partial, "a" if keep else "w", newline="", encoding="utf-8", errors="backslashreplace") as fh:
        # CRLF (RFC 4180), not "\n": Python < 3.12 quotes only the line terminator's characters, so a file
        # name holding a bare "\r" would otherwise break the row.
        writer = csv.writer(fh, lineterminator="\r\n")
        if not keep:
            writer.writerow(COLUMNS)
        with progress_bar(f"label {root}", len(entries)) as advance:
            for batch in score_files(entries, predictor, batch_size, workers, max_pixels):
                for entry, p_dog, reason in batch:
                    if reason is None:
                        writer.writerow((entry.rel, classes[int(p_dog >= threshold)], f"{p_dog:.6f}", "ok", ""))
                        ok += 1
                    else:
                        writer.writerow((entry.rel, "", "", "error", reason))
                        error += 1
                fh.flush()
                os.fsync(fh.fileno())
                write_json(progress, {"version": PROGRESS_VERSION, "key": key, "files": files, "bytes": fh.tell(), "last": batch[-1][0].rel})
                advance(len(batch))
    os.replace(partial, out)
    progress.unlink(missing_ok=True)
    return Summary(out, ok, error, time.perf_counter() - started, len(entries))
