"""The training input pipeline: seeded batches, mixup, and the accuracy metric that copes with mixed labels."""

import numpy as np
import pytest
from PIL import Image

from catdog.training.data import make_dataset


def solid_images(root, n: int) -> tuple[list, list[int]]:
    """Black 'cats' and white 'dogs' (PNG, lossless): a pixel's brightness equals its label."""
    paths, labels = [], []
    for i in range(n):
        label = i % 2
        path = root / f"{i}.png"
        Image.new("RGB", (20, 14), (255 * label,) * 3).save(path)
        paths.append(path)
        labels.append(label)
    return paths, labels


def epochs(ds, n: int = 2) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    return [[(x.numpy(), y.numpy()) for x, y in ds] for _ in range(n)]


def test_mixup_blends_each_image_and_its_label_with_one_weight(tmp_path):
    paths, labels = solid_images(tmp_path, 12)
    batches = epochs(make_dataset(paths, labels, 8, batch_size=6, seed=3, mixup=0.4), 1)[0]
    images = np.concatenate([x for x, _ in batches])
    mixed = np.concatenate([y for _, y in batches])
    np.testing.assert_allclose(images.mean(axis=(1, 2, 3)) / 255, mixed, atol=1e-4)
    assert ((mixed > 0.01) & (mixed < 0.99)).any()  # some labels really are mixed
    assert ((mixed >= 0) & (mixed <= 1)).all()


def test_without_mixup_labels_stay_hard(tmp_path):
    paths, labels = solid_images(tmp_path, 6)
    (batch,) = epochs(make_dataset(paths, labels, 8, batch_size=6, seed=3, augment=True), 1)[0]
    assert sorted(batch[1].tolist()) == [0, 0, 0, 1, 1, 1]


def test_same_seed_gives_the_same_batches_and_each_epoch_differs(tmp_path):
    paths, labels = solid_images(tmp_path, 12)
    first = epochs(make_dataset(paths, labels, 8, batch_size=4, seed=7, augment=True, mixup=0.2))
    second = epochs(make_dataset(paths, labels, 8, batch_size=4, seed=7, augment=True, mixup=0.2))
    for a, b in zip(sum(first, []), sum(second, []), strict=True):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(first[0][0][1], first[1][0][1])  # reshuffled and re-mixed every epoch


def test_mixup_needs_a_seed(tmp_path):
    paths, labels = solid_images(tmp_path, 2)
    with pytest.raises(ValueError, match="mixup needs a seed"):
        make_dataset(paths, labels, 8, batch_size=2, mixup=0.2)


def test_training_accuracy_counts_a_mixed_label_as_its_majority_class():
    from catdog.training.model import accuracy_metric

    metric = accuracy_metric()
    metric.update_state(np.array([[0.7], [0.3], [1.0], [0.0]]), np.array([[0.9], [0.9], [0.2], [0.1]]))
    assert float(metric.result()) == pytest.approx(0.5)
