"""The tf.data input pipeline for training: parallel decode, cache, seeded shuffle and augmentation, prefetch.

Decoding goes through `catdog.images.load_image`, the same function the labeler uses, so the model
trains on exactly the pixels it will see in prediction. Augmentation runs on the cached uint8
images with stateless random ops keyed by a seeded stream, so a rerun sees the same batches.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from catdog.images import DEFAULT_MAX_PIXELS, ImageError, load_image
from catdog.tfsetup import import_tf

tf = import_tf()
AUTOTUNE = tf.data.AUTOTUNE


def _augment(image, seeds, size: int):
    """Random horizontal flip, zoom (crop 80-100% and resize back) and brightness/contrast jitter."""
    image = tf.cast(image, tf.float32)
    image = tf.image.stateless_random_flip_left_right(image, seed=seeds[0])
    scale = tf.random.stateless_uniform([], seed=seeds[1], minval=0.8, maxval=1.0)
    crop = tf.cast(tf.round(scale * size), tf.int32)
    image = tf.image.stateless_random_crop(image, tf.stack([crop, crop, 3]), seed=seeds[2])
    image = tf.image.resize(image, [size, size], method="bilinear")
    image = tf.image.stateless_random_brightness(image, 0.1 * 255.0, seed=seeds[3])
    image = tf.image.stateless_random_contrast(image, 0.85, 1.15, seed=seeds[4])
    return tf.clip_by_value(image, 0.0, 255.0)


def _mixup(images, labels, seeds, alpha: float):
    """Blend each image and label with the batch's mirror-order partner, weight ~ Beta(alpha, alpha)."""
    n = tf.shape(images)[0]
    a = tf.random.stateless_gamma([n], seed=seeds[0], alpha=alpha)
    b = tf.random.stateless_gamma([n], seed=seeds[1], alpha=alpha)
    weight = a / (a + b)
    partner = tf.reverse(tf.range(n), [0])
    w = tf.reshape(weight, [-1, 1, 1, 1])
    images = w * images + (1 - w) * tf.gather(images, partner)
    return images, weight * labels + (1 - weight) * tf.gather(labels, partner)


def make_dataset(
    paths: list[Path | str],
    labels: list[int],
    image_size: int,
    batch_size: int,
    seed: int | None = None,
    augment: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    mixup: float = 0.0,
):
    """Batches of (float32 0-255 RGB images, float32 labels). `seed` turns on shuffling each epoch.

    `mixup` > 0 blends pairs of images within each batch (soft labels), a regulariser for training only.
    """

    def decode(path: bytes) -> np.ndarray:
        name = path.decode("utf-8")
        try:
            return load_image(name, image_size, max_pixels)
        except ImageError as exc:
            raise ImageError(f"{name}: {exc}") from None

    def load(path, label):
        image = tf.numpy_function(decode, [path], tf.uint8, stateful=False)
        return tf.ensure_shape(image, (image_size, image_size, 3)), label

    ds = tf.data.Dataset.from_tensor_slices(([str(p) for p in paths], np.asarray(labels, dtype=np.float32)))
    ds = ds.map(load, num_parallel_calls=AUTOTUNE, deterministic=True).cache()
    if seed is not None:
        ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    if augment:
        if seed is None:
            raise ValueError("augmentation needs a seed")
        keys = tf.data.Dataset.random(seed=seed + 1, rerandomize_each_iteration=True).batch(10)
        ds = tf.data.Dataset.zip((ds, keys)).map(
            lambda xy, k: (_augment(xy[0], tf.reshape(k, (5, 2)), image_size), xy[1]),
            num_parallel_calls=AUTOTUNE,
            deterministic=True,
        )
    else:
        ds = ds.map(lambda x, y: (tf.cast(x, tf.float32), y))
    ds = ds.batch(batch_size)
    if mixup > 0:
        if seed is None:
            raise ValueError("mixup needs a seed")
        keys = tf.data.Dataset.random(seed=seed + 2, rerandomize_each_iteration=True).batch(4)
        ds = tf.data.Dataset.zip((ds, keys)).map(
            lambda xy, k: _mixup(xy[0], xy[1], tf.reshape(k, (2, 2)), mixup),
            num_parallel_calls=AUTOTUNE,
            deterministic=True,
        )
    return ds.prefetch(AUTOTUNE)
