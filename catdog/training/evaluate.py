"""Evaluation on the test split: metrics JSON for `dvc metrics`, CSVs for `dvc plots`, and a contact sheet.

It scores images with the same runtime and decoding as the labeler, at the threshold saved with the model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from catdog.errors import CatdogError
from catdog.fsutil import write_json, write_text
from catdog.training.metrics import classification_metrics, pr_points, roc_points
from catdog.training.plots import contact_sheet
from catdog.labeling.engines import score_local
from catdog.labeling.runtime import Predictor
from catdog.labeling.sources import Listing, LocalSource
from catdog.training.split import read_manifest


def _csv(rows: list[dict]) -> str:
    return pd.DataFrame(rows).to_csv(index=False, lineterminator="\n")


def evaluate(
    predictor: Predictor, test_csv: Path, images: Path, metrics_out: Path, plots_dir: Path,
    n_wrong: int = 16, batch_size: int = 64,
) -> dict:
    """Score the test manifest; write metrics, predictions/ROC/PR CSVs and worst.png. Returns the metrics."""
    rows = read_manifest(test_csv)
    p_dog = []
    for batch in score_local(LocalSource(str(images)), Listing([path for path, _ in rows]), predictor, batch_size):
        for rel, p, _pet, reason in batch:
            if reason is not None:
                raise CatdogError(f"{images / rel}: {reason}")
            p_dog.append(p)
    y = np.array([int(label == "dog") for _, label in rows])
    p = np.array(p_dog)
    threshold = predictor.meta.threshold
    metrics = {"test": classification_metrics(y, p, threshold), "model": predictor.meta.model, "runtime": predictor.runtime}
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
