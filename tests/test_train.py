"""Training: the reference architecture, reproducibility, the saved bundle, and LiteRT vs Keras agreement."""

import json
import shutil
import zipfile

import numpy as np
import pytest

from conftest import REPO, catdog, synthetic_dataset, tiny_overrides, write_params


def write_manifests(root, n_train, n_val):
    for name, split, n in (("train", "train", n_train), ("val", "validation", n_val)):
        (root / f"{name}.csv").write_text(
            "path,label\n" + "".join(f"pets/{split}/{c}s/{c}.{split}.{i}.jpg,{c}\n" for c in ("cat", "dog") for i in range(n))
        )


def train_and_evaluate(root, tag, overrides, weights=None):
    """Run the train and evaluate commands in fresh processes; return the metrics file bytes and bundle."""
    shutil.copy2(REPO / "params.yaml", root / "params.yaml")
    write_params(root, overrides)
    bundle = root / f"models_{tag}"
    backbone = ["--weights", weights] if weights else []
    catdog("train", "--params", root / "params.yaml", "--train", root / "train.csv", "--val", root / "val.csv",
           "--images", root / "images", *backbone, "--model-dir", bundle, "--live-dir", root / f"live_{tag}", cwd=root)
    catdog("evaluate", "--params", root / "params.yaml", "--model", bundle, "--test", root / "val.csv", "--images", root / "images",
           "--metrics", root / f"metrics_{tag}.json", "--plots-dir", root / f"plots_{tag}", cwd=root)
    return (root / f"metrics_{tag}.json").read_bytes(), bundle


def test_seed_cnn_is_the_course_notebook_model():
    from catdog.training.model import build_model, optimizer
    from catdog.training.params import TrainParams

    params = TrainParams(model="seed_cnn", learning_rate=0.001)
    model = build_model(params, 150, None)
    convs = [l for l in model.layers if l.__class__.__name__ == "Conv2D"]
    assert [c.filters for c in convs] == [16, 32, 64]
    assert [l.units for l in model.layers if l.__class__.__name__ == "Dense"] == [512, 1]
    assert model.count_params() == 9_494_561  # the notebook's model.summary() total
    opt = optimizer(params, 0.001)
    assert opt.__class__.__name__ == "RMSprop" and float(opt.learning_rate) == pytest.approx(0.001)


def test_two_runs_with_the_same_params_give_identical_metrics(tmp_path):
    synthetic_dataset(tmp_path / "images", n_train=16, n_val=6)
    write_manifests(tmp_path, 16, 6)
    overrides = tiny_overrides(tmp_path / "unused.zip")
    overrides["train"].update(epochs=2, augment=True, lr_schedule="cosine", mixup=0.2, weight_decay=0.05)
    first, bundle = train_and_evaluate(tmp_path, "a", overrides)
    second, bundle_b = train_and_evaluate(tmp_path, "b", overrides)
    assert first == second
    for name in ("model.keras", "model.tflite"):  # so DVC sees the same model and reruns nothing downstream
        assert (bundle / name).read_bytes() == (bundle_b / name).read_bytes(), name
    assert (tmp_path / "live_a/metrics.json").read_text() == (tmp_path / "live_b/metrics.json").read_text()

    meta = json.loads((bundle / "meta.json").read_text())
    assert meta["classes"] == ["cat", "dog"] and meta["image_size"] == 32 and meta["max_pixels"] == 50_000_000
    assert 0 < meta["threshold"] < 1 and meta["threshold_method"] == "accuracy"
    assert meta["param_count"] > 0 and meta["flops_per_image"] > 0
    assert meta["train_params"]["model"] == "small_cnn"
    assert {p.name for p in bundle.iterdir()} == {"model.keras", "model.tflite", "meta.json"}
    for series in ("train/loss", "train/accuracy", "eval/loss", "eval/accuracy"):
        assert len((tmp_path / f"live_a/plots/metrics/{series}.tsv").read_text().splitlines()) == 3  # header + 2 epochs


def test_litert_export_agrees_with_keras_on_real_photos(tmp_path, real_dataset, real_weights):
    """A MobileNetV2 bundle, scored by both runtimes on real photos: |delta p_dog| <= 1e-4."""
    from catdog.images import load_image
    from catdog.labeling.runtime import load_predictor

    synthetic_dataset(tmp_path / "images", n_train=8, n_val=4)
    write_manifests(tmp_path, 8, 4)
    overrides = tiny_overrides(tmp_path / "unused.zip")
    overrides["base"]["image_size"] = 96
    overrides["train"].update(model="mobilenet_v2", alpha=0.35, epochs=1, fine_tune_epochs=1, augment=False)
    _, bundle = train_and_evaluate(tmp_path, "m", overrides, real_weights)

    with zipfile.ZipFile(real_dataset.zip) as zf:
        names = [n for n in zf.namelist() if n.endswith(".jpg")][::150]
        zf.extractall(tmp_path / "real", members=names)
    batch = np.stack([load_image(tmp_path / "real" / n, 96) for n in names])
    lite = load_predictor(bundle, "litert").predict(batch)
    keras = load_predictor(bundle, "keras").predict(batch)
    assert len(names) == 20
    assert np.abs(lite[0] - keras[0]).max() <= 1e-4  # p_dog
    assert (lite[1] is None) == (keras[1] is None)
    if lite[1] is not None:
        assert np.abs(lite[1] - keras[1]).max() <= 1e-4  # pet_score

    # Whichever phase won, the bundle records it, with the lowest val loss of the whole run.
    frozen, fine_tune = val_losses(tmp_path / "live_m")
    meta = json.loads((bundle / "meta.json").read_text())
    assert meta["best_phase"] == ("fine_tune" if fine_tune < frozen else "frozen")
    assert meta["best_val_loss"] == pytest.approx(min(frozen, fine_tune))


def test_fine_tuning_opens_only_the_top_blocks(tmp_path, real_weights):
    from catdog.training.model import BACKBONE, build_model, unfreeze_top_blocks
    from catdog.training.params import TrainParams

    model = build_model(TrainParams(model="mobilenet_v2", alpha=0.35), 96, real_weights)
    assert not any(l.trainable_weights for l in model.get_layer(BACKBONE).layers)
    unfreeze_top_blocks(model, 2)
    trainable = {l.name for l in model.get_layer(BACKBONE).layers if l.trainable_weights}
    assert trainable and all(n.startswith(("block_15_", "block_16_", "Conv_1")) for n in trainable)
    assert not any("bn" in n.lower() for n in trainable)


def val_losses(live_dir) -> list[float]:
    """The val loss of every epoch of the run, in order, as dvclive logged it."""
    lines = (live_dir / "plots/metrics/eval/loss.tsv").read_text().splitlines()[1:]
    return [float(line.split("\t")[-1]) for line in lines]


def test_fine_tuning_that_only_hurts_is_undone_and_the_frozen_phase_exported(tmp_path, real_weights):
    synthetic_dataset(tmp_path / "images", n_train=8, n_val=4)
    write_manifests(tmp_path, 8, 4)
    shutil.copy2(REPO / "params.yaml", tmp_path / "params.yaml")
    overrides = tiny_overrides(tmp_path / "unused.zip")
    overrides["train"].update(
        model="mobilenet_v2", alpha=0.35, epochs=1, fine_tune_epochs=1, fine_tune_blocks=16,
        fine_tune_learning_rate=100.0, augment=False,  # a rate that wrecks the backbone in one epoch
    )
    write_params(tmp_path, overrides)
    catdog("train", "--params", tmp_path / "params.yaml", "--train", tmp_path / "train.csv", "--val", tmp_path / "val.csv",
           "--images", tmp_path / "images", "--weights", real_weights, "--model-dir", tmp_path / "models",
           "--live-dir", tmp_path / "live", cwd=tmp_path)

    frozen, fine_tune = val_losses(tmp_path / "live")
    assert not fine_tune < frozen, "the premise: fine-tuning made val loss worse"
    meta = json.loads((tmp_path / "models/meta.json").read_text())
    assert meta["best_phase"] == "frozen" and meta["epochs_run"] == 2
    assert meta["best_val_loss"] == pytest.approx(frozen)
    # The exported model is the frozen phase's: its val predictions give that phase's val loss.
    assert meta["val_metrics"]["log_loss"] == pytest.approx(frozen, abs=1e-4)
