"""The labels CSV's working files under attack and after accidents: --resume checks what it continues, planted
symlinks and special files are refused, a run whose lock or partial CSV is taken from under it never writes a
wrong CSV, refusals say what to do next, and a killed run's leftovers never mislead a later one."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from catdog.errors import CatdogError
from catdog.labeling.labels import lock_path, partial_path, progress_path
from conftest import catdog, make_image
from test_predict import label_until_interrupted, read_rows


@pytest.fixture
def photos(tmp_path) -> Path:
    folder = tmp_path / "in"
    for i in range(6):
        make_image(folder / f"{i}.jpg", seed=i)
    return folder


@pytest.fixture
def straight(photos, tiny_bundle, tmp_path) -> Path:
    """The CSV of an uninterrupted run over `photos`."""
    out = tmp_path / "straight" / "labels.csv"
    catdog("predict-folder", photos, "--model", tiny_bundle, "--out", out)
    return out


def one_error_line(result) -> str:
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def tamper_last_removed(progress: dict, partial: Path, photos: Path) -> None:
    del progress["last"]


def tamper_last_earlier(progress: dict, partial: Path, photos: Path) -> None:
    progress["last"] = "0.jpg"  # resuming after it would drop the rows of 1.jpg..3.jpg (or double them)


def tamper_last_a_number(progress: dict, partial: Path, photos: Path) -> None:
    progress["last"] = 3


def tamper_bytes_true(progress: dict, partial: Path, photos: Path) -> None:
    progress["bytes"] = True


def tamper_counts_bool(progress: dict, partial: Path, photos: Path) -> None:
    progress["ok"] = True


def tamper_counts_wrong(progress: dict, partial: Path, photos: Path) -> None:
    progress["ok"] += 100


def tamper_partial_requoted(progress: dict, partial: Path, photos: Path) -> None:
    """Re-saved by a spreadsheet with every field quoted: the same rows, other bytes."""
    lines = partial.read_bytes().decode().split("\r\n")
    partial.write_bytes("\r\n".join(",".join(f'"{f}"' for f in line.split(",")) if line else "" for line in lines).encode())


def tamper_partial_row_cut(progress: dict, partial: Path, photos: Path) -> None:
    data = partial.read_bytes()
    partial.write_bytes(data[:-5] + b"xxxxx")  # the same size, a different last row


@pytest.mark.parametrize("tamper", [
    tamper_last_removed, tamper_last_earlier, tamper_last_a_number, tamper_bytes_true, tamper_counts_bool,
    tamper_counts_wrong, tamper_partial_requoted, tamper_partial_row_cut,
], ids=lambda f: f.__name__.removeprefix("tamper_"))
def test_resume_refuses_working_files_that_do_not_match_and_points_at_overwrite(photos, tiny_bundle, straight, tmp_path, tamper):
    out = tmp_path / "labels.csv"
    label_until_interrupted(photos, tiny_bundle, out, at=3)  # two batches of two rows written
    progress = json.loads(progress_path(out).read_text())
    tamper(progress, partial_path(out), photos)
    progress_path(out).write_text(json.dumps(progress))
    result = catdog("predict-folder", photos, "--model", tiny_bundle, "--out", out, "--resume", check=False)
    line = one_error_line(result)
    assert line.startswith("error: cannot resume: ") and line.endswith("; rerun with --overwrite to start over"), line
    assert not out.exists()
    catdog("predict-folder", photos, "--model", tiny_bundle, "--out", out, "--overwrite")
    assert out.read_bytes() == straight.read_bytes()


def test_an_untouched_interrupted_run_still_resumes_exactly(photos, tiny_bundle, straight, tmp_path):
    out = tmp_path / "labels.csv"
    label_until_interrupted(photos, tiny_bundle, out, at=3)
    result = catdog("predict-folder", photos, "--model", tiny_bundle, "--out", out, "--resume")
    assert out.read_bytes() == straight.read_bytes() and "(4 of them by the interrupted run)" in result.stderr


@pytest.mark.parametrize("planted", ["lock", "partial"])
def test_a_symlink_planted_as_a_working_file_is_refused_and_its_target_untouched(photos, tiny_bundle, tmp_path, planted):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "labels.csv"
    victim = tmp_path / "victim.txt"
    victim.write_text("another user's file\n")
    target = lock_path(out) if planted == "lock" else partial_path(out)
    target.symlink_to(Path("..") / "victim.txt")
    result = catdog("predict-folder", photos, "--model", tiny_bundle, "--out", out, check=False)
    assert one_error_line(result) == f"error: {target} is a symlink, not a {'lock file' if planted == 'lock' else 'partial CSV'} catdog made: remove it and rerun"
    assert victim.read_text() == "another user's file\n"
    assert not out.exists() and not out.is_symlink()
    target.unlink()
    catdog("predict-folder", photos, "--model", tiny_bundle, "--out", out)
    assert not out.is_symlink() and len(read_rows(out)) == 6 and victim.read_text() == "another user's file\n"


def test_a_symlink_planted_as_the_progress_file_is_replaced_not_followed(photos, tiny_bundle, tmp_path):
    out = tmp_path / "labels.csv"
    victim = tmp_path / "victim.json"
    victim.write_text("{}\n")
    progress_path(out).symlink_to(victim)
    partial_path(out).write_bytes(b"")
    result = catdog("predict-folder", photos, "--model", tiny_bundle, "--out", out, "--resume", check=False)
    assert one_error_line(result).endswith("is a symlink, not a progress file catdog made: remove it and rerun")
    catdog("predict-folder", photos, "--model", tiny_bundle, "--out", out, "--overwrite")
    assert victim.read_text() == "{}\n" and not progress_path(out).exists() and len(read_rows(out)) == 6


def test_a_fifo_planted_as_the_partial_csv_is_refused_without_hanging(photos, tiny_bundle, tmp_path):
    out = tmp_path / "labels.csv"
    os.mkfifo(partial_path(out))
    result = catdog("predict-folder", photos, "--model", tiny_bundle, "--out", out, check=False, timeout=60)
    assert one_error_line(result) == f"error: {partial_path(out)} is not a regular file, not a partial CSV catdog made: remove it and rerun"


class Meddling:
    """A predictor that calls `meddle()` (what a cleanup job or a second run does meanwhile) at its `at`-th batch."""

    def __init__(self, inner, at: int, meddle):
        self.inner, self.meta, self.at, self.meddle, self.calls = inner, inner.meta, at, meddle, 0

    def predict(self, images):
        self.calls += 1
        if self.calls == self.at:
            self.meddle()
        return self.inner.predict(images)


def test_a_second_run_cannot_share_the_partial_after_the_lock_file_is_deleted(photos, tiny_bundle, straight, tmp_path):
    from catdog.labeling.predict import PredictOptions, predict
    from catdog.labeling.runtime import load_predictor

    out = tmp_path / "labels.csv"
    second = {}

    def cleanup_then_second_run():
        lock_path(out).unlink()  # a cleanup job thinks the lock is stale
        second["result"] = catdog("predict-folder", photos, "--model", tiny_bundle, "--out", out, "--resume", check=False)

    summary = predict(PredictOptions(str(photos), tiny_bundle, out, batch_size=2, workers=1), Meddling(load_predictor(tiny_bundle), 2, cleanup_then_second_run))
    assert one_error_line(second["result"]) == f"error: another run is writing {out} (it holds {partial_path(out)}); wait for it to finish"
    assert out.read_bytes() == straight.read_bytes() and summary.ok == 6
    assert not progress_path(out).exists() and not partial_path(out).exists()


def test_a_run_whose_partial_csv_is_replaced_stops_without_writing_the_csv(photos, tiny_bundle, tmp_path):
    from catdog.labeling.predict import PredictOptions, predict
    from catdog.labeling.runtime import load_predictor

    out = tmp_path / "labels.csv"

    def replace_partial():
        partial_path(out).unlink()
        partial_path(out).write_bytes(b"someone else's rows\r\n")

    with pytest.raises(CatdogError, match="was removed or replaced while this run was writing it"):
        predict(PredictOptions(str(photos), tiny_bundle, out, batch_size=2, workers=1), Meddling(load_predictor(tiny_bundle), 2, replace_partial))
    assert not out.exists() and partial_path(out).read_bytes() == b"someone else's rows\r\n"


def test_an_out_url_is_refused_instead_of_becoming_a_local_path(photos, tiny_bundle, tmp_path):
    result = catdog("predict-folder", photos, "--model", tiny_bundle, "--out", "s3://bucket/labels.csv", cwd=tmp_path, check=False)
    assert one_error_line(result).startswith("error: --out s3:/bucket/labels.csv: the CSV is written to a local file")
    assert not (tmp_path / "s3:").exists()


def test_an_out_name_too_long_for_the_working_files_fails_before_anything_is_written(photos, tiny_bundle, tmp_path):
    out = tmp_path / ("x" * 226 + ".csv")  # a legal name; its progress file's temporary name is not
    result = catdog("predict-folder", photos, "--model", tiny_bundle, "--out", out, check=False)
    assert one_error_line(result) == "error: --out name is too long (230 bytes): the working files beside it need 28 more and the folder allows 255; use a name of at most 227 bytes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]
    catdog("predict-folder", photos, "--model", tiny_bundle, "--out", tmp_path / ("x" * 223 + ".csv"))


def test_an_interrupted_overwrite_run_is_continued_with_resume_overwrite_and_every_message_says_so(photos, tiny_bundle, straight, tmp_path):
    from catdog.labeling.predict import resume_hint

    out = tmp_path / "labels.csv"
    out.write_text("last week's labels\n")
    label_until_interrupted(photos, tiny_bundle, out, at=3, overwrite=True)
    assert resume_hint(out) == "--resume --overwrite"  # what the interrupted run's "rerun with ..." says
    line = one_error_line(catdog("predict-folder", photos, "--model", tiny_bundle, "--out", out, "--resume", check=False))
    assert "pass --resume --overwrite to continue that run" in line and out.read_text() == "last week's labels\n"
    line = one_error_line(catdog("predict-folder", photos, "--model", tiny_bundle, "--out", out, check=False))
    assert line.endswith("already exists; pass --overwrite to replace it")
    result = catdog("predict-folder", photos, "--model", tiny_bundle, "--out", out, "--resume", "--overwrite")
    assert out.read_bytes() == straight.read_bytes() and "(4 of them by the interrupted run)" in result.stderr


def test_overwrite_says_when_it_discards_an_interrupted_runs_progress(photos, tiny_bundle, tmp_path):
    out = tmp_path / "labels.csv"
    label_until_interrupted(photos, tiny_bundle, out, at=3)
    result = catdog("predict-folder", photos, "--model", tiny_bundle, "--out", out, "--overwrite")
    assert "an interrupted run's progress was discarded" in result.stderr


def test_a_killed_runs_leftovers_are_cleared_without_a_misleading_message(photos, tiny_bundle, straight, tmp_path):
    out = tmp_path / "labels.csv"
    label_until_interrupted(photos, tiny_bundle, out, at=3)
    stale = progress_path(out).read_text()
    catdog("predict-folder", photos, "--model", tiny_bundle, "--out", out, "--resume")
    progress_path(out).write_text(stale)  # killed between the final rename and the progress file's removal
    tmp_files = [tmp_path / f".labels.csv.progress.json.{c}.tmp" for c in ("a1b2c3d4", "zz")] + [tmp_path / ".labels.csv.job.json.q9.tmp"]
    for tmp in tmp_files:
        tmp.write_text("{")
    out.rename(tmp_path / "kept.csv")  # the user moves the finished CSV away
    result = catdog("predict-folder", photos, "--model", tiny_bundle, "--out", out)
    assert "interrupted" not in result.stderr and out.read_bytes() == straight.read_bytes()
    assert not progress_path(out).exists() and not any(tmp.exists() for tmp in tmp_files)


def test_a_progress_file_nested_too_deeply_is_refused_in_one_line(photos, tiny_bundle, straight, tmp_path):
    out = tmp_path / "labels.csv"
    label_until_interrupted(photos, tiny_bundle, out, at=3)
    progress_path(out).write_text("[" * 100_000)  # deeper than Python's JSON decoder recurses
    result = catdog("predict-folder", photos, "--model", tiny_bundle, "--out", out, "--resume", check=False)
    line = one_error_line(result)
    assert line == f"error: cannot resume: {progress_path(out)} is unreadable; rerun with --overwrite to start over"
    catdog("predict-folder", photos, "--model", tiny_bundle, "--out", out, "--overwrite")
    assert out.read_bytes() == straight.read_bytes()


def test_a_fifo_at_any_output_is_refused_even_with_overwrite(photos, tiny_bundle, straight, tmp_path):
    """--overwrite replaces a file; a FIFO (or, run as root, a device such as /dev/null) was replaced by the
    atomic rename with a regular file."""
    import stat

    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    commands = [
        ("predict-folder", photos, "--model", tiny_bundle, "--out", fifo),
        ("merge-labels", fifo, straight),
        ("report", straight, "--images", photos, "--out", fifo),
        ("export-xlsx", straight, "--out", fifo),
    ]
    for args in commands:
        result = catdog(*args, "--overwrite", check=False)
        assert one_error_line(result) == f"error: {fifo} is a FIFO, not a file: give the path of a file to write", args[0]
        assert stat.S_ISFIFO(os.lstat(fifo).st_mode), args[0]


def test_an_output_that_cannot_be_replaced_is_named_not_its_hidden_temporary_file(photos, tiny_bundle, tmp_path):
    out = tmp_path / "labels.csv"
    (tmp_path / "labels.csv.job.json").mkdir()  # the record's atomic write cannot rename onto a folder
    result = catdog("predict-folder", photos, "--model", tiny_bundle, "--out", out, check=False)
    assert one_error_line(result) == f"error: {tmp_path / 'labels.csv.job.json'}: Is a directory"
    assert not out.exists()
