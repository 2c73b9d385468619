"""The Python API (catdog.load / classify, label_folder, read_labels) against what predict-folder writes."""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import catdog
from catdog.errors import CatdogError
from catdog.labeling.sources import path_from_text, path_text
from conftest import catdog as run_catdog
from conftest import cli_env, make_image
from test_predict import ODD_NAMES, hostile, read_rows  # noqa: F401 - hostile is a fixture used below

SMALL_OK = ["plain.jpg", "gray.png", "palette.png", "alpha.png", "cmyk.jpg", "anim.gif", "comma, in name.jpg", "new\nline.jpg", "ünïcødé 猫.jpg"]
BROKEN = ["empty.jpg", "truncated.jpg", "notes.txt", "holiday.jpg"]


@pytest.fixture
def photos(tmp_path) -> Path:
    """Small images of every mode, one big JPEG (decoded DCT-scaled), a 16-bit PNG and broken files."""
    root = tmp_path / "photos"
    make_image(root / "plain.jpg", seed=1)
    make_image(root / "gray.png", fmt="PNG", mode="L", seed=2)
    make_image(root / "palette.png", fmt="PNG", mode="P", seed=3)
    make_image(root / "alpha.png", (40, 90, 200), fmt="PNG", mode="RGBA", seed=4)
    make_image(root / "cmyk.jpg", fmt="JPEG", mode="CMYK", seed=5)
    make_image(root / "anim.gif", (30, 60, 210), fmt="GIF", seed=6)
    for i, name in enumerate(SMALL_OK[-3:]):
        make_image(root / name, (60 + 40 * i, 80, 190 - 40 * i), seed=7 + i)
    make_image(root / "big.jpg", (50, 80, 190), size=(640, 480), seed=11)
    Image.fromarray(np.full((20, 30), 40000, dtype=np.uint16)).save(root / "sixteen.png")
    (root / "empty.jpg").write_bytes(b"")
    full = make_image(tmp_path / "whole.jpg", size=(300, 200)).read_bytes()
    (root / "truncated.jpg").write_bytes(full[: len(full) // 3])
    (root / "notes.txt").write_text("not an image\n")
    (root / "holiday.jpg").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    return root


@pytest.fixture
def csv_rows(photos, tiny_bundle, tmp_path) -> dict[str, dict]:
    """predict-folder's rows for `photos`, by path."""
    out = tmp_path / "labels.csv"
    run_catdog("predict-folder", photos, "--model", tiny_bundle, "--out", out, "--batch-size", "3")
    return {row["path"]: row for row in read_rows(out)}


def as_row(p: catdog.Prediction) -> dict:
    """A Prediction in the CSV's text form."""
    return {
        "label": p.label or "", "p_dog": "" if p.p_dog is None else f"{p.p_dog:.6f}",
        "pet_score": "" if p.pet_score is None else f"{p.pet_score:.6f}", "status": p.status, "error": p.error or "",
    }


def expected(row: dict) -> dict:
    return {k: row[k] for k in ("label", "p_dog", "pet_score", "status", "error")}


def test_paths_bytes_and_file_objects_give_the_csv_rows_of_predict_folder(photos, csv_rows, tiny_bundle):
    labeler = catdog.load(tiny_bundle)
    assert set(csv_rows) == set(SMALL_OK + BROKEN + ["big.jpg", "sixteen.png"])
    for name, row in csv_rows.items():
        path = photos / name
        with open(path, "rb") as fh:
            from_file = labeler.classify(fh)
        for got in (labeler.classify(str(path)), labeler.classify(path), labeler.classify(path.read_bytes()),
                    labeler.classify(bytearray(path.read_bytes())), from_file, labeler.classify(io.BytesIO(path.read_bytes()))):
            assert as_row(got) == expected(row), name
    assert {n: csv_rows[n]["error"] for n in BROKEN} == {
        "empty.jpg": "empty file", "truncated.jpg": csv_rows["truncated.jpg"]["error"], "notes.txt": "not an image (unrecognized format)",
        "holiday.jpg": "unsupported format: EPS",
    }
    assert csv_rows["truncated.jpg"]["error"].startswith("corrupt or truncated image")


def test_pil_images_and_arrays_give_the_csv_rows_of_predict_folder(photos, csv_rows, tiny_bundle):
    labeler = catdog.load(tiny_bundle)
    for name in SMALL_OK + ["big.jpg", "sixteen.png"]:
        want = expected(csv_rows[name])
        assert want["status"] == "ok"
        # Opened, not yet read: decoded from its file as predict-folder decodes it (the big JPEG DCT-scaled too).
        assert as_row(labeler.classify(Image.open(photos / name))) == want, name
        with open(photos / name, "rb") as fh:
            assert as_row(labeler.classify(Image.open(io.BytesIO(fh.read())))) == want, name
    for name in SMALL_OK:  # small enough that the JPEG decoder scales nothing: in-memory pixels give the same row
        want = expected(csv_rows[name])
        with Image.open(photos / name) as im:
            im.load()
            rgb = im.convert("RGB")
            assert as_row(labeler.classify(im)) == want, name
            assert as_row(labeler.classify(rgb)) == want, name
            pixels = np.asarray(im if im.mode in ("L", "RGB", "RGBA") else rgb)
        assert as_row(labeler.classify(pixels)) == want, name
        assert as_row(labeler.classify(pixels.astype(np.float32))) == want, name
        assert as_row(labeler.classify(pixels.astype(np.int64))) == want, name
    gray = np.asarray(Image.open(photos / "gray.png"))
    assert gray.ndim == 2 and as_row(labeler.classify(gray[:, :, None])) == expected(csv_rows["gray.png"])


def test_a_list_gives_results_in_order_with_an_error_in_place_of_a_broken_item(photos, csv_rows, tiny_bundle):
    labeler = catdog.load(tiny_bundle, batch_size=2, workers=2)
    items = [photos / "plain.jpg", b"junk", photos / "missing.jpg", np.asarray(Image.open(photos / "gray.png")),
             photos / "holiday.jpg", photos, Image.open(photos / "big.jpg"), np.zeros((4, 4, 2), np.uint8),
             np.full((4, 4, 3), 0.5), (photos / "plain.jpg").read_bytes()]
    got = labeler.classify(items)
    assert isinstance(got, list) and len(got) == len(items)
    assert [p.status for p in got] == ["ok", "error", "error", "ok", "error", "error", "ok", "error", "error", "ok"]
    assert as_row(got[0]) == as_row(got[9]) == expected(csv_rows["plain.jpg"])
    assert as_row(got[3]) == expected(csv_rows["gray.png"])
    assert as_row(got[6]) == expected(csv_rows["big.jpg"])
    assert got[1].error == "not an image (unrecognized format)" and got[2].error == "file not found"
    assert got[4].error == "unsupported format: EPS" and got[5].error == "is a directory"
    assert got[7].error.startswith("not an image array: shape (4, 4, 2)")
    assert "multiply by 255" in got[8].error
    for p in got:
        assert p.ok == (p.status == "ok")
        if not p.ok:
            assert p.label is None and p.p_dog is None and p.pet_score is None and "\n" not in p.error
    assert labeler.classify(tuple(items[:2])) == got[:2]
    assert labeler.classify([]) == []


def test_links_and_empty_images_give_the_rows_predict_folder_gives(tiny_bundle, tmp_path):
    """A broken symlink and a symlink loop say what their CSV rows say (not "file not found" / "is a directory"),
    and an in-memory image without pixels is an error row, not a label."""
    folder = tmp_path / "links"
    make_image(folder / "a.jpg")
    (folder / "broken.jpg").symlink_to("nowhere.jpg")
    (folder / "loop.jpg").symlink_to("loop.jpg")
    run_catdog("predict-folder", folder, "--model", tiny_bundle, "--out", tmp_path / "labels.csv")
    rows = {row["path"]: row for row in read_rows(tmp_path / "labels.csv")}
    labeler = catdog.load(tiny_bundle)
    for name in ("a.jpg", "broken.jpg", "loop.jpg"):
        assert as_row(labeler.classify(folder / name)) == expected(rows[name]), name
    for empty in (Image.new("RGB", (0, 5)), Image.new("L", (7, 0))):
        got = labeler.classify(empty)
        assert got.status == "error" and got.label is None and "nothing to classify" in got.error


def test_an_object_that_is_no_image_is_a_type_error(tiny_bundle):
    labeler = catdog.load(tiny_bundle)
    for bad in (42, None, {"path": "a.jpg"}, [Path("a.jpg"), 3.5]):
        with pytest.raises(TypeError, match="cannot classify a"):
            labeler.classify(bad)


def test_thresholds_override_the_bundles_like_the_cli_options(photos, tiny_bundle, tmp_path):
    names = ["plain.jpg", "alpha.png", "anim.gif"]
    for threshold, label in ((0.000001, "dog"), (0.999999, "cat")):
        labeler = catdog.load(tiny_bundle, threshold=threshold, neither=False)
        assert {p.label for p in labeler.classify([photos / n for n in names])} == {label}
    run_catdog("predict-folder", photos, "--model", tiny_bundle, "--out", tmp_path / "t.csv", "--threshold", "0.3", "--no-neither")
    rows = {r["path"]: r for r in read_rows(tmp_path / "t.csv")}
    labeler = catdog.load(tiny_bundle, threshold=0.3, neither=False)
    assert [as_row(p) for p in labeler.classify([photos / n for n in names])] == [expected(rows[n]) for n in names]
    assert labeler.decision.threshold == 0.3 and "threshold=0.3" in repr(labeler)
    with pytest.raises(CatdogError, match="invalid threshold 2"):
        catdog.load(tiny_bundle, threshold=2)
    if catdog.load(tiny_bundle).meta.pet_threshold is None:  # a bundle from before the pet score
        with pytest.raises(CatdogError, match="no pet score"):
            catdog.load(tiny_bundle, pet_threshold=0.5)
    else:
        run_catdog("predict-folder", photos, "--model", tiny_bundle, "--out", tmp_path / "p.csv", "--pet-threshold", "0.5")
        rows = {r["path"]: r for r in read_rows(tmp_path / "p.csv")}
        got = catdog.load(tiny_bundle, pet_threshold=0.5).classify([photos / n for n in names])
        assert [as_row(p) for p in got] == [expected(rows[n]) for n in names]


def test_real_photos_give_the_csv_rows_as_paths_bytes_and_opened_pil_images(real_photos, tiny_bundle, tmp_path):
    """Real JPEGs (500 px, decoded DCT-scaled toward the model's size), EXIF and all, and the broken files beside them."""
    out = tmp_path / "real.csv"
    run_catdog("predict-folder", real_photos, "--model", tiny_bundle, "--out", out)
    rows = read_rows(out)
    labeler = catdog.load(tiny_bundle)
    paths = [real_photos / row["path"] for row in rows]
    assert [as_row(p) for p in labeler.classify(paths)] == [expected(r) for r in rows]
    assert [as_row(p) for p in labeler.classify([p.read_bytes() for p in paths])] == [expected(r) for r in rows]
    opened = [(Image.open(p), r) for p, r in zip(paths, rows) if r["status"] == "ok"]
    assert len(opened) > 40
    assert [as_row(labeler.classify(im)) for im, _ in opened] == [expected(r) for _, r in opened]


@pytest.mark.parametrize("setup, message", [
    ("missing", "model not found"), ("garbage_tflite", "cannot load model"), ("no_meta", "model metadata not found"),
    ("runtime", "unknown runtime"),
])
def test_a_bad_bundle_is_a_one_line_catdog_error(tiny_bundle, tmp_path, setup, message):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "meta.json").write_text((tiny_bundle / "meta.json").read_text())
    (bundle / "model.tflite").write_bytes((tiny_bundle / "model.tflite").read_bytes())
    runtime = "auto"
    if setup == "missing":
        bundle = tmp_path / "nope"
    elif setup == "garbage_tflite":
        (bundle / "model.tflite").write_bytes(b"this is not a flatbuffer" * 10)
    elif setup == "no_meta":
        (bundle / "meta.json").unlink()
    else:
        runtime = "onnx"
    with pytest.raises(CatdogError) as caught:
        catdog.load(bundle, runtime)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_label_folder_is_predict_folder(photos, tiny_bundle, tmp_path):
    run_catdog("predict-folder", photos, "--model", tiny_bundle, "--out", tmp_path / "cli.csv", "--shard", "1/2")
    summary = catdog.label_folder(photos, tmp_path / "api.csv", model=tiny_bundle, shard="1/2", batch_size=3, workers=1)
    assert (tmp_path / "api.csv").read_bytes() == (tmp_path / "cli.csv").read_bytes()
    rows = read_rows(tmp_path / "api.csv")
    assert summary.out == tmp_path / "api.csv" and summary.ok + summary.error == len(rows) == summary.labeled_now
    assert summary.error == sum(r["status"] == "error" for r in rows)
    with pytest.raises(CatdogError, match="already exists"):
        catdog.label_folder(photos, tmp_path / "api.csv", model=tiny_bundle)
    with pytest.raises(TypeError, match=r"unknown option 'treshold' \(did you mean 'threshold'\?\)"):
        catdog.label_folder(photos, tmp_path / "x.csv", model=tiny_bundle, treshold=0.4)
    assert not (tmp_path / "x.csv").exists()


@pytest.mark.parametrize("options", [
    {"shard": (5, 2)}, {"shard": (0, 0)}, {"shard": [0, 2]}, {"batch_size": 0}, {"batch_size": "8"}, {"workers": 0},
    {"max_pixels": -1},
], ids=repr)
def test_label_folder_refuses_options_the_cli_would_refuse_in_one_line(photos, tiny_bundle, tmp_path, options):
    """Checked where the run starts, not only by the CLI's parser: a shard (5, 2) labeled no file and wrote an
    empty CSV, batch_size=0 was a ValueError from deep inside, max_pixels=-1 made every row an error."""
    with pytest.raises(CatdogError, match=r"^invalid (shard|batch_size|workers|max_pixels) ") as caught:
        catdog.label_folder(photos, tmp_path / "api.csv", model=tiny_bundle, **options)
    assert "\n" not in str(caught.value)
    assert not any(tmp_path.glob("api.csv*"))


def test_read_labels_types_the_columns_and_round_trips_hostile_names(hostile, tiny_bundle, tmp_path):
    root, expected_status = hostile
    for name in ("NA", "null", "nan", "back\\slash.jpg", os.fsdecode(b"caf\xe9.jpg")):
        make_image(root / name, fmt="JPEG")
        expected_status[name] = "ok"
    out = tmp_path / "labels.csv"
    run_catdog("predict-folder", root, "--model", tiny_bundle, "--out", out, timeout=120)
    frame = catdog.read_labels(out)
    rows = read_rows(out)
    assert list(frame.columns) == ["path", "label", "p_dog", "pet_score", "status", "error"]
    assert list(frame["path"]) == [r["path"] for r in rows]
    for name in ODD_NAMES + ["NA", "null", "nan", "back\\\\slash.jpg", "caf\\xe9.jpg"]:
        assert name in set(frame["path"]), name
    assert frame["p_dog"].dtype == np.float64 and frame["pet_score"].dtype == np.float64
    assert dict(zip(frame["path"], frame["status"])) == {path_text(name): status for name, status in expected_status.items()}
    assert all(os.path.lexists(root / path_from_text(text)) for text in frame["path"])  # the text maps back to the file
    for (_, got), row in zip(frame.iterrows(), rows):
        assert got["label"] == row["label"] and got["error"] == row["error"] and got["status"] == row["status"]
        if row["p_dog"]:
            assert got["p_dog"] == float(row["p_dog"])
        else:
            assert math.isnan(got["p_dog"])
        assert math.isnan(got["pet_score"]) if not row["pet_score"] else got["pet_score"] == float(row["pet_score"])
    assert all(isinstance(v, str) for column in ("path", "label", "status", "error") for v in frame[column])


def test_read_labels_reads_a_five_column_csv_and_a_bom_and_refuses_other_files(tmp_path):
    old = tmp_path / "old.csv"
    old.write_bytes(b"path,label,p_dog,status,error\r\nNA,cat,0.250000,ok,\r\nb.jpg,,,error,empty file\r\n")
    frame = catdog.read_labels(old)
    assert list(frame.columns) == ["path", "label", "p_dog", "pet_score", "status", "error"]
    assert list(frame["path"]) == ["NA", "b.jpg"] and frame["p_dog"][0] == 0.25 and frame["pet_score"].isna().all()
    bom = tmp_path / "bom.csv"
    bom.write_bytes(b"\xef\xbb\xbfpath,label,p_dog,pet_score,status,error\r\na.jpg,neither,0.700000,0.100000,ok,\r\n")
    assert catdog.read_labels(bom)["pet_score"][0] == 0.1
    head = b"path,label,p_dog,pet_score,status,error\r\n"
    cases = {  # what merge-labels and report refuse
        "missing.csv": (None, "labels CSV not found"),
        "empty.csv": (b"", "is empty: not a catdog labels CSV"),
        "header.csv": (b"path,label\r\na,b\r\n", "line 1: not a catdog labels CSV: the header is 'path,label'"),
        "status.csv": (head + b"a,cat,0.1,,maybe,\r\n", "line 2: status 'maybe' is neither ok nor error"),
        "p.csv": (head + b"a,cat,1.5,,ok,\r\n", "line 2: p_dog '1.5' is not a number from 0 to 1"),
        "short.csv": (head + b"a,cat,0.1\r\n", "line 2: expected 6 fields, found 3"),
        "long.csv": (head + b"a,cat,0.1,,ok,,extra\r\n", "line 2: expected 6 fields, found 7"),
        "order.csv": (head + b"b,cat,0.1,,ok,\r\na,cat,0.1,,ok,\r\n", "line 3: 'a' sorts before line 2"),
    }
    for name, (data, message) in cases.items():
        if data is not None:
            (tmp_path / name).write_bytes(data)
        with pytest.raises(CatdogError, match=message.replace("(", r"\(").replace(")", r"\)")) as caught:
            catdog.read_labels(tmp_path / name)
        assert "\n" not in str(caught.value), name


def test_read_labels_without_pandas_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # what `import pandas` finds where it is not installed
    with pytest.raises(CatdogError, match="read_labels needs pandas"):
        catdog.read_labels(tmp_path / "labels.csv")


def _modules_after(code: str) -> set[str]:
    script = code + "\nimport json, sys\nprint(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    result = subprocess.run([sys.executable, "-c", script], env=cli_env(), capture_output=True, text=True, timeout=120, check=True)
    return set(json.loads(result.stdout.strip().splitlines()[-1]))


def test_import_catdog_imports_no_tensorflow_ray_pandas_or_numpy():
    loaded = _modules_after("import catdog")
    assert not loaded & {"tensorflow", "keras", "ray", "pandas", "numpy", "PIL"}, loaded & {"tensorflow", "keras", "ray", "pandas", "numpy", "PIL"}
    assert {"load", "Labeler", "Prediction", "label_folder", "read_labels", "CatdogError"} <= set(dir(catdog))
    with pytest.raises(AttributeError):
        catdog.no_such_name  # noqa: B018


def test_loading_and_classifying_with_a_tflite_bundle_imports_no_tensorflow(tiny_bundle, tmp_path):
    make_image(tmp_path / "a.jpg")
    loaded = _modules_after(
        f"import catdog\nl = catdog.load({str(tiny_bundle)!r})\nassert l.runtime == 'litert'\n"
        f"assert l.classify({str(tmp_path / 'a.jpg')!r}).status == 'ok'"
    )
    assert not loaded & {"tensorflow", "keras", "ray", "pandas"}


def test_the_readmes_python_example_runs_as_written(tiny_bundle, tmp_path):
    """The "Use it from Python" block, run in a folder laid out as it assumes (models/, photos/, data/labels.csv)."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Use it from Python", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    (tmp_path / "models").symlink_to(tiny_bundle)
    make_image(tmp_path / "photos" / "rex.jpg", (50, 80, 190))
    make_image(tmp_path / "photos" / "tom.png", (190, 70, 50), fmt="PNG")
    make_image(tmp_path / "photos" / "teapot.jpg", (120, 120, 120))
    (tmp_path / "photos" / "notes.txt").write_text("not an image\n")
    run_catdog("predict-folder", tmp_path / "photos", "--model", tiny_bundle, "--out", tmp_path / "data" / "labels.csv")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "photos/notes.txt: error  p_dog=None  not an image (unrecognized format)" in result.stdout
    assert "Prediction(label=" in result.stdout and "0 notes.txt not an image (unrecognized format)" in " ".join(result.stdout.split())


class Counting:
    """A predictor that records the batch sizes it is called with."""

    def __init__(self, inner):
        self.inner, self.meta, self.runtime, self.sizes = inner, inner.meta, inner.runtime, []

    def predict(self, images):
        self.sizes.append(len(images))
        return self.inner.predict(images)


def test_a_list_is_scored_in_batches_and_threads_may_share_a_labeler(photos, csv_rows, tiny_bundle):
    from concurrent.futures import ThreadPoolExecutor

    labeler = catdog.load(tiny_bundle, batch_size=4)
    labeler._predictor = counting = Counting(labeler._predictor)
    names = sorted(csv_rows)
    got = labeler.classify([photos / n for n in names])
    assert [as_row(p) for p in got] == [expected(csv_rows[n]) for n in names]
    ok_per_batch = [sum(csv_rows[n]["status"] == "ok" for n in names[i : i + 4]) for i in range(0, len(names), 4)]
    assert counting.sizes == [k for k in ok_per_batch if k], "one model call per batch of decoded images"
    with ThreadPoolExecutor(4) as pool:
        shared = list(pool.map(lambda n: labeler.classify(photos / n), names * 3))
    assert [as_row(p) for p in shared] == [expected(csv_rows[n]) for n in names * 3]


class WithPetScore:
    """The tiny model as a bundle with a pet score would be: a pet_score spread over 0-1 (the digits of p_dog),
    pet_threshold 0.5."""

    def __init__(self, inner):
        from dataclasses import replace

        self.inner, self.runtime, self.meta = inner, inner.runtime, replace(inner.meta, pet_threshold=0.5)

    def predict(self, images):
        p_dog, _ = self.inner.predict(images)
        return p_dog, (p_dog * 1000) % 1.0


def test_pet_scores_and_neither_come_out_as_the_csv_writes_them(photos, tiny_bundle, tmp_path):
    from catdog.labeling.predict import PredictOptions, decision_for, predict
    from catdog.labeling.runtime import load_predictor

    model = WithPetScore(load_predictor(tiny_bundle))
    options = PredictOptions(str(photos), tiny_bundle, tmp_path / "pet.csv", threshold=0.45)
    predict(options, predictor=model)
    rows = read_rows(tmp_path / "pet.csv")
    labeler = catdog.Labeler(model, decision_for(model.meta, options))
    got = labeler.classify([photos / r["path"] for r in rows])
    assert [as_row(p) for p in got] == [expected(r) for r in rows]
    labels = [p.label for p in got if p.ok]
    assert "neither" in labels and set(labels) - {"neither"} and all(p.pet_score is not None for p in got if p.ok)
