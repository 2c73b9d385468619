import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from catdog.labeling.sources import LocalSource, parse_shard, shard_of
from catdog.errors import CatdogError
from conftest import catdog, cli_env, make_image

ODD_NAMES = [
    "comma, in name.jpg",
    'double "quote".jpg',
    "new\nline.jpg",
    "carriage\rreturn.jpg",
    "crlf\r\nname.jpg",
    "tab\there.jpg",
    "  spaces  .jpg",
    "ünïcødé 猫.jpg",
    "-leading-dash.jpg",
    "#hash.jpg",
    "'single'.jpg",
]


@pytest.fixture
def hostile(tmp_path) -> tuple[Path, dict[str, str]]:
    """A folder with every kind of file the labeler must survive; returns it and the expected status per path."""
    root = tmp_path / "hostile"
    expected: dict[str, str] = {}

    def image(rel, **kw):
        make_image(root / rel, **kw)
        expected[rel] = "ok"

    image("plain.jpg")
    image("sub/deeper/nested.png", fmt="PNG")
    image("anim.gif", fmt="GIF")
    image("pic.bmp", fmt="BMP")
    image("pic.webp", fmt="WEBP")
    image("pic.tiff", fmt="TIFF")
    image("png_named.jpg", fmt="PNG")
    image("no_extension", fmt="JPEG")
    image("gray.png", fmt="PNG", mode="L")
    image("palette.png", fmt="PNG", mode="P")
    image("alpha.png", fmt="PNG", mode="RGBA")
    image("cmyk.jpg", fmt="JPEG", mode="CMYK")
    image(".hidden.jpg")
    image("dir.jpg/inside.jpg")  # a directory named like an image
    Image.fromarray(np.full((12, 12), 40000, dtype=np.uint16)).save(root / "sixteen.png")
    expected["sixteen.png"] = "ok"
    for name in ODD_NAMES:
        image(name)

    (root / "empty.jpg").write_bytes(b"")
    expected["empty.jpg"] = "error"
    full = make_image(root / "truncated.jpg", size=(300, 200)).read_bytes()
    (root / "truncated.jpg").write_bytes(full[: len(full) // 3])
    expected["truncated.jpg"] = "error"
    (root / "notes.txt").write_text("not an image\n")
    expected["notes.txt"] = "error"
    (root / "fake.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    expected["fake.png"] = "error"
    Image.new("1", (12000, 12000)).save(root / "bomb.png")
    expected["bomb.png"] = "error"

    os.symlink(root / "plain.jpg", root / "link_to_plain.jpg")
    expected["link_to_plain.jpg"] = "ok"
    os.symlink(root / "missing.jpg", root / "broken_link.jpg")
    expected["broken_link.jpg"] = "error"
    os.symlink(root / "loop_b.jpg", root / "loop_a.jpg")
    os.symlink(root / "loop_a.jpg", root / "loop_b.jpg")
    expected["loop_a.jpg"] = expected["loop_b.jpg"] = "error"
    os.symlink(root, root / "sub" / "back_to_root")  # a folder loop
    expected["sub/back_to_root"] = "error"
    os.mkfifo(root / "fifo.jpg")
    expected["fifo.jpg"] = "error"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(root / "sock.jpg"))
    expected["sock.jpg"] = "error"
    yield root, expected
    sock.close()


def read_rows(csv_path: Path) -> list[dict]:
    with open(csv_path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_hostile_folder_lists_every_file_once_with_the_right_status(hostile, tiny_bundle, tmp_path):
    root, expected = hostile
    out = tmp_path / "labels.csv"
    result = catdog("predict-folder", root, "--model", tiny_bundle, "--out", out, "--batch-size", "4", timeout=120)
    rows = read_rows(out)
    assert [r["path"] for r in rows] == sorted(expected), "one row per file, in sorted order"
    for row in rows:
        assert row["status"] == expected[row["path"]], row
        if row["status"] == "ok":
            assert row["label"] in ("cat", "dog", "neither") and 0 <= float(row["p_dog"]) <= 1 and row["error"] == ""
        else:
            assert row["label"] == "" and row["p_dog"] == "" and row["error"] and "\n" not in row["error"]
    errors = {r["path"]: r["error"] for r in rows if r["status"] == "error"}
    assert errors["empty.jpg"] == "empty file"
    assert errors["broken_link.jpg"] == "broken symlink"
    assert errors["loop_a.jpg"] == "symlink loop"
    assert errors["fifo.jpg"] == "not a regular file (a FIFO)"
    assert errors["sock.jpg"] == "not a regular file (a socket)"
    assert errors["sub/back_to_root"] == "symlink to a folder already listed (the labeled folder itself)"
    assert errors["bomb.png"].startswith("image too large")
    assert errors["notes.txt"].startswith("not an image")
    assert "truncated" in errors["truncated.jpg"]
    ok, err = sum(v == "ok" for v in expected.values()), sum(v == "error" for v in expected.values())
    assert f"{ok} ok, {err} error" in result.stderr and "images/s" in result.stderr


def test_odd_file_names_round_trip_through_pandas_and_csv(hostile, tiny_bundle, tmp_path):
    root, _ = hostile
    out = tmp_path / "labels.csv"
    catdog("predict-folder", root, "--model", tiny_bundle, "--out", out)
    frame = pd.read_csv(out, keep_default_na=False, dtype=str)
    assert list(frame.columns) == ["path", "label", "p_dog", "pet_score", "status", "error"]
    names = set(frame["path"])
    for name in ODD_NAMES:
        assert name in names and (root / name).is_file()
    assert set(r["path"] for r in read_rows(out)) == names
    out.read_bytes().decode("utf-8")  # valid UTF-8 throughout


def test_no_recursion_labels_only_the_top_folder(hostile, tiny_bundle, tmp_path):
    root, expected = hostile
    out = tmp_path / "top.csv"
    catdog("predict-folder", root, "--model", tiny_bundle, "--out", out, "--no-recursive")
    paths = {r["path"] for r in read_rows(out)}
    assert "sub/deeper/nested.png" not in paths and "dir.jpg/inside.jpg" not in paths
    assert paths == {p for p in expected if "/" not in p}


def test_shards_partition_the_folder_exactly(hostile, tiny_bundle, tmp_path):
    root, _ = hostile
    catdog("predict-folder", root, "--model", tiny_bundle, "--out", tmp_path / "all.csv")
    full = read_rows(tmp_path / "all.csv")
    shards = []
    for k in range(3):
        catdog("predict-folder", root, "--model", tiny_bundle, "--out", tmp_path / f"s{k}.csv", "--shard", f"{k}/3")
        shards.append(read_rows(tmp_path / f"s{k}.csv"))
    union = sorted((r for s in shards for r in s), key=lambda r: r["path"])
    assert union == full
    assert all(shards), "each shard gets some files"
    assert shard_of("a/b.jpg", 7) == shard_of("a/b.jpg", 7)


def test_existing_csv_is_kept_without_overwrite(tiny_bundle, tmp_path):
    make_image(tmp_path / "in" / "a.jpg")
    out = tmp_path / "labels.csv"
    out.write_text("precious\n")
    result = catdog("predict-folder", tmp_path / "in", "--model", tiny_bundle, "--out", out, check=False)
    assert result.returncode == 1 and "already exists" in result.stderr and "Traceback" not in result.stderr
    assert out.read_text() == "precious\n"
    catdog("predict-folder", tmp_path / "in", "--model", tiny_bundle, "--out", out, "--overwrite")
    assert read_rows(out)[0]["path"] == "a.jpg"


def test_unwritable_output_is_a_one_line_error(tiny_bundle, tmp_path):
    make_image(tmp_path / "in" / "a.jpg")
    (tmp_path / "file").write_text("a file, not a folder")
    result = catdog("predict-folder", tmp_path / "in", "--model", tiny_bundle, "--out", tmp_path / "file" / "labels.csv", check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == f"error: cannot write {tmp_path / 'file' / 'labels.csv'}: {tmp_path / 'file'} is not a folder"


def test_output_inside_the_labelled_folder_is_not_labelled(tiny_bundle, tmp_path):
    make_image(tmp_path / "photos" / "a.jpg")
    out = tmp_path / "photos" / "labels.csv"
    catdog("predict-folder", tmp_path / "photos", "--model", tiny_bundle, "--out", out)
    catdog("predict-folder", tmp_path / "photos", "--model", tiny_bundle, "--out", out, "--overwrite")
    assert [r["path"] for r in read_rows(out)] == ["a.jpg"]


def test_threshold_defaults_to_the_models_and_can_be_overridden(tiny_bundle, tmp_path):
    for i in range(6):
        make_image(tmp_path / "in" / f"{i}.jpg", color=(40 * i, 100, 200 - 30 * i), seed=i)
    # --no-neither: the tiny model's pet score finds these blobs unlike its training images
    catdog("predict-folder", tmp_path / "in", "--model", tiny_bundle, "--out", tmp_path / "default.csv", "--no-neither")
    threshold = json.loads((tiny_bundle / "meta.json").read_text())["threshold"]
    for row in read_rows(tmp_path / "default.csv"):
        assert row["label"] == ("dog" if float(row["p_dog"]) >= threshold else "cat")
    for value, label in (("0.000001", "dog"), ("0.999999", "cat")):
        catdog("predict-folder", tmp_path / "in", "--model", tiny_bundle, "--out", tmp_path / f"{value}.csv", "--threshold", value, "--no-neither")
        assert {r["label"] for r in read_rows(tmp_path / f"{value}.csv")} == {label}


@pytest.mark.parametrize(
    "setup, message",
    [
        ("missing_model", "model not found"),
        ("garbage_tflite", "cannot load model"),
        ("no_meta", "model metadata not found"),
        ("bad_meta", "invalid model metadata"),
        ("classes_not_a_list", "invalid model metadata"),
        ("nested_meta", "invalid model metadata"),
        ("missing_folder", "folder not found"),
        ("bad_shard", "invalid --shard"),
    ],
)
def test_bad_model_or_folder_exits_nonzero_with_one_line(tiny_bundle, tmp_path, setup, message):
    folder = tmp_path / "in"
    make_image(folder / "a.jpg")
    model = tmp_path / "model"
    model.mkdir()
    (model / "meta.json").write_text((tiny_bundle / "meta.json").read_text())
    (model / "model.tflite").write_bytes((tiny_bundle / "model.tflite").read_bytes())
    extra = []
    if setup == "missing_model":
        model = tmp_path / "nope"
    elif setup == "garbage_tflite":
        (model / "model.tflite").write_bytes(b"this is not a flatbuffer" * 10)
    elif setup == "no_meta":
        (model / "meta.json").unlink()
    elif setup == "bad_meta":
        (model / "meta.json").write_text('{"classes": ["cat"]}')
    elif setup == "classes_not_a_list":
        meta = json.loads((tiny_bundle / "meta.json").read_text())
        (model / "meta.json").write_text(json.dumps({**meta, "classes": "cd"}))
    elif setup == "nested_meta":  # deeper than Python's JSON decoder recurses
        (model / "meta.json").write_text("[" * 100_000)
    elif setup == "missing_folder":
        folder = tmp_path / "nowhere"
    elif setup == "bad_shard":
        extra = ["--shard", "3/3"]
    result = catdog("predict-folder", folder, "--model", model, "--out", tmp_path / "o.csv", *extra, check=False)
    assert result.returncode != 0
    lines = [l for l in result.stderr.splitlines() if l.strip() and not l.startswith("INFO:")]
    assert lines == [lines[0]] and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert not (tmp_path / "o.csv").exists()


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["kill", "ctrl-c"])
def test_resume_after_an_interruption_gives_the_same_csv_as_an_uninterrupted_run(tiny_bundle, tmp_path, sig):
    folder = tmp_path / "many"
    for i in range(1500):
        make_image(folder / f"{i // 100:02d}" / f"{i:04d}.jpg", size=(12, 12), color=(i % 256, 90, 255 - i % 256), seed=i)
    (folder / "broken.jpg").write_bytes(b"junk")
    out = tmp_path / "labels.csv"
    args = [sys.executable, "-m", "catdog", "predict-folder", str(folder), "--model", str(tiny_bundle), "--out", str(out), "--batch-size", "1", "--workers", "1"]
    progress = tmp_path / "labels.csv.progress.json"
    # Ctrl-C must reach the child even where this test runs with SIGINT ignored (a background job).
    # Progress saved after every batch, so the first save comes long before the run could finish.
    env = {**cli_env(), "CATDOG_PROGRESS_SECONDS": "0"}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while not progress.exists() and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(sig)
    stderr = proc.communicate()[1]
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL, "the run must be killed mid-way"
    else:
        assert proc.returncode == 130, stderr
        assert "Traceback" not in stderr
        assert stderr.rstrip().splitlines()[-1] == f"interrupted: progress kept in {progress}; rerun with --resume to continue"
    assert not out.exists(), "an interrupted run leaves no CSV at --out"
    done_before = json.loads(progress.read_text())["bytes"]
    assert 0 < done_before

    catdog("predict-folder", folder, "--model", tiny_bundle, "--out", out, "--resume", "--batch-size", "7")
    assert not progress.exists()
    catdog("predict-folder", folder, "--model", tiny_bundle, "--out", tmp_path / "straight.csv")
    assert out.read_bytes() == (tmp_path / "straight.csv").read_bytes()
    assert len(read_rows(out)) == 1501


def test_interrupted_progress_is_not_discarded_without_resume_or_overwrite(tiny_bundle, tmp_path):
    make_image(tmp_path / "in" / "a.jpg")
    out = tmp_path / "labels.csv"
    (tmp_path / "labels.csv.partial").write_text("path,label,p_dog,pet_score,status,error\n")
    (tmp_path / "labels.csv.progress.json").write_text("{}")
    result = catdog("predict-folder", tmp_path / "in", "--model", tiny_bundle, "--out", out, check=False)
    assert result.returncode == 1 and "--resume to continue it or --overwrite" in result.stderr
    assert (tmp_path / "labels.csv.progress.json").read_text() == "{}"
    catdog("predict-folder", tmp_path / "in", "--model", tiny_bundle, "--out", out, "--overwrite")
    assert not (tmp_path / "labels.csv.progress.json").exists()


def test_only_the_runs_own_csv_is_left_out_of_a_folder_it_writes_into(tiny_bundle, tmp_path):
    """Files that merely look like working files (another CSV's, or the user's) are labelled like any other."""
    real = tmp_path / "photos"
    for i in range(3):
        make_image(real / f"{i}.jpg", seed=i)
    lookalikes = ["labels-1.csv.partial", "labels-1.csv.progress.json", ".labels-1.csv.abc.tmp", "video.partial"]
    for name in lookalikes:
        make_image(real / name, fmt="JPEG")
    (tmp_path / "link").symlink_to(real)  # the folder reached through a link still knows its own CSV
    for _ in range(2):  # the second run finds the first one's CSV in the folder
        catdog("predict-folder", tmp_path / "link", "--model", tiny_bundle, "--out", real / "labels-0.csv", "--overwrite")
    rows = read_rows(real / "labels-0.csv")
    assert [r["path"] for r in rows] == sorted([f"{i}.jpg" for i in range(3)] + lookalikes)
    assert {r["status"] for r in rows} == {"ok"}


class Interrupting:
    """A predictor that raises KeyboardInterrupt (as Ctrl-C would) on its `at`-th batch."""

    def __init__(self, inner, at: int):
        self.inner, self.meta, self.at, self.calls = inner, inner.meta, at, 0

    def predict(self, images):
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt
        return self.inner.predict(images)


@pytest.fixture
def six_photos(tmp_path) -> Path:
    folder = tmp_path / "in"
    for i in range(6):
        make_image(folder / f"{i}.jpg", seed=i)
    return folder


def label_until_interrupted(folder: Path, bundle: Path, out: Path, at: int, **options) -> None:
    """Label `folder` two files a batch, with Ctrl-C arriving at batch `at` (progress is saved after each batch)."""
    from catdog.labeling.predict import PredictOptions, predict
    from catdog.labeling.runtime import load_predictor

    with pytest.raises(KeyboardInterrupt):
        predict(PredictOptions(str(folder), bundle, out, batch_size=2, workers=1, **options), Interrupting(load_predictor(bundle), at))


def test_a_fresh_run_interrupted_before_its_first_batch_leaves_no_stale_progress(tiny_bundle, six_photos, tmp_path):
    """Otherwise the old run's progress would describe a partial CSV that the new run has emptied."""
    from catdog.labeling.labels import progress_path

    out = tmp_path / "labels.csv"
    label_until_interrupted(six_photos, tiny_bundle, out, at=2)
    assert progress_path(out).exists()
    label_until_interrupted(six_photos, tiny_bundle, out, at=1, overwrite=True)
    assert not progress_path(out).exists()
    catdog("predict-folder", six_photos, "--model", tiny_bundle, "--out", out)  # neither --resume nor --overwrite needed
    assert len(read_rows(out)) == 6


def test_resume_refuses_when_the_folders_files_changed(tiny_bundle, six_photos, tmp_path):
    from catdog.labeling.labels import progress_path

    out = tmp_path / "labels.csv"
    label_until_interrupted(six_photos, tiny_bundle, out, at=2)
    progress = progress_path(out).read_text()
    (six_photos / "0.jpg").rename(six_photos / "z.jpg")  # sorts after the saved position: resuming would drop 0.jpg's row
    result = catdog("predict-folder", six_photos, "--model", tiny_bundle, "--out", out, "--resume", check=False)
    assert result.returncode == 1 and "files were added, removed or renamed" in result.stderr, result.stderr
    assert progress_path(out).read_text() == progress and not out.exists()


def test_resume_refuses_progress_from_a_different_run(tiny_bundle, tmp_path):
    make_image(tmp_path / "in" / "a.jpg")
    out = tmp_path / "labels.csv"
    (tmp_path / "labels.csv.partial").write_text("path,label,p_dog,pet_score,status,error\n")
    (tmp_path / "labels.csv.progress.json").write_text(json.dumps({"version": 1, "key": {"root": "/elsewhere"}, "bytes": 30, "last": "a"}))
    result = catdog("predict-folder", tmp_path / "in", "--model", tiny_bundle, "--out", out, "--resume", check=False)
    assert result.returncode == 1 and "different run" in result.stderr


def test_large_decodes_take_turns_and_small_ones_do_not():
    from catdog.labeling.engines import LARGE_DECODE_PIXELS, large_decode_gate

    gate = large_decode_gate()
    with gate(LARGE_DECODE_PIXELS + 1):
        assert not gate(LARGE_DECODE_PIXELS + 1).acquire(blocking=False)  # a second large decode waits
        with gate(LARGE_DECODE_PIXELS):  # a normal one does not
            pass
    assert gate(LARGE_DECODE_PIXELS + 1).acquire(blocking=False)


def test_scan_lists_without_opening_and_parse_shard_validates(tmp_path):
    make_image(tmp_path / "b.jpg")
    make_image(tmp_path / "a" / "c.jpg")
    assert LocalSource(str(tmp_path)).list().paths == ["a/c.jpg", "b.jpg"]
    assert parse_shard("2/5") == (2, 5)
    for bad in ("5/5", "x", "1/0", "-1/3"):
        with pytest.raises(CatdogError):
            parse_shard(bad)
