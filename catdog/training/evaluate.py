"""Evaluation on the test split: metrics JSON for `dvc metrics`, CSVs for `dvc plots`, and a contact sheet.

It scores images with the same runtime and decoding as the labeler, at the thresholds saved with the model.
With a pet score in the model it also reports the share of test pets that keep their label and the accuracy of
those, and, given a folder of non-pet photos, the share labeled `neither` per subfolder and the pets-vs-non-pets
ROC AUC of the pet score.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from catdog.errors import CatdogError
from catdog.fsutil import write_json, write_text
from catdog.training.metrics import classification_metrics, pr_points, roc_points
from catdog.training.plots import contact_sheet
from catdog.labeling.engines import score_local
from catdog.labeling.labels import NEITHER, Decision
from catdog.labeling.runtime import Predictor
from catdog.labeling.sources import Listing, LocalSource
from catdog.training.split import read_manifest


def _csv(rows: list[dict]) -> str:
    return pd.DataFrame(rows).to_csv(index=False, lineterminator="\n")


def _scores(predictor: Predictor, folder: Path, listing: Listing, batch_size: int) -> tuple[np.ndarray, np.ndarray | None]:
    """p_dog and pet_score (None for a model without one) of every listed file; a file that cannot be used is an error."""
    p_dog, pet = [], []
    for batch in score_local(LocalSource(str(folder)), listing, predictor, batch_size):
        for rel, p, q, reason in batch:
            if reason is not None:
                raise CatdogError(f"{folder / rel}: {reason}")
            p_dog.append(p)
            pet.append(q)
    return np.array(p_dog), (None if not pet or pet[0] is None else np.array(pet, dtype=np.float64))


def _is_neither(decision: Decision, p_dog: np.ndarray, pet: np.ndarray) -> np.ndarray:
    """The labeler's own decision, on the printed values."""
    return np.array([decision.label(f"{p:.6f}", f"{q:.6f}") == NEITHER for p, q in zip(p_dog, pet)], dtype=bool)


def _nonpet_metrics(
    predictor: Predictor, decision: Decision, nonpets: Path, pet_test: np.ndarray, batch_size: int
) -> dict:
    """Share labeled neither, overall and per first-level subfolder, and the ROC AUC of test pets vs these."""
    listing = LocalSource(str(nonpets)).list()
    if not listing.paths:
        raise CatdogError(f"{nonpets}: no files in the non-pet folder")
    p_dog, pet = _scores(predictor, nonpets, listing, batch_size)
    if pet is None:
        raise CatdogError("--nonpets: this model has no pet score (it was trained before catdog could say `neither`); retrain it")
    neither = _is_neither(decision, p_dog, pet)
    groups = np.array([rel.split("/", 1)[0] if "/" in rel else "." for rel in listing.paths])
    r6 = lambda v: round(float(v), 6)  # noqa: E731
    truth = np.r_[np.ones(len(pet_test)), np.zeros(len(pet))]
    return {
        "n": len(pet),
        "neither": r6(neither.mean()),
        "roc_auc": r6(roc_auc_score(truth, np.r_[pet_test, pet])),
        "by_folder": {g: {"n": int((groups == g).sum()), "neither": r6(neither[groups == g].mean())} for g in sorted(set(groups))},
    }


def evaluate(
    predictor: Predictor, test_csv: Path, images: Path, metrics_out: Path, plots_dir: Path,
    n_wrong: int = 16, batch_size: int = 64, nonpets: Path | None = None,
) -> dict:
    """Score the test manifest (and the `nonpets` folder); write metrics, predictions/ROC/PR CSVs and worst.png.
    Returns the metrics."""
    rows = read_manifest(test_csv)
    p, pet = _scores(predictor, images, Listing([path for path, _ in rows]), batch_size)
    y = np.array([int(label == "dog") for _, label in rows])
    threshold = predictor.meta.threshold
    metrics = {"test": classification_metrics(y, p, threshold), "model": predictor.meta.model, "runtime": predictor.runtime}
    pet_threshold = predictor.meta.pet_threshold
    if pet is not None and pet_threshold is not None:
        decision = Decision(predictor.meta.classes, threshold, pet_threshold)
        kept = ~_is_neither(decision, p, pet)
        correct = (p >= threshold).astype(int) == y
        metrics["neither"] = {
            "pet_threshold": pet_threshold,
            "test_kept": round(float(kept.mean()), 6),
            "test_kept_accuracy": round(float(correct[kept].mean()), 6) if kept.any() else None,
        }
        if nonpets is not None:
            metrics["neither"]["nonpets"] = _nonpet_metrics(predictor, decision, nonpets, pet, batch_size)
    elif nonpets is not None:
        raise CatdogError("--nonpets: this model has no pet score (it was trained before catdog could say `neither`); retrain it")
    write_json(metrics_out, metrics)

    classes = predictor.meta.classes
    predicted = (p >= threshold).astype(int)
    write_text(
        plots_dir / "predictions.csv",
        _csv([
            {"path": path, "actual": label, "predicted": classes[int(k)], "p_dog": f"{q:.6f}"}
            for (path, label), k, q in zip(rows, predicted, p)
        ]),
    )
    write_text(plots_dir / "roc.csv", _csv(roc_points(y, p)))
    write_text(plots_dir / "precision_recall.csv", _csv(pr_points(y, p)))

    confidence_wrong = np.where(y == 1, 1 - p, p)  # probability given to the wrong class
    wrong = [i for i in np.argsort(-confidence_wrong, kind="stable") if predicted[i] != y[i]][:n_wrong]
    contact_sheet(
        [(images / rows[i][0], rows[i][0], f"p_dog={p[i]:.3f}, actually {rows[i][1]}") for i in wrong],
        plots_dir / "worst.png",
        f"Most confidently wrong test images ({len(wrong)} shown, threshold {threshold:.3f})",
    )
    return metrics
