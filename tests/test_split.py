import hashlib
import json
import os
from pathlib import Path

import pytest

from catdog.errors import CatdogError
from catdog.training.params import SplitParams
from catdog.training.split import read_manifest, split_dataset, write_split
from conftest import catdog, make_image, synthetic_dataset, write_params, REPO

RED, BLUE = (190, 70, 50), (50, 80, 190)


def tree_digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def all_paths(result) -> list[str]:
    return [path for rows in result.manifests.values() for path, _ in rows]


def test_filtered_layout_uses_validation_as_test_and_carves_val_from_train(tmp_path):
    synthetic_dataset(tmp_path, n_train=20, n_val=6)
    result = split_dataset(tmp_path, SplitParams(val_fraction=0.25), seed=1)
    test_paths = [p for p, _ in result.manifests["test"]]
    assert len(test_paths) == 12 and all("/validation/" in p for p in test_paths)
    counts = result.report()["counts"]
    assert counts["val"] == {"cat": 5, "dog": 5, "total": 10}  # stratified: a quarter of each class
    assert counts["train"] == {"cat": 15, "dog": 15, "total": 30}


@pytest.mark.parametrize("layout", ["with-a-validation-folder", "without"])
def test_val_fraction_is_a_fraction_of_the_training_pool_in_either_layout(tmp_path, layout):
    # Both trees leave a training pool of 15 images a class once the 5-a-class test split is set aside.
    if layout == "without":
        for i in range(20):
            make_image(tmp_path / "cats" / f"{i}.jpg", RED, seed=i)
            make_image(tmp_path / "dogs" / f"{i}.jpg", BLUE, seed=100 + i)
    else:
        synthetic_dataset(tmp_path, n_train=15, n_val=5)
    result = split_dataset(tmp_path, SplitParams(val_fraction=0.2, test_fraction=0.25), seed=0)
    counts = {name: c["cat"] for name, c in result.report()["counts"].items()}
    assert counts == {"train": 12, "val": 3, "test": 5}  # val: 0.2 of the pool of 15, not 0.2 of all 20


def test_petimages_layout_rejects_broken_files_with_reasons_and_splits_three_ways(tmp_path):
    root = tmp_path / "PetImages"
    for i in range(10):
        make_image(root / "Cat" / f"{i}.jpg", RED, seed=i)
        make_image(root / "Dog" / f"{i}.jpg", BLUE, seed=100 + i)
    (root / "Cat" / "666.jpg").write_bytes(b"")
    (root / "Dog" / "11702.jpg").write_bytes(b"not a jpeg at all")
    full = make_image(root / "Dog" / "trunc.jpg", BLUE, size=(300, 200), seed=7).read_bytes()
    (root / "Dog" / "trunc.jpg").write_bytes(full[: len(full) // 2])
    (root / "Thumbs.db").write_bytes(b"windows junk")
    before = tree_digest(tmp_path)

    result = split_dataset(tmp_path, SplitParams(val_fraction=0.2, test_fraction=0.2), seed=3)

    reasons = {r["path"]: r["reason"] for r in result.rejected}
    assert reasons["PetImages/Cat/666.jpg"] == "empty file"
    assert reasons["PetImages/Dog/11702.jpg"].startswith("not an image")
    assert "truncated" in reasons["PetImages/Dog/trunc.jpg"]
    report = result.report()
    assert report["n_unlabeled"] == 1
    assert {name: c["total"] for name, c in report["counts"].items()} == {"train": 12, "val": 4, "test": 4}
    assert tree_digest(tmp_path) == before, "raw files must never change"


def test_flat_class_folders_with_any_case_are_labelled(tmp_path):
    for i in range(5):
        make_image(tmp_path / "CATS" / f"c{i}.png", RED, fmt="PNG", seed=i)
        make_image(tmp_path / "Dog" / f"d{i}.png", BLUE, fmt="PNG", seed=50 + i)
    result = split_dataset(tmp_path, SplitParams(val_fraction=0.2, test_fraction=0.2), seed=0)
    labels = {p: label for rows in result.manifests.values() for p, label in rows}
    assert labels["CATS/c0.png"] == "cat" and labels["Dog/d4.png"] == "dog"
    assert len(labels) == 10


def test_class_map_from_params_adds_folder_names(tmp_path):
    for i in range(5):
        make_image(tmp_path / "kitty" / f"{i}.png", RED, fmt="PNG", seed=i)
        make_image(tmp_path / "puppy" / f"{i}.png", BLUE, fmt="PNG", seed=9 + i)
    params = SplitParams(class_map={"kitty": "cat", "puppy": "dog"}, val_fraction=0.2, test_fraction=0.2)
    result = split_dataset(tmp_path, params, seed=0)
    assert sum(len(rows) for rows in result.manifests.values()) == 10


def test_exact_duplicates_land_in_one_split_only(tmp_path):
    synthetic_dataset(tmp_path, n_train=10, n_val=4)
    train_cat = tmp_path / "pets/train/cats/cat.train.0.jpg"
    # The same photo again in the held-out split and twice more in train.
    (tmp_path / "pets/validation/cats/copy_in_test.jpg").write_bytes(train_cat.read_bytes())
    (tmp_path / "pets/train/cats/zz_copy.jpg").write_bytes(train_cat.read_bytes())
    result = split_dataset(tmp_path, SplitParams(), seed=0)
    where = [name for name, rows in result.manifests.items() for p, _ in rows if "copy" in p or p.endswith("cat.train.0.jpg")]
    assert where == ["test"], "one copy kept, in the held-out split"
    dups = {d["path"]: d["duplicate_of"] for d in result.duplicates}
    assert dups == {
        "pets/train/cats/cat.train.0.jpg": "pets/validation/cats/copy_in_test.jpg",
        "pets/train/cats/zz_copy.jpg": "pets/validation/cats/copy_in_test.jpg",
    }
    paths = all_paths(result)
    assert len(paths) == len(set(paths))


def test_same_content_with_both_labels_is_rejected(tmp_path):
    synthetic_dataset(tmp_path, n_train=6, n_val=2)
    src = tmp_path / "pets/train/cats/cat.train.0.jpg"
    (tmp_path / "pets/train/dogs/confused.jpg").write_bytes(src.read_bytes())
    result = split_dataset(tmp_path, SplitParams(), seed=0)
    rejected = {r["path"] for r in result.rejected}
    assert {"pets/train/cats/cat.train.0.jpg", "pets/train/dogs/confused.jpg"} <= rejected


def test_split_is_seeded_and_manifests_are_byte_identical_on_rerun(tmp_path):
    synthetic_dataset(tmp_path / "data", n_train=30, n_val=4)
    outs = []
    for run in ("a", "b"):
        result = split_dataset(tmp_path / "data", SplitParams(), seed=7)
        write_split(result, tmp_path / run, tmp_path / run / "report.json")
        outs.append({p.name: p.read_bytes() for p in (tmp_path / run).iterdir()})
    assert outs[0] == outs[1]
    other = split_dataset(tmp_path / "data", SplitParams(), seed=8)
    assert other.manifests["val"] != split_dataset(tmp_path / "data", SplitParams(), seed=7).manifests["val"]
    rows = read_manifest(tmp_path / "a" / "train.csv")
    assert rows == sorted(rows)


def test_empty_or_unlabelled_tree_is_a_clear_error(tmp_path):
    (tmp_path / "misc").mkdir()
    make_image(tmp_path / "misc" / "x.jpg")
    with pytest.raises(CatdogError, match="no images under class folders"):
        split_dataset(tmp_path, SplitParams(), seed=0)
    with pytest.raises(CatdogError, match="dataset folder not found"):
        split_dataset(tmp_path / "missing", SplitParams(), seed=0)


def test_a_dataset_with_one_class_only_is_a_clear_error(tmp_path):
    for i in range(8):
        make_image(tmp_path / "cats" / f"{i}.jpg", RED, seed=i)
        make_image(tmp_path / "hounds" / f"{i}.jpg", BLUE, seed=50 + i)  # not in the class map
    with pytest.raises(CatdogError, match=r"no usable dog images .*needs both classes.*dog, dogs -> dog"):
        split_dataset(tmp_path, SplitParams(), seed=0)


def test_file_names_a_manifest_cannot_hold_are_rejected_with_the_reason(tmp_path):
    synthetic_dataset(tmp_path, n_train=8, n_val=3)
    cats = tmp_path / "pets" / "train" / "cats"
    make_image(cats / "line\nbreak.jpg", RED)
    make_image(cats / os.fsdecode(b"caf\xe9.jpg"), RED)  # Latin-1 bytes, as an old tar can hold
    result = split_dataset(tmp_path, SplitParams(), seed=0)
    reasons = {r["path"]: r["reason"] for r in result.rejected}
    assert reasons == {
        "pets/train/cats/caf\\xe9.jpg": "file name is not valid UTF-8 (rename it)",
        "pets/train/cats/line\nbreak.jpg": "file name contains a line break (rename it)",
    }
    write_split(result, tmp_path / "split", tmp_path / "split" / "report.json")
    assert len(read_manifest(tmp_path / "split" / "train.csv")) == len(result.manifests["train"])


def test_split_command_writes_manifests_and_report(tmp_path):
    synthetic_dataset(tmp_path / "raw", n_train=10, n_val=4)
    (tmp_path / "raw/pets/train/cats/broken.jpg").write_bytes(b"\xff\xd8\xff")
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    write_params(tmp_path, {})
    result = catdog("split", "--params", tmp_path / "params.yaml", "--images", tmp_path / "raw", "--out-dir", tmp_path / "split", "--report", tmp_path / "split/report.json")
    assert "rejected 1" in result.stderr
    report = json.loads((tmp_path / "split/report.json").read_text())
    assert report["counts"]["test"]["total"] == 8
    assert report["rejected"][0]["path"] == "pets/train/cats/broken.jpg"
    assert (tmp_path / "split/train.csv").read_text().startswith("path,label\n")
