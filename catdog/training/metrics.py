"""Classification metrics for a sigmoid p_dog, the decision threshold choice, and the accuracy interval."""

from __future__ import annotations

import math

import numpy as np
from sklearn import metrics as skm


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """The Wilson score interval for a binomial proportion (95% for the default z)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _score(y_true: np.ndarray, predicted: np.ndarray, method: str) -> float:
    if method == "f1":
        return float(skm.f1_score(y_true, predicted, zero_division=0))
    return float(np.mean(predicted == y_true))


def choose_threshold(y_true: np.ndarray, p_dog: np.ndarray, method: str, fixed: float = 0.5) -> float:
    """`fixed`, or the threshold that maximises accuracy or F1 on these labels (ties: closest to 0.5).

    Candidates are midpoints between consecutive distinct probabilities, so the choice does not sit
    on a training example's exact score.
    """
    if method == "fixed":
        return fixed
    if method not in ("accuracy", "f1"):
        raise ValueError(f"unknown threshold method {method!r}")
    values = np.unique(np.asarray(p_dog, dtype=np.float64))
    candidates = np.concatenate([[0.5], (values[:-1] + values[1:]) / 2]) if len(values) > 1 else np.array([0.5])
    y = np.asarray(y_true).astype(int)
    scores = np.array([_score(y, (p_dog >= t).astype(int), method) for t in candidates])
    best = np.flatnonzero(scores == scores.max())
    return float(candidates[best[np.argmin(np.abs(candidates[best] - 0.5))]])


def classification_metrics(y_true: np.ndarray, p_dog: np.ndarray, threshold: float) -> dict:
    """Accuracy (with 95% Wilson interval), precision, recall, F1, ROC AUC, log loss, confusion counts, n."""
    y = np.asarray(y_true).astype(int)
    p = np.clip(np.asarray(p_dog, dtype=np.float64), 0.0, 1.0)
    predicted = (p >= threshold).astype(int)
    tn, fp, fn, tp = (int(v) for v in skm.confusion_matrix(y, predicted, labels=[0, 1]).ravel())
    n = len(y)
    correct = tp + tn
    low, high = wilson_interval(correct, n)
    both_classes = len(np.unique(y)) == 2
    r6 = lambda v: round(float(v), 6)  # noqa: E731 - stable, readable JSON
    return {
        "n": n,
        "threshold": r6(threshold),
        "accuracy": r6(correct / n if n else 0.0),
        "accuracy_ci95": {"low": r6(low), "high": r6(high)},
        "precision": r6(skm.precision_score(y, predicted, zero_division=0)),
        "recall": r6(skm.recall_score(y, predicted, zero_division=0)),
        "f1": r6(skm.f1_score(y, predicted, zero_division=0)),
        "roc_auc": r6(skm.roc_auc_score(y, p)) if both_classes else None,
        "log_loss": r6(skm.log_loss(y, p, labels=[0, 1])),
        "confusion": {"tp": tp, "fp": fp, "tn": tn, "fn": fn},
    }


def roc_points(y_true: np.ndarray, p_dog: np.ndarray) -> list[dict]:
    fpr, tpr, thresholds = skm.roc_curve(y_true, p_dog)
    return [{"fpr": round(float(f), 6), "tpr": round(float(t), 6)} for f, t in zip(fpr, tpr)]


def pr_points(y_true: np.ndarray, p_dog: np.ndarray) -> list[dict]:
    precision, recall, _ = skm.precision_recall_curve(y_true, p_dog)
    return [{"recall": round(float(r), 6), "precision": round(float(p), 6)} for p, r in zip(precision, recall)]
