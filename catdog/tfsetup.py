"""Importing TensorFlow quietly and deterministically (only the training/evaluation modules call this)."""

from __future__ import annotations

import os


def import_tf():
    """Import TensorFlow with its C++ logging quieted; returns the module."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    return tf


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and TensorFlow and make TensorFlow ops deterministic."""
    tf = import_tf()
    import keras

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
