"""The Ray engine's driver-side check of the blocks its actors hand back, with fabricated blocks (no cluster):
blocks in order reach the CSV; one that comes back twice, out of order, short or for other files is refused
before any of its bytes are written."""

from __future__ import annotations

from pathlib import Path

import pytest

from catdog.errors import CatdogError
from catdog.labeling.engines import Block
from catdog.labeling.labels import Decision, LabelsCSV, format_rows, partial_path
from catdog.labeling.ray_engine import BLOCK_ROWS, block_rows, checked_blocks

DECISION = Decision(("cat", "dog"), 0.5)
PATHS = [f"photo_{i:03d}.jpg" for i in range(10)]


def block(start: int, rows: int, paths: list[str] = PATHS) -> Block:
    scored = [(rel, 0.25, None, None) if i % 3 else (rel, None, None, "empty file") for i, rel in enumerate(paths[start : start + rows])]
    data, counts, last = format_rows(scored, DECISION)
    return Block(start, rows, data, counts, last)


def write_all(blocks, out: Path) -> None:
    """What predict does with an engine's blocks: append each as it comes."""
    with LabelsCSV(out, {"test": True}, "files", DECISION, resume=False) as labels:
        for b in checked_blocks(blocks, PATHS):
            labels.write_block(b.data, b.counts, b.last)
        labels.finish()


def written(out: Path) -> list[str]:
    return [line.split(",")[0] for line in partial_path(out).read_text().splitlines()[1:]]


def test_blocks_in_order_write_every_row_once(tmp_path):
    out = tmp_path / "labels.csv"
    write_all([block(0, 4), block(4, 4), block(8, 2)], out)
    assert [line.split(",")[0] for line in out.read_text().splitlines()[1:]] == PATHS


@pytest.mark.parametrize("blocks, what, good", [
    ([block(0, 4), block(4, 4), block(4, 4), block(8, 2)], "twice", 8),
    ([block(0, 4), block(0, 4), block(4, 4), block(8, 2)], "twice", 4),
    ([block(0, 4), block(8, 2), block(4, 4)], "out of order", 4),
    ([block(0, 4), block(4, 4, PATHS[:4] + ["other.jpg"] * 6)], "damaged", 4),  # rows for other files
])
def test_a_block_that_comes_back_twice_or_out_of_order_is_refused_and_never_written(tmp_path, blocks, what, good):
    out = tmp_path / "labels.csv"
    with pytest.raises(CatdogError, match=f"{what} .*nothing of it was written.*--resume"):
        write_all(blocks, out)
    assert not out.exists()
    assert written(out) == PATHS[:good]


def test_a_run_whose_blocks_stop_short_is_refused(tmp_path):
    out = tmp_path / "labels.csv"
    with pytest.raises(CatdogError, match="returned 8 of 10 rows"):
        write_all([block(0, 4), block(4, 4)], out)
    assert not out.exists() and written(out) == PATHS[:8]


def test_blocks_are_whole_batches_and_give_every_actor_several():
    assert block_rows(10_000_000, 2, 64) == BLOCK_ROWS  # few actors, many rows: as large as allowed
    assert block_rows(30_000, 2, 64) == 256  # 58 blocks per actor: a short last one
    assert block_rows(10_000_000, 800, 64) == 1600  # 7-8 per actor: not so small the driver becomes the bound
    assert 10_000_000 / block_rows(10_000_000, 8000, 64) >= 8000 * 3  # 8,000 actors: still a few blocks each
    assert block_rows(46, 2, 2) == 4
    assert block_rows(46, 2, 8) == 8  # never less than one batch
    assert block_rows(1000, 1, 5000) == 5000  # nor more than one batch when a batch is that large
    assert all(block_rows(n, a, b) % b == 0 for n in (1, 999, 10**6) for a in (1, 7, 100) for b in (1, 64, 100))


def test_an_actors_packed_block_holds_format_rows_bytes():
    pytest.importorskip("pyarrow")
    from catdog.labeling.ray_engine import pack_block, unpack_blocks

    scored = [("a.jpg", 0.75, 0.5, None), ("b\\\\x.jpg", None, None, "not an image, \"quoted\"")]
    (got,) = unpack_blocks(pack_block(7, scored, DECISION))
    data, counts, last = format_rows(scored, DECISION)
    assert got == Block(7, 2, data, counts, last)
