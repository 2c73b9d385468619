"""Training: seeded, deterministic fit with early stopping and dvclive logs; saves the model bundle.

The bundle (a folder) holds `model.keras`, the LiteRT export `model.tflite` (both return (n, 2): p_dog and
the pet score of catdog.training.detector), and `meta.json` with the class names, image size, the decision
threshold and the pet threshold chosen on the val split, the training params,
the model's cost (parameters, FLOPs per image) and which phase gave the exported weights. The
exported weights are the best by val loss over the whole run: fine-tuning that never beats the
frozen phase's best epoch is undone.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from catdog import __version__
from catdog.training.data import make_dataset
from catdog.errors import CatdogError
from catdog.fsutil import replace_dir, temp_dir_beside, write_json
from catdog.training.detector import DESCRIPTION as PET_SCORE_DESCRIPTION
from catdog.training.detector import choose_pet_threshold, fit_detector, pet_score_head, set_head_weights
from catdog.training.metrics import choose_threshold, classification_metrics
from catdog.training.model import (
    accuracy_metric, build_model, first_open_block, flops_per_image, optimizer, pet_graph, unfreeze_top_blocks,
)
from catdog.training.params import Params, TrainParams
from catdog.training.split import read_manifest
from catdog.tfsetup import import_tf, seed_everything

tf = import_tf()
import keras  # noqa: E402

INPUT_DESCRIPTION = "RGB, 0-255 floats, decoded and squashed to image_size x image_size by catdog.images.load_image"


@dataclass
class TrainResult:
    model_dir: Path
    epochs_run: int
    threshold: float
    val_metrics: dict
    pet_threshold: float


class _LiveLogger(keras.callbacks.Callback):
    """Log loss and accuracy per epoch to dvclive, with one step counter across training phases."""

    def __init__(self, live):
        super().__init__()
        self.live = live

    def on_epoch_end(self, epoch, logs=None):
        for key, value in (logs or {}).items():
            name = key.removeprefix("val_")
            if name in ("loss", "accuracy"):
                self.live.log_metric(f"{'eval' if key.startswith('val_') else 'train'}/{name}", float(value))
        self.live.next_step()


def _best_loss(stop: keras.callbacks.EarlyStopping) -> float:
    """The best val loss early stopping saw in its fit (the weights it restored); inf if none was a number."""
    best = stop.best
    return math.inf if best is None or math.isnan(best) else float(best)


def _labelled(rows: list[tuple[str, str]], images: Path) -> tuple[list[Path], list[int]]:
    return [images / path for path, _ in rows], [int(label == "dog") for _, label in rows]


def _renumber_shared_ids(node, ids: dict):
    """Keras names shared objects by their Python id(); number them in order of appearance instead."""
    if isinstance(node, dict):
        return {
            key: ids.setdefault(value, len(ids) + 1) if key == "shared_object_id" else _renumber_shared_ids(value, ids)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_renumber_shared_ids(value, ids) for value in node]
    return node


def save_keras(model: keras.Model, dest: Path) -> None:
    """Save a .keras archive that is byte-identical for identical weights (no save date, fixed zip times)."""
    model.save(dest)
    with zipfile.ZipFile(dest) as zin:
        entries = [(info, zin.read(info)) for info in zin.infolist()]
    with zipfile.ZipFile(dest, "w") as zout:
        for info, data in entries:
            if info.filename == "metadata.json":
                metadata = json.loads(data)
                metadata.pop("date_saved", None)
                data = json.dumps(metadata, sort_keys=True).encode()
            elif info.filename == "config.json":
                data = json.dumps(_renumber_shared_ids(json.loads(data), {})).encode()
            fixed = zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0))
            fixed.compress_type, fixed.external_attr = info.compress_type, info.external_attr
            zout.writestr(fixed, data)


def export_tflite(model: keras.Model, dest: Path) -> None:
    """Convert to a LiteRT flatbuffer (float32, dynamic batch)."""
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    with contextlib.redirect_stdout(io.StringIO()):  # the converter lists every captured variable
        dest.write_bytes(converter.convert())


def with_pet_score(model: keras.Model, cfg: TrainParams, weights: Path | None, first_tuned: int | None, train_ds, train_y: list[int]) -> keras.Model:
    """The exported model: the classifier plus the pet score (catdog.training.detector) fitted on `train_ds`
    (the train split, unaugmented, in `train_y`'s order); it returns (n, 2): [p_dog, pet_score]."""
    graph = pet_graph(model, cfg, weights, first_tuned)
    features = keras.Model(graph.inputs, graph.pooled).predict(train_ds, verbose=0)
    detector = fit_detector(features if isinstance(features, list) else [features], np.asarray(train_y))
    score = pet_score_head(graph.pooled, detector)
    exported = keras.Model(graph.inputs, keras.layers.Concatenate(name="p_dog_pet_score")([graph.p_dog, score]), name=model.name)
    set_head_weights(exported, detector)
    return exported


def train(
    params: Params, train_csv: Path, val_csv: Path, images: Path, weights: Path | None, model_dir: Path, live_dir: Path
) -> TrainResult:
    """Train the configured model and write the bundle to `model_dir` (replaced only on success)."""
    from dvclive import Live

    seed_everything(params.base.seed)
    cfg, size = params.train, params.base.image_size
    train_x, train_y = _labelled(read_manifest(train_csv), images)
    val_x, val_y = _labelled(read_manifest(val_csv), images)
    for manifest, paths in ((train_csv, train_x), (val_csv, val_x)):
        missing = next((p for p in paths if not p.is_file()), None)
        if missing is not None:
            raise CatdogError(f"{missing}: listed in {manifest} but not found (is --images right?)")
    if model_dir.exists() and any(model_dir.iterdir()) and not (model_dir / "meta.json").exists():
        raise CatdogError(f"{model_dir} exists and is not a catdog model bundle; refusing to replace it")
    max_pixels = params.split.max_pixels
    train_ds = make_dataset(train_x, train_y, size, cfg.batch_size, seed=params.base.seed, augment=cfg.augment, max_pixels=max_pixels, mixup=cfg.mixup)
    val_ds = make_dataset(val_x, val_y, size, cfg.batch_size, max_pixels=max_pixels)

    model = build_model(cfg, size, weights)
    live = Live(dir=str(live_dir), dvcyaml=False, save_dvc_exp=False)
    logger = _LiveLogger(live)

    steps_per_epoch = math.ceil(len(train_x) / cfg.batch_size)

    def fit(learning_rate: float, epochs: int, initial_epoch: int) -> tuple[int, float]:
        """Train one phase; return the epoch count so far and the phase's best val loss (its weights are kept)."""
        rate = learning_rate
        if cfg.lr_schedule == "cosine":  # decays to zero by the last epoch: calmer val loss late in training
            rate = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=epochs * steps_per_epoch)
        model.compile(optimizer=optimizer(cfg, rate), loss="binary_crossentropy", metrics=[accuracy_metric()])
        stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=cfg.patience, restore_best_weights=True)
        history = model.fit(
            train_ds, validation_data=val_ds, epochs=initial_epoch + epochs, initial_epoch=initial_epoch,
            callbacks=[stop, logger], verbose=2, shuffle=False,
        )
        return initial_epoch + len(history.epoch), _best_loss(stop)

    try:
        epochs_run, best_loss = fit(cfg.learning_rate, cfg.epochs, 0)
        best_phase = "frozen" if cfg.model == "mobilenet_v2" else "train"
        if cfg.model == "mobilenet_v2" and cfg.fine_tune_epochs:
            # Fine-tuning's early stopping starts afresh and knows nothing of the frozen phase's best val loss.
            frozen = [(variable, variable.numpy()) for variable in model.weights]
            unfreeze_top_blocks(model, cfg.fine_tune_blocks)
            epochs_run, fine_loss = fit(cfg.fine_tune_learning_rate, cfg.fine_tune_epochs, epochs_run)
            if fine_loss < best_loss:
                best_phase, best_loss = "fine_tune", fine_loss
            else:
                for variable, value in frozen:
                    variable.assign(value)
    except tf.errors.OpError as exc:  # e.g. an image that changed on disk since split validated it
        detail = next((line for line in exc.message.splitlines() if "ImageError" in line), exc.message.splitlines()[0])
        raise CatdogError(f"training input failed: {detail.strip()}") from None
    live.end()

    tuned = first_open_block(model, cfg.fine_tune_blocks) if best_phase == "fine_tune" else None
    exported = with_pet_score(model, cfg, weights, tuned, make_dataset(train_x, train_y, size, cfg.batch_size, max_pixels=max_pixels), train_y)

    p_val, pet_val = exported.predict(val_ds, verbose=0).T
    threshold = choose_threshold(np.asarray(val_y), p_val, cfg.threshold, cfg.fixed_threshold)
    pet_threshold = choose_pet_threshold(pet_val, cfg.neither.keep_pets)
    val_metrics = classification_metrics(np.asarray(val_y), p_val, threshold)

    tmp = temp_dir_beside(model_dir)
    try:
        save_keras(exported, tmp / "model.keras")
        export_tflite(exported, tmp / "model.tflite")
        write_json(
            tmp / "meta.json",
            {
                "catdog_version": __version__,
                "model": cfg.model,
                "classes": list(params.base.classes),
                "image_size": size,
                "max_pixels": max_pixels,
                "input": INPUT_DESCRIPTION,
                "threshold": threshold,
                "threshold_method": cfg.threshold,
                "outputs": ["p_dog", "pet_score"],
                "pet_threshold": pet_threshold,
                "pet_score": PET_SCORE_DESCRIPTION,
                "pet_keep_val": round(float(np.mean(np.round(pet_val, 6) >= pet_threshold)), 6),
                "seed": params.base.seed,
                "train_params": cfg.model_dump(),
                "param_count": int(exported.count_params()),
                "flops_per_image": flops_per_image(exported),
                "epochs_run": epochs_run,
                "best_phase": best_phase,
                "best_val_loss": best_loss if math.isfinite(best_loss) else None,
                "val_metrics": val_metrics,
            },
        )
    except Exception:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, model_dir)
    return TrainResult(model_dir, epochs_run, threshold, val_metrics, pet_threshold)
