"""Loading a trained model bundle for inference: LiteRT (`model.tflite`) when it can, Keras otherwise.

A bundle is the folder `train` writes: `model.tflite`, `model.keras` and `meta.json`. LiteRT needs
only the small `ai-edge-litert` package, so labeling runs without TensorFlow installed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from catdog.cpus import usable_cpus
from catdog.errors import CatdogError
from catdog.images import DEFAULT_MAX_PIXELS
from catdog.logs import native_stderr_filtered

RUNTIMES = ("auto", "litert", "keras")


@dataclass(frozen=True)
class ModelMeta:
    classes: tuple[str, str]
    image_size: int
    threshold: float
    model: str
    max_pixels: int = DEFAULT_MAX_PIXELS  # the pixel limit the model was trained with
    pet_threshold: float | None = None  # pet_score below which an image is neither class; None: no pet score

    @classmethod
    def read(cls, path: Path) -> ModelMeta:
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            meta = cls(
                tuple(raw["classes"]), int(raw["image_size"]), float(raw["threshold"]), str(raw.get("model", "?")),
                int(raw.get("max_pixels", DEFAULT_MAX_PIXELS)),
                None if raw.get("pet_threshold") is None else float(raw["pet_threshold"]),
            )
        except FileNotFoundError:
            raise CatdogError(f"model metadata not found: {path} (expected beside the model)") from None
        except RecursionError:
            raise CatdogError(f"invalid model metadata {path}: JSON nested too deeply") from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CatdogError(f"invalid model metadata {path}: {' '.join(str(exc).split())}") from None
        names_ok = isinstance(raw["classes"], list) and all(isinstance(c, str) and c for c in meta.classes)
        pet_ok = meta.pet_threshold is None or 0 < meta.pet_threshold < 1
        if not names_ok or len(set(meta.classes)) != 2 or not 0 < meta.threshold < 1 or meta.image_size < 1 or meta.max_pixels < 1 or not pet_ok:
            raise CatdogError(
                f"invalid model metadata {path}: needs a list of 2 distinct class names, 0 < threshold < 1, "
                "image_size >= 1, max_pixels >= 1 and, if set, 0 < pet_threshold < 1"
            )
        return meta


Scores = tuple[np.ndarray, "np.ndarray | None"]


def split_outputs(out: np.ndarray, n: int) -> Scores:
    """A model's output as (p_dog, pet_score): (n, 2) holds both; (n, 1), a bundle from before the pet score, p_dog only."""
    out = np.asarray(out, dtype=np.float64).reshape(n, -1)
    return out[:, 0].copy(), (out[:, 1].copy() if out.shape[1] > 1 else None)


class Predictor(Protocol):
    meta: ModelMeta
    runtime: str

    def predict(self, images: np.ndarray) -> Scores:
        """For a batch of uint8 or float 0-255 RGB images: p(classes[1]), shape (n,), and the pet score, shape (n,)
        (None when the model has none)."""


class LiteRTPredictor:
    runtime = "litert"

    def __init__(self, path: Path, meta: ModelMeta, threads: int | None = None):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:  # TensorFlow ships the same interpreter
            try:
                from tensorflow.lite import Interpreter  # type: ignore[no-redef]
            except ImportError:
                raise CatdogError("LiteRT is not installed: pip install ai-edge-litert (or use --runtime keras)") from None
        try:
            # LiteRT prints "INFO: Created TensorFlow Lite XNNPACK delegate" on the first allocation, whatever
            # the log level: allocate here, with that line filtered out (later resizes print nothing).
            with native_stderr_filtered():
                self._interpreter = Interpreter(model_path=str(path), num_threads=threads or usable_cpus())
                self._interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise CatdogError(f"cannot load model {path}: {' '.join(str(exc).split())[:200]}") from None
        self.meta = meta
        details = self._interpreter.get_input_details()[0]
        if list(details["shape"][1:]) != [meta.image_size, meta.image_size, 3]:
            raise CatdogError(
                f"cannot load model {path}: it takes {list(details['shape'][1:])} inputs but meta.json says image_size {meta.image_size}"
            )
        self._input = details["index"]
        self._output = self._interpreter.get_output_details()[0]["index"]
        self._batch = -1

    def predict(self, images: np.ndarray) -> Scores:
        n = len(images)
        if n != self._batch:
            self._interpreter.resize_tensor_input(self._input, [n, self.meta.image_size, self.meta.image_size, 3])
            self._interpreter.allocate_tensors()
            self._batch = n
        self._interpreter.set_tensor(self._input, np.asarray(images, dtype=np.float32))
        self._interpreter.invoke()
        return split_outputs(self._interpreter.get_tensor(self._output), n)


class KerasPredictor:
    runtime = "keras"

    def __init__(self, path: Path, meta: ModelMeta):
        try:
            from catdog.tfsetup import import_tf

            tf = import_tf()
            import keras
        except ImportError:
            raise CatdogError("TensorFlow is not installed: it is needed to run a .keras model") from None
        try:
            model = keras.saving.load_model(path, compile=False)
        except Exception as exc:  # noqa: BLE001 - Keras raises many types for a bad file
            raise CatdogError(f"cannot load model {path}: {' '.join(str(exc).split())[:200]}") from None
        self.meta = meta
        self._call = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
        self._tf = tf

    def predict(self, images: np.ndarray) -> Scores:
        out = self._call(self._tf.convert_to_tensor(np.asarray(images, dtype=np.float32)))
        return split_outputs(np.asarray(out), len(images))


def _litert_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("ai_edge_litert") is not None


def resolve_model_file(path: Path | str, runtime: str = "auto") -> tuple[Path, str]:
    """The model file a bundle folder (or model file) resolves to for `runtime`, and that runtime."""
    path = Path(path)
    if runtime not in RUNTIMES:
        raise CatdogError(f"unknown runtime {runtime!r}: choose one of {', '.join(RUNTIMES)}")
    if not path.exists():
        raise CatdogError(f"model not found: {path}")
    if path.is_dir():
        tflite, keras_file = path / "model.tflite", path / "model.keras"
        if runtime == "auto":
            runtime = "litert" if tflite.is_file() and _litert_available() else "keras"
        path = tflite if runtime == "litert" else keras_file
        if not path.is_file():
            raise CatdogError(f"model not found: {path}")
    elif runtime == "auto":
        runtime = "litert" if path.suffix == ".tflite" else "keras"
    return path, runtime


def load_predictor(path: Path | str, runtime: str = "auto", threads: int | None = None) -> Predictor:
    """Open a bundle folder, or a `model.tflite` / `model.keras` file with `meta.json` beside it."""
    model_file, runtime = resolve_model_file(path, runtime)
    meta = ModelMeta.read(model_file.parent / "meta.json")
    if runtime == "litert":
        return LiteRTPredictor(model_file, meta, threads)
    return KerasPredictor(model_file, meta)
