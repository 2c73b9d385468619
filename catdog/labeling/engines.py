"""Who scores the files: the local engine (decode threads a few batches ahead of one model) and the pieces
every engine shares. The Ray engine (catdog.labeling.ray_engine) runs the same `decode` and `score_batch` in its actors.

An engine takes a source and a listing and yields, in listing order, batches of `Scored` rows
(`catdog.labeling.labels.Scored`): (rel, p_dog, pet_score, None) for an image, (rel, None, None, reason) for a file
that could not be used; or `Block`s, rows its workers already formatted with `format_rows` (the Ray engine).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, closing, nullcontext
from dataclasses import dataclass

import numpy as np

from catdog.cpus import usable_cpus
from catdog.images import ImageError, describe_error, load_image
from catdog.labeling.labels import RowCounts, Scored
from catdog.labeling.runtime import Predictor
from catdog.labeling.sources import Listing, Source

Decoded = np.ndarray | str

LARGE_DECODE_PIXELS = 16_000_000


@dataclass(frozen=True)
class Block:
    """Rows `start` .. `start + rows - 1` of the listing as `format_rows` wrote them: what `LabelsCSV.write_block`
    appends, handed back as one object instead of one per row."""

    start: int
    rows: int
    data: bytes
    counts: RowCounts
    last: str | None  # the path of the block's last row


def large_decode_gate() -> Callable[[int], AbstractContextManager]:
    """A gate for `load_image` that lets one decode of over LARGE_DECODE_PIXELS run at a time, so memory
    stays near threads x 16 Mpx + one image at the pixel limit, however many cores decode."""
    large = threading.Lock()
    return lambda pixels: large if pixels > LARGE_DECODE_PIXELS else nullcontext()


def decode(
    source: Source, rel: str, problem: str | None, size: int, max_pixels: int,
    gate: Callable[[int], AbstractContextManager] | None = None,
) -> Decoded:
    """The image as the model takes it, or the one-line reason it cannot be used."""
    if problem:
        return problem
    try:
        with source.opened(rel) as data:
            return load_image(data, size, max_pixels, gate)
    except ImageError as exc:
        return str(exc)
    except OSError as exc:  # an object that vanished or could not be fetched
        return describe_error(exc)


def score_batch(rels: Sequence[str], decoded: Sequence[Decoded], predictor: Predictor) -> list[Scored]:
    """One model call over the decoded images of a batch; the others keep their reasons."""
    arrays = [d for d in decoded if isinstance(d, np.ndarray)]
    p_dog, pet = predictor.predict(np.stack(arrays)) if arrays else ((), None)
    scores = iter(zip(p_dog, pet if pet is not None else [None] * len(p_dog)))
    rows: list[Scored] = []
    for rel, d in zip(rels, decoded):
        if isinstance(d, np.ndarray):
            p, q = next(scores)
            rows.append((rel, float(p), None if q is None else float(q), None))
        else:
            rows.append((rel, None, None, d))
    return rows


def decode_ahead(
    keys: Sequence, decode_one: Callable[[object], Decoded], batch_size: int, workers: int | None = None,
) -> Iterator[tuple[Sequence, list[Decoded]]]:
    """Yield (keys of a batch, their decodes) in order. Decoding runs on a thread pool (Pillow releases the GIL)
    up to two batches ahead of the consumer; `workers` defaults to the CPUs this process may use."""
    threads = workers or usable_cpus()

    def decode_all(chunk: Sequence) -> list[Decoded]:
        return [decode_one(key) for key in chunk]

    with ThreadPoolExecutor(max_workers=threads) as pool:

        def submit(batch: Sequence) -> list[Future]:
            # One task per thread and batch, not per file: a file that fails at once (a broken or foreign file,
            # a FIFO) then costs its decode and no thread-pool round trip.
            step = -(-len(batch) // threads)
            return [pool.submit(decode_all, batch[i : i + step]) for i in range(0, len(batch), step)]

        pending: deque[tuple[Sequence, list[Future]]] = deque()
        try:
            for start in range(0, len(keys), batch_size):
                batch = keys[start : start + batch_size]
                pending.append((batch, submit(batch)))
                if len(pending) > 2:
                    batch, futures = pending.popleft()
                    yield batch, [d for f in futures for d in f.result()]
            while pending:
                batch, futures = pending.popleft()
                yield batch, [d for f in futures for d in f.result()]
        except BaseException:  # Ctrl-C or an abandoned generator: drop the queued decodes, don't finish them
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def score_local(
    source: Source, listing: Listing, predictor: Predictor, batch_size: int,
    workers: int | None = None, max_pixels: int | None = None,
) -> Iterator[list[Scored]]:
    """Yield batches in listing order, decoded by `decode_ahead`. `workers` defaults to the CPUs this process
    may use; `max_pixels` to the limit the model was trained with (meta.json)."""
    size = predictor.meta.image_size
    max_pixels = predictor.meta.max_pixels if max_pixels is None else max_pixels
    gate = large_decode_gate()
    problems = listing.problems

    def decode_one(rel: str) -> Decoded:
        return decode(source, rel, problems.get(rel), size, max_pixels, gate)

    with closing(decode_ahead(listing.paths, decode_one, batch_size, workers)) as batches:
        for rels, decoded in batches:
            yield score_batch(rels, decoded, predictor)
