"""Importing TensorFlow quietly and deterministically (only the training/evaluation modules call this)."""

from __future__ import annotations


def import_tf():
    """Import TensorFlow with its log lines quieted (see catdog.logs); returns the module."""
    from catdog import logs

    logs.configure()
    with logs.native_stderr_filtered():
        import tensorflow as tf
    if not logs.is_verbose():
        tf.get_logger().setLevel("ERROR")  # Python-side warnings such as tf.function retracing notes
    return tf


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and TensorFlow and make TensorFlow ops deterministic."""
    tf = import_tf()
    import keras

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
