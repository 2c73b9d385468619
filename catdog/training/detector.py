"""The pet score: how much an image looks like the cats and dogs the model was trained on, built into the model.

The detector is a class-conditional Mahalanobis distance (one shared covariance, Ledoit-Wolf shrinkage so it
fits with fewer samples than dimensions) on L2-normalized, globally pooled feature maps, fitted on the train
split's pets alone. For each tapped layer l and class c, d2[l, c] is the squared distance to the class mean,
divided by that layer's median over the train split; D = min over c of the sum over l. The score is

    pet_score = 2 ** (-D / L)        (L = number of layers)

in (0, 1]: 1 at a class mean, about 0.5 for a typical training pet, halving with every further median
distance. It is computed by stock Keras layers appended to the classifier, so `model.tflite` and
`model.keras` return (n, 2): [p_dog, pet_score], and every engine gets it without TensorFlow.
The threshold (meta.json `pet_threshold`) is the printed score that `keep` of the val split's pets reach.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from sklearn.covariance import LedoitWolf

DESCRIPTION = (
    "pet_score = 2^(-D/L): D = min over classes of the summed squared Mahalanobis distances (shared Ledoit-Wolf "
    "covariance, train split) of L2-normalized pooled features, each layer divided by its train median; "
    "~0.5 for a typical training pet, lower = less like the cats and dogs it was trained on"
)


@dataclass(frozen=True)
class LayerFit:
    """One tapped layer: class means (c, d) and a whitening matrix (d, d), already divided by sqrt(median d2)."""

    means: np.ndarray
    whiten: np.ndarray


@dataclass(frozen=True)
class PetDetector:
    layers: tuple[LayerFit, ...]


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)  # as keras UnitNormalization


def _class_d2(layer: LayerFit, x: np.ndarray) -> np.ndarray:
    """(n, c) squared whitened distances of unit-normalized `x` to each class mean."""
    z = _unit(x) @ layer.whiten
    centres = layer.means @ layer.whiten
    return np.stack([((z - m) ** 2).sum(1) for m in centres], axis=1)


def fit_layer(features: np.ndarray, labels: np.ndarray) -> LayerFit:
    """Class means and the shrunk shared covariance's whitening, scaled so the median train distance is 1."""
    x = _unit(features)
    classes = np.unique(labels)
    means = np.stack([x[labels == c].mean(0) for c in classes])
    centred = x - means[np.searchsorted(classes, labels)]
    covariance = LedoitWolf(assume_centered=True).fit(centred).covariance_
    values, vectors = np.linalg.eigh(covariance)
    floor = max(float(values.max()), 1e-12) * 1e-9  # identical samples: no direction may have zero variance
    whiten = vectors / np.sqrt(np.maximum(values, floor))
    layer = LayerFit(means, whiten)
    median = float(np.median(_class_d2(layer, features).min(1)))
    return LayerFit(means, whiten / math.sqrt(median if median > 0 else 1.0))


def fit_detector(features: list[np.ndarray], labels: np.ndarray) -> PetDetector:
    """Fit on the train split's pooled features (one array per tapped layer) and 0/1 class labels."""
    labels = np.asarray(labels)
    return PetDetector(tuple(fit_layer(f, labels) for f in features))


def pet_scores(detector: PetDetector, features: list[np.ndarray]) -> np.ndarray:
    """The pet score in NumPy (float64): what the exported model computes in float32."""
    total = sum(_class_d2(layer, f) for layer, f in zip(detector.layers, features))
    return np.exp2(-total.min(1) / len(detector.layers))


def choose_pet_threshold(val_scores: np.ndarray, keep: float) -> float:
    """The highest threshold on the *printed* (six-decimal) score that keeps at least `keep` of `val_scores`,
    within [0.000001, 0.999999] (meta.json needs 0 < pet_threshold < 1)."""
    scores = np.sort(np.round(np.asarray(val_scores, dtype=np.float64), 6))
    dropped = math.floor(len(scores) * (1 - keep) + 1e-9)
    threshold = float(scores[min(dropped, len(scores) - 1)]) if len(scores) else 1e-6
    return round(min(max(threshold, 1e-6), 0.999999), 6)


def pet_score_head(pooled: list, detector: PetDetector):
    """Stock Keras layers computing `pet_scores` from the pooled feature tensors; returns an (n, 1) tensor.

    Per layer: z = unit(f) @ W, and |z - m_c W|^2 = |z|^2 - 2 z.(m_c W) + |m_c W|^2, so one d x d matrix
    serves every class (the class terms are a d x c Dense)."""
    from keras import layers

    per_class = []
    for i, (tensor, fit) in enumerate(zip(pooled, detector.layers)):
        d, n_classes = fit.whiten.shape[1], len(fit.means)
        unit = layers.UnitNormalization(name=f"pet_unit_{i}")(tensor)
        z = layers.Dense(d, use_bias=False, trainable=False, name=f"pet_whiten_{i}")(unit)
        squared = layers.Multiply(name=f"pet_square_{i}")([z, z])
        norm = layers.Dense(n_classes, use_bias=False, trainable=False, name=f"pet_norm_{i}")(squared)
        cross = layers.Dense(n_classes, trainable=False, name=f"pet_cross_{i}")(z)
        per_class.append(layers.Add(name=f"pet_d2_{i}")([norm, cross]))
    total = per_class[0] if len(per_class) == 1 else layers.Add(name="pet_d2")(per_class)
    # the nearest class: a Dense(1) per class picks its column, Minimum takes the smallest
    columns = [
        layers.Dense(1, use_bias=False, trainable=False, name=f"pet_class_{c}")(total) for c in range(len(detector.layers[0].means))
    ]
    nearest = columns[0] if len(columns) == 1 else layers.Minimum(name="pet_nearest")(columns)
    nearest = layers.ReLU(name="pet_distance")(nearest)  # float32 rounding must not give a score above 1
    return layers.Dense(1, use_bias=False, activation="exponential", trainable=False, name="pet_score")(nearest)


def set_head_weights(model, detector: PetDetector) -> None:
    """Load the detector's fixed weights into the head layers `pet_score_head` added to `model`."""
    n_classes = len(detector.layers[0].means)
    for i, fit in enumerate(detector.layers):
        centres = fit.means @ fit.whiten
        model.get_layer(f"pet_whiten_{i}").set_weights([fit.whiten.astype(np.float32)])
        model.get_layer(f"pet_norm_{i}").set_weights([np.ones((fit.whiten.shape[1], n_classes), np.float32)])
        model.get_layer(f"pet_cross_{i}").set_weights([(-2 * centres.T).astype(np.float32), (centres**2).sum(1).astype(np.float32)])
    for c in range(n_classes):
        model.get_layer(f"pet_class_{c}").set_weights([np.eye(n_classes, dtype=np.float32)[:, [c]]])
    model.get_layer("pet_score").set_weights([np.array([[-math.log(2) / len(detector.layers)]], np.float32)])
