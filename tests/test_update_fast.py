"""The fast paths of a no-change `--update`: the listing tests file names before building paths for its own-files
check, and the join keeps runs of unchanged rows piece by piece of the old CSV. Each is checked against what the
row-by-row rules say, at every row position and piece size, so a piece's first or last row, a quoted row cut by a
piece boundary and kept-row segments are all covered."""

from __future__ import annotations

import csv
import io
import os
from array import array
from pathlib import Path

import pytest

from catdog.labeling import update
from catdog.labeling.jobrecord import file_sha256
from catdog.labeling.labels import HEADER, NEITHER, Decision, format_rows, own_files
from catdog.labeling.sources import Listing, LocalSource
from catdog.labeling.update import Kept, plan_update, write_files

DECISION = Decision(("cat", "dog"), 0.5, 0.5)
KEY = {"source": "/photos", "model": "m", "shard": [0, 1], "recursive": True, "follow_links": True}


def old_rows(count: int, quoted: bool = False) -> list[dict]:
    """Rows of an earlier run: ok cat/dog/neither rows, an error row every 7th; with `quoted`, paths that need
    quoting (a comma, a quote, a line break) among them."""
    rows = []
    for i in range(count):
        path = f"d{i // 10:02d}/f{i:04d}.jpg"
        if quoted and i % 5 == 2:
            path = [f"{path[:-4]}, a comma.jpg", f'{path[:-4]} "quoted".jpg', f"{path[:-4]}\r\nline.jpg"][i % 3]
        error = "not an image" if i % 7 == 3 else None
        rows.append({"path": path, "p_dog": (i % 10) / 10 + 0.05, "pet": 0.2 if i % 4 == 1 else 0.9, "error": error,
                     "size": 1000 + i, "stamp": 10**18 + i})
    assert [r["path"] for r in rows] == sorted(r["path"] for r in rows)
    return rows


def write_old(tmp_path: Path, rows: list[dict]) -> Path:
    """The CSV and sidecar an earlier run would have written for `rows`."""
    out = tmp_path / "labels.csv"
    scored = [(r["path"], None if r["error"] else r["p_dog"], None if r["error"] else r["pet"], r["error"]) for r in rows]
    data, _, _ = format_rows(scored, DECISION)
    out.write_bytes(HEADER + data)
    listing = Listing([r["path"] for r in rows], {}, array("q", [r["size"] for r in rows]), array("q", [r["stamp"] for r in rows]))
    write_files(out, file_sha256(out), KEY, {"threshold": 0.5, "pet_threshold": 0.5}, listing)
    return out


def listing_of(rows: list[dict]) -> Listing:
    return Listing([r["path"] for r in rows], {}, array("q", [r["size"] for r in rows]), array("q", [r["stamp"] for r in rows]))


def check_plan(out: Path, old: list[dict], new: list[dict], batch: int) -> None:
    """plan_update's plan equals the row-by-row rules: a row is kept when its file is listed with the same size and
    stamp and its status is ok; every kept segment is exactly its rows' bytes of the old CSV, with their count,
    `neither` count and first and last paths; the steps give the listing's paths in order."""
    plan = plan_update(out, KEY, listing_of(new), overwrite=False)
    assert plan.note is None
    before = {r["path"]: r for r in old}
    kept = [r["path"] for r in new if (o := before.get(r["path"])) and not o["error"]
            and (o["size"], o["stamp"]) == (r["size"], r["stamp"]) and r["size"] >= 0 and r["stamp"] != -1]
    listed = {r["path"] for r in new}
    assert plan.kept == len(kept)
    assert plan.dropped == sum(r["path"] not in listed for r in old)
    assert plan.to_label.paths == [r["path"] for r in new if r["path"] not in set(kept)]
    data, done = out.read_bytes(), 0
    in_order: list[str] = []
    for step in plan.steps:
        if isinstance(step, Kept):
            assert 1 <= step.rows <= batch
            rows = list(csv.reader(io.StringIO(data[step.start:step.end].decode(), newline="")))
            assert [row[0] for row in rows] == kept[done:done + step.rows]
            assert (len(rows), sum(row[1] == NEITHER for row in rows), rows[0][0], rows[-1][0]) == (
                step.rows, step.neither, step.first, step.last)
            in_order += [row[0] for row in rows]
            done += step.rows
        else:
            assert step and not set(step) & set(kept)
            in_order += step
    assert in_order == [r["path"] for r in new]


@pytest.fixture
def small_pieces(monkeypatch):
    """Pieces of a few rows and segments of 5 rows, so that a few dozen rows cross many boundaries."""
    monkeypatch.setattr(update, "KEPT_BATCH", 5)

    def use(size: int) -> None:
        monkeypatch.setattr(update, "_JOIN_BYTES", size)

    return use


@pytest.mark.parametrize("quoted", [False, True])
def test_an_unchanged_csv_is_kept_whole_at_every_piece_size(tmp_path, small_pieces, quoted):
    rows = old_rows(60, quoted)
    out = write_old(tmp_path, rows)
    assert (b'"' in out.read_bytes()) == quoted
    for size in [7, 40, 61, 97, 150, 333, 1 << 17]:
        small_pieces(size)
        check_plan(out, rows, rows, batch=5)


@pytest.mark.parametrize("quoted", [False, True])
def test_one_changed_row_anywhere_is_labeled_again_and_the_rest_kept(tmp_path, small_pieces, quoted):
    rows = old_rows(40, quoted)
    out = write_old(tmp_path, rows)
    for size in (61, 150):
        small_pieces(size)
        for i in range(len(rows)):  # every row: so the first and the last row of each piece
            stamp = [dict(r, stamp=r["stamp"] + (k == i)) for k, r in enumerate(rows)]
            check_plan(out, rows, stamp, batch=5)
            grown = [dict(r, size=r["size"] + (k == i)) for k, r in enumerate(rows)]
            check_plan(out, rows, grown, batch=5)
            check_plan(out, rows, rows[:i] + rows[i + 1:], batch=5)  # deleted
            added = dict(rows[i], path=rows[i]["path"][:-4] + "-new.jpg", error=None)
            check_plan(out, rows, sorted(rows + [added], key=lambda r: r["path"]), batch=5)


def test_runs_of_changes_additions_and_deletions_keep_exactly_the_unchanged_rows(tmp_path, small_pieces):
    rows = old_rows(120, quoted=True)
    out = write_old(tmp_path, rows)
    new = [dict(r, stamp=r["stamp"] + 1) if 30 <= i < 47 or i % 11 == 0 else r for i, r in enumerate(rows) if not 60 <= i < 75]
    new += [dict(rows[0], path=f"d05/zz{i}.jpg") for i in range(9)] + [dict(rows[0], path=f"e{i}.jpg") for i in range(30)]
    new.sort(key=lambda r: r["path"])
    for size in (33, 150, 700, 1 << 17):
        small_pieces(size)
        check_plan(out, rows, new, batch=5)


def test_neither_counts_of_kept_segments_match_their_rows(tmp_path, small_pieces):
    rows = old_rows(50)
    out = write_old(tmp_path, rows)
    assert out.read_bytes().count(b",neither,") > 5
    small_pieces(1 << 17)
    plan = plan_update(out, KEY, listing_of(rows), overwrite=False)
    segments = [step for step in plan.steps if isinstance(step, Kept)]
    assert max(s.rows for s in segments) == 5 and sum(s.neither for s in segments) == out.read_bytes().count(b",neither,")


def test_a_quoted_row_with_a_line_break_cut_by_any_piece_boundary_is_read_whole(tmp_path, small_pieces):
    rows = old_rows(12)
    rows[6]["path"] = "d00/f0006\r\n,\"x\"\n" + "y" * 50 + ".jpg"
    rows.sort(key=lambda r: r["path"])
    out = write_old(tmp_path, rows)
    data = out.read_bytes()
    end = data.index(b'.jpg"', data.index(b'"d00/f0006')) + 5
    for size in range(1, end + 80):  # piece boundaries before, inside and after the quoted row
        small_pieces(size)
        check_plan(out, rows, rows, batch=5)
        check_plan(out, rows, [r for r in rows if r["path"] != "d01/f0011.jpg"], batch=5)


@pytest.mark.parametrize("edit", [(b"d01/f0012.jpg", b"d01/f0099.jpg"), (b"d01/f0012.jpg,cat", b"d01/f0012.jpg,,cat"),
                                  (b"d01/f0012.jpg,cat,0.250000,0.900000,ok,\r\n", b"d01/f0012.jpg,cat,0.250000,0.900000,ok,\n")],
                         ids=["out of order", "seven fields", "a row ending in LF alone"])
def test_a_csv_whose_rows_are_not_what_catdog_writes_is_relabeled_whole(tmp_path, small_pieces, edit):
    rows = old_rows(30)
    out = write_old(tmp_path, rows)
    assert edit[0] in out.read_bytes()
    out.write_bytes(out.read_bytes().replace(*edit))
    write_files(out, file_sha256(out), KEY, {}, listing_of(rows))
    for size in (61, 1 << 17):
        small_pieces(size)
        plan = plan_update(out, KEY, listing_of(rows), overwrite=False)
        assert plan.kept == 0 and plan.note == f"relabeling every file: {out} does not match labels.csv.files"


def test_a_file_whose_size_or_stamp_is_unknown_is_labeled_again(tmp_path, small_pieces):
    rows = old_rows(40)
    for i in (0, 9, 10, 22):
        rows[i]["size" if i % 2 else "stamp"] = -1  # the same -1 in the new listing: never taken as unchanged
    out = write_old(tmp_path, rows)
    for size in (61, 1 << 17):
        small_pieces(size)
        check_plan(out, rows, rows, batch=5)


def test_the_listing_checks_full_paths_only_for_names_holding_the_csv_name(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("a.jpg", "labels.csv", "labels.csv.partial", ".labels.csv.x1.tmp", "my-labels.csv.jpg", "b.jpg"):
        (folder / name).write_bytes(b"x")
    (folder / "link.jpg").symlink_to(folder / "labels.csv.files")  # a link to a working file not written yet
    own, asked = own_files(folder / "labels.csv"), []

    def skip(path: str) -> bool:
        asked.append(os.path.basename(path))
        return own(path)

    skip.marker = own.marker
    listing = LocalSource(str(folder)).list(skip=skip)
    assert listing.paths == ["a.jpg", "b.jpg", "my-labels.csv.jpg"]
    assert sorted(asked) == [".labels.csv.x1.tmp", "labels.csv", "labels.csv.files", "labels.csv.partial", "my-labels.csv.jpg"]
    assert LocalSource(str(folder)).list(skip=own).paths == listing.paths
    assert LocalSource(str(folder)).list(skip=lambda path: own(path)).paths == listing.paths  # no marker: every file asked
