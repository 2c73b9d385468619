"""Who scores the files: the local engine (decode threads a few batches ahead of one model) and the pieces
every engine shares. The Ray engine (catdog.labeling.ray_engine) runs the same `decode` and `score_batch` in its actors.

An engine takes a source and a listing and yields, in listing order, batches of `Scored` rows
(`catdog.labeling.labels.Scored`): (rel, p_dog, pet_score, None) for an image, (rel, None, None, reason) for a file
that could not be used; or `Block`s, rows its workers already formatted with `format_rows` (the Ray engine).
"""

from __future__ import annotations

import multiprocessing
import os
import select
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import AbstractContextManager, closing, nullcontext
from dataclasses import dataclass

import numpy as np

from catdog.cpus import usable_cpus
from catdog.images import ImageError, check_header, describe_error, load_image
from catdog.labeling.labels import RowCounts, Scored
from catdog.labeling.runtime import Predictor
from catdog.labeling.sources import Listing, LocalSource, Source

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


def _read(source: Source, rel: str, problem: str | None, step: Callable[[object], Decoded | None]) -> Decoded | None:
    """`step` on the opened file, or the one-line reason it cannot be used."""
    if problem:
        return problem
    try:
        with source.opened(rel) as data:
            return step(data)
    except ImageError as exc:
        return str(exc)
    except OSError as exc:  # an object that vanished or could not be fetched
        return describe_error(exc)


def decode(
    source: Source, rel: str, problem: str | None, size: int, max_pixels: int,
    gate: Callable[[int], AbstractContextManager] | None = None,
) -> Decoded:
    """The image as the model takes it, or the one-line reason it cannot be used."""
    return _read(source, rel, problem, lambda data: load_image(data, size, max_pixels, gate))


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


PROCESS_MIN_FILES = 4096  # fewer files than this are never screened on processes: their start-up would not pay
PROCESS_TASK_FILES = 128  # files per task handed to a screening process (a round trip costs ~0.1 ms)


class FileDecoder:
    """`decode` of one listed file (what `score_local` hands `decode_ahead`), and its `screen`."""

    def __init__(self, source: Source, problems: dict[str, str], size: int, max_pixels: int):
        self.source, self.problems, self.size, self.max_pixels = source, problems, size, max_pixels
        self.gate = large_decode_gate()

    def __call__(self, rel: str) -> Decoded:
        return decode(self.source, rel, self.problems.get(rel), self.size, self.max_pixels, self.gate)

    def screen(self, rel: str) -> str | None:
        """The reason `decode` gives a file it refuses before decoding a pixel (unreadable, not an image, a refused
        format, too large, a broken header), or None."""
        return _read(self.source, rel, self.problems.get(rel), lambda data: check_header(data, self.size, self.max_pixels))


_process_screen: Callable[[object], Decoded | None] | None = None


def _start_screening_process(screen: Callable[[object], Decoded | None], parent: int) -> None:
    """A screening process: Ctrl-C is the parent's to handle (it cancels what is queued); it keeps `screen`, and
    ends as soon as the parent does (killed, say), rather than waiting for work that never comes while it holds a
    copy of the parent's files, the run's lock among them."""
    global _process_screen
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _process_screen = screen
    threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()


def _exit_with(parent: int) -> None:
    try:
        pidfd = os.pidfd_open(parent)
    except ProcessLookupError:
        os._exit(1)
    except (AttributeError, OSError):  # no pidfd (an old kernel, not Linux): ask every half second
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)
    select.select([pidfd], [], [])  # readable when the parent has ended
    os._exit(1)


def _screen_in_process(chunk: Sequence) -> list[Decoded | None]:
    return [_process_screen(key) for key in chunk]


def _screening_pool(workers: int, screen: Callable[[object], Decoded | None]) -> ProcessPoolExecutor:
    # fork, not spawn or forkserver: those run the caller's main script again in every process (a script that
    # calls the API at its top level would start itself over), and each start costs ~0.3 s of imports. A forked
    # process only screens files: it never touches the model's threads or the parent's locks.
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork"),
                               initializer=_start_screening_process, initargs=(screen, os.getpid()))


def decode_ahead(
    keys: Sequence, decode_one: Callable[[object], Decoded], batch_size: int, workers: int | None = None,
    screen: Callable[[object], Decoded | None] | None = None,
) -> Iterator[tuple[Sequence, list[Decoded]]]:
    """Yield (keys of a batch, their decodes) in order, decoded on a thread pool (Pillow releases the GIL while it
    decodes pixels) up to two spans of batches ahead of the consumer; a span is one batch. `workers` defaults to
    the CPUs this process may use.

    `screen(key)`, if given, is what `decode_one(key)` returns for a key it refuses before decoding any pixel, or
    None. With at least PROCESS_MIN_FILES keys and two workers, a pool of forked processes screens spans of about
    PROCESS_TASK_FILES keys per worker ahead of the threads, which then decode only what passed: the per-file work
    that holds the GIL (reading, Pillow's header parsing, the reason) runs on every core, which is what bounds a
    folder of broken files, while photos are decoded on the threads as without it."""
    workers = workers or usable_cpus()
    screening = (screen is not None and workers > 1 and len(keys) >= PROCESS_MIN_FILES
                 and "fork" in multiprocessing.get_all_start_methods())
    span = batch_size * max(1, -(-PROCESS_TASK_FILES * workers // batch_size)) if screening else batch_size

    def decode_chunk(chunk: Sequence, screened: Future | None) -> list[Decoded]:
        try:
            reasons = screened.result() if screened else [None] * len(chunk)
        except BrokenProcessPool:  # a screening process died (killed, out of memory): the threads do it all
            reasons = [None] * len(chunk)
        return [decode_one(key) if reason is None else reason for key, reason in zip(chunk, reasons)]

    screening_pool = _screening_pool(workers, screen) if screening else nullcontext()
    with ThreadPoolExecutor(max_workers=workers) as pool, screening_pool as screens:

        def submit(keys_of_span: Sequence) -> list[Future]:
            # One task per worker and span, not per file: a file that fails at once (a broken or foreign file,
            # a FIFO) then costs its decode and no pool round trip.
            step = -(-len(keys_of_span) // workers)
            chunks = [keys_of_span[i : i + step] for i in range(0, len(keys_of_span), step)]
            return [pool.submit(decode_chunk, c, screened(c)) for c in chunks]

        def screened(chunk: Sequence) -> Future | None:
            try:
                return screens.submit(_screen_in_process, chunk) if screens else None
            except BrokenProcessPool:
                return None

        def batches(keys_of_span: Sequence, futures: list[Future]) -> Iterator[tuple[Sequence, list[Decoded]]]:
            decoded = [d for f in futures for d in f.result()]
            for start in range(0, len(keys_of_span), batch_size):
                yield keys_of_span[start : start + batch_size], decoded[start : start + batch_size]

        pending: deque[tuple[Sequence, list[Future]]] = deque()
        try:
            for start in range(0, len(keys), span):
                keys_of_span = keys[start : start + span]
                pending.append((keys_of_span, submit(keys_of_span)))
                if len(pending) > 2:
                    yield from batches(*pending.popleft())
            while pending:
                yield from batches(*pending.popleft())
        except BaseException:  # Ctrl-C or an abandoned generator: drop the queued work, don't finish it
            # (waiting for what runs: after shutdown(wait=False) Python 3.11 races a process pool's manager
            # thread at exit and prints an EBADF traceback under the "interrupted" line)
            if screens:
                screens.shutdown(wait=True, cancel_futures=True)
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def score_local(
    source: Source, listing: Listing, predictor: Predictor, batch_size: int,
    workers: int | None = None, max_pixels: int | None = None,
) -> Iterator[list[Scored]]:
    """Yield batches in listing order, decoded by `decode_ahead`. `workers` defaults to the CPUs this process
    may use; `max_pixels` to the limit the model was trained with (meta.json)."""
    size = predictor.meta.image_size
    max_pixels = predictor.meta.max_pixels if max_pixels is None else max_pixels
    decode_one = FileDecoder(source, listing.problems, size, max_pixels)
    screen = decode_one.screen if isinstance(source, LocalSource) else None  # S3 reads wait on the network, not the GIL
    with closing(decode_ahead(listing.paths, decode_one, batch_size, workers, screen)) as batches:
        for rels, decoded in batches:
            yield score_batch(rels, decoded, predictor)
