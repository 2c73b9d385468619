"""The Python API: catdog from a notebook, a service or a pandas pipeline, as a thin face over the labeler.

`load` opens a bundle into a `Labeler` whose `classify` gives, for a photo or a list of them, what a labels
CSV row says; `label_folder` is `catdog predict-folder`; `read_labels` reads a labels CSV into pandas. Nothing
here decodes, scores or decides on its own: files go through `catdog.images.load_image` and the engines'
`decode`/`score_batch`, rows through `labels.format_row` and `predict.decision_for`, so a photo gets the same
label and the same printed scores here as in the CSV. Re-exported by `catdog` (lazily: `import catdog` stays cheap).
"""

from __future__ import annotations

import difflib
import errno
import io
import os
import stat
import sys
import threading
from contextlib import closing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union, overload

from catdog.errors import CatdogError
from catdog.labeling.labels import COLUMNS, Decision, format_row

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    from PIL import Image

    from catdog.labeling.predict import Summary
    from catdog.labeling.runtime import ModelMeta, Predictor

    ImageInput = Union[str, os.PathLike, bytes, bytearray, memoryview, io.IOBase, Image.Image, np.ndarray]

__all__ = ["Labeler", "Prediction", "label_folder", "load", "read_labels"]


@dataclass(frozen=True)
class Prediction:
    """What a labels CSV row says about one image: `label` (the bundle's class names, e.g. "cat" or "dog", or
    "neither"), `p_dog` (probability of the second class) and `pet_score` (how much it looks like the pets the
    model was trained on; None for a model without one), each as the CSV prints it (six decimals: the label is
    decided on those printed values); `status` "ok", or "error" with the one-line reason in `error` (then
    label, p_dog and pet_score are None)."""

    label: str | None
    p_dog: float | None
    pet_score: float | None
    status: str
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass(frozen=True)
class _Overrides:
    """The part of the run options that decides a label (what `predict.decision_for` reads)."""

    threshold: float | None
    pet_threshold: float | None
    neither: bool


class Labeler:
    """A loaded bundle that classifies photos (see `load`). Load it once and reuse it; threads may share it (their
    model calls take turns on the one interpreter, their decoding does not)."""

    def __init__(self, predictor: Predictor, decision: Decision, batch_size: int = 64, workers: int | None = None,
                 max_pixels: int | None = None):
        self._predictor = predictor
        self.decision = decision
        self.batch_size = batch_size
        self.workers = workers
        self.max_pixels = predictor.meta.max_pixels if max_pixels is None else max_pixels
        self._model_lock = threading.Lock()  # a LiteRT interpreter serves one call at a time

    @property
    def meta(self) -> ModelMeta:
        """The bundle's meta.json: class names, image size, thresholds."""
        return self._predictor.meta

    @property
    def runtime(self) -> str:
        """"litert" or "keras": what runs the model."""
        return self._predictor.runtime

    def __repr__(self) -> str:
        d = self.decision
        pet = "off" if d.pet_threshold is None else f"{d.pet_threshold:g}"
        return f"Labeler({self.meta.model!r}, runtime={self.runtime!r}, classes={d.classes}, threshold={d.threshold:g}, pet_threshold={pet})"

    @overload
    def classify(self, images: list | tuple) -> list[Prediction]: ...
    @overload
    def classify(self, images: ImageInput) -> Prediction: ...

    def classify(self, images):
        """Classify one image, or a list (or tuple) of them: one `Prediction`, or a list of them in the same order.

        Each image may be:
        - a path (`str` or `os.PathLike`), `bytes`, or a binary file object (`open(p, "rb")`, `io.BytesIO`, an
          upload's stream): decoded by `catdog.images.load_image` exactly as `predict-folder` decodes a file, so
          the result equals that file's CSV row to the printed digit;
        - a PIL image: one that Pillow has not read yet (`Image.open(p)` as it returns it) is read from its file
          as `predict-folder` reads it, so it too equals the CSV row; one already in memory (after `.load()`,
          `.convert()`, a crop, ...) is used as it is, with its EXIF orientation applied, converted to RGB (alpha
          over white) and resized like a file (a big JPEG decoded by Pillow in full can then differ from its CSV
          row in the last digits: the CLI lets the JPEG decoder scale it down first);
        - a NumPy array of RGB values 0-255: H x W x 3 (or H x W x 4 RGBA, alpha over white; H x W gray),
          uint8 or any integer or float type. Floats are rounded; values outside 0-255 are an error, and so is a
          float array whose values all lie within 0-1 (scale it by 255: catdog never guesses). Channels are
          taken as RGB: an OpenCV (BGR) array needs `a[..., ::-1]` first. Resized like a decoded file.

        A file or array that cannot be used gives a Prediction with status "error" and the same one-line reason
        the CSV would hold, in its place: a list never fails because of one bad item. An object of any other
        type is a TypeError. Lists are decoded on `workers` threads and scored `batch_size` at a time.
        """
        single = not isinstance(images, (list, tuple))
        items = [images] if single else list(images)
        for item in items:
            if not _supported(item):
                raise TypeError(
                    f"cannot classify a {type(item).__name__}: give a path, bytes, a binary file object, a PIL image "
                    "or a NumPy array (or a list of them)"
                )
        results = self._classify(items)
        return results[0] if single else results

    def _classify(self, items: list) -> list[Prediction]:
        from catdog.labeling.engines import decode_ahead, large_decode_gate, score_batch

        gate = large_decode_gate()
        results: list[Prediction] = []

        def score(start: int, decoded: list) -> None:
            rels = [str(i) for i in range(start, start + len(decoded))]
            with self._model_lock:
                scored = score_batch(rels, decoded, self._predictor)
            for rel, p_dog, pet, reason in scored:
                _, label, p_text, pet_text, status, error = format_row(rel, p_dog, pet, reason, self.decision)
                results.append(Prediction(
                    label or None, float(p_text) if p_text else None, float(pet_text) if pet_text else None, status, error or None,
                ))

        if len(items) == 1:
            score(0, [self._decode(items[0], gate)])
            return results
        decode_one = lambda i: self._decode(items[i], gate)  # noqa: E731
        with closing(decode_ahead(range(len(items)), decode_one, self.batch_size, self.workers)) as batches:
            for indices, decoded in batches:
                score(indices[0], decoded)
        return results

    def _decode(self, item: Any, gate) -> np.ndarray | str:
        """The image as the model takes it, or the one-line reason it cannot be used (as a CSV row gives it)."""
        from PIL import Image

        from catdog.images import ImageError, describe_error, load_image
        from catdog.labeling.engines import decode
        from catdog.labeling.sources import LocalSource, path_text

        size = self.meta.image_size
        try:
            if isinstance(item, (str, os.PathLike)):
                path = os.fsdecode(item)
                problem = _listing_problem(path)
                if problem is not None:
                    return problem
                # The local source's reader, as predict-folder reads a listed file (FIFOs and sockets refused unread).
                return decode(LocalSource("."), path_text(path), None, size, self.max_pixels, gate)
            if isinstance(item, (bytes, bytearray, memoryview)):
                return load_image(bytes(item), size, self.max_pixels, gate)
            if isinstance(item, Image.Image):
                unread = _unread_file(item)
                if unread is not None:
                    return load_image(unread, size, self.max_pixels, gate)
                return _fitted(item, size)
            if _is_array(item):
                return _fitted(_array_image(item), size)
            return load_image(_binary_file(item), size, self.max_pixels, gate)
        except ImageError as exc:
            return str(exc)
        except (OSError, ValueError) as exc:  # an unreadable file object, an in-memory image Pillow cannot convert
            return describe_error(exc)


def _listing_problem(path: str) -> str | None:
    """What predict-folder's listing says about a path before reading it (a folder, a broken symlink, a symlink
    loop), in the same words as its CSV row; None when the file is for the reader to try."""
    try:
        st = os.stat(path)
    except OSError as exc:
        if os.path.islink(path):
            return "symlink loop" if exc.errno == errno.ELOOP else "broken symlink"
        return None  # the reader says why: file not found, permission denied, ...
    return "is a directory" if stat.S_ISDIR(st.st_mode) else None


def _is_array(item: Any) -> bool:
    numpy = sys.modules.get("numpy")  # an array exists only once NumPy is imported: no need to import it here
    return numpy is not None and isinstance(item, numpy.ndarray)


def _supported(item: Any) -> bool:
    if isinstance(item, (str, os.PathLike, bytes, bytearray, memoryview)) or _is_array(item):
        return True
    if hasattr(item, "read"):
        return True
    from PIL import Image

    return isinstance(item, Image.Image)


def _fitted(im: Image.Image, size: int) -> np.ndarray:
    """`images.fit_image` for an image already in memory; one without pixels, or of a mode Pillow cannot turn into
    RGB, is an `ImageError`."""
    from catdog.images import ImageError, fit_image

    if not (im.width and im.height):
        raise ImageError(f"an image of {im.width}x{im.height} pixels: nothing to classify")
    try:
        return fit_image(im, size)
    except (ValueError, OSError) as exc:
        raise ImageError(f"cannot convert a {im.mode} image to RGB: {' '.join(str(exc).split())}") from None


def _unread_file(im: Any):
    """The file (name or file object) a PIL image was opened from, while Pillow has not decoded it yet and it
    shows its first frame: decoding that file with `load_image` gives the pixels predict-folder sees. None for
    an image already in memory."""
    if not getattr(im, "tile", None) or im.tell() != 0:
        return None
    if getattr(im, "filename", ""):
        return im.filename
    fp = getattr(im, "fp", None)
    if fp is None:
        return None
    fp.seek(0)  # Image.open reads an image from the start of its file object
    data = fp.read()
    fp.seek(0)
    return data


def _binary_file(fh: Any) -> Any:
    """A binary file object `load_image` can seek in (an unseekable stream is read whole first)."""
    if isinstance(fh, io.TextIOBase):
        from catdog.images import ImageError

        raise ImageError("a file opened in text mode: open it with 'rb'")
    seekable = getattr(fh, "seekable", None)
    if seekable is not None and seekable():
        return fh
    data = fh.read()
    if not isinstance(data, bytes):
        from catdog.images import ImageError

        raise ImageError(f"the file object gave {type(data).__name__}, not bytes: open it in binary mode")
    return data


def _array_image(array: np.ndarray) -> Image.Image:
    """An RGB (or RGBA, or gray) 0-255 array as a PIL image, or an `ImageError` saying what is wrong with it."""
    import numpy as np
    from PIL import Image

    from catdog.images import ImageError

    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))) or 0 in array.shape:
        raise ImageError(f"not an image array: shape {array.shape} (expected H x W x 3 RGB, H x W x 4 RGBA or H x W gray)")
    if array.dtype != np.uint8:
        if array.dtype.kind not in "iuf":
            raise ImageError(f"not an image array: dtype {array.dtype} (expected uint8, integers or floats 0-255)")
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise ImageError("not an image array: it holds NaN or infinite values")
        low, high = array.min(), array.max()
        if low < 0 or high > 255:
            raise ImageError(f"array values {low:g} to {high:g} are outside 0-255 (catdog takes RGB 0-255)")
        if array.dtype.kind == "f" and 0 < high <= 1:
            raise ImageError("array values all lie within 0-1: multiply by 255 (catdog takes RGB 0-255)")
        array = (array + 0.5).astype(np.uint8) if array.dtype.kind == "f" else array.astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(array))


def load(bundle: str | os.PathLike, runtime: str = "auto", *, threshold: float | None = None,
         pet_threshold: float | None = None, neither: bool = True, batch_size: int = 64,
         workers: int | None = None, max_pixels: int | None = None) -> Labeler:
    """Load a model bundle (the folder `catdog train` writes, or its model.tflite / model.keras) for `classify`.

    `runtime` as in predict-folder: "auto" runs model.tflite with LiteRT when both are there (no TensorFlow
    needed), else model.keras with TensorFlow; or "litert" / "keras". `threshold`, `pet_threshold` and
    `neither` override the bundle's labeling rule as predict-folder's options do (`neither=False`: only the two
    classes); `batch_size`, `workers` and `max_pixels` as there too. A missing or broken bundle, or a bad
    threshold, is a one-line `CatdogError`.
    """
    from catdog.labeling.predict import check_counts, decision_for
    from catdog.labeling.runtime import load_predictor

    check_counts(batch_size, workers, max_pixels)
    predictor = load_predictor(bundle, runtime)
    decision = decision_for(predictor.meta, _Overrides(threshold, pet_threshold, neither))  # type: ignore[arg-type]
    return Labeler(predictor, decision, batch_size, workers, max_pixels)


def label_folder(source: str | os.PathLike, out: str | os.PathLike, *, model: str | os.PathLike | None = None,
                 **options: Any) -> Summary:
    """Label every file under `source` (a folder or s3://bucket/prefix) into the labels CSV `out`: the same run
    as `catdog predict-folder`, returning its `Summary` (ok, error, neither, seconds, ...).

    `model` is the bundle (default: $CATDOG_MODEL, as for the CLI). `options` are the fields of
    `catdog.labeling.predict.PredictOptions` (threshold, pet_threshold, neither, batch_size, recursive,
    follow_links, shard, resume, overwrite, runtime, engine, workers, max_pixels, s3_endpoint_url, ray, ...);
    `shard` may be "K/N" and `ray` a dict of `RayOptions` fields. An unknown option is a TypeError naming it;
    a bad source, model or output a one-line `CatdogError`. An existing CSV is kept unless `overwrite=True`.
    """
    from catdog.labeling.predict import PredictOptions, RayOptions, parse_shard, predict

    known = sorted(f.name for f in fields(PredictOptions) if f.name not in ("source", "out", "model"))
    for name in options:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise TypeError(f"label_folder: unknown option {name!r}{hint}; the options are {', '.join(known)}")
    model = model if model is not None else os.environ.get("CATDOG_MODEL")
    if not model:
        raise CatdogError("label_folder needs model= (the bundle folder) or $CATDOG_MODEL")
    if isinstance(options.get("shard"), str):
        options["shard"] = parse_shard(options["shard"])
    if isinstance(options.get("ray"), dict):
        options["ray"] = RayOptions(**options["ray"])
    return predict(PredictOptions(source=os.fspath(source), model=Path(model), out=Path(out), **options))


def read_labels(path: str | os.PathLike) -> pd.DataFrame:
    """A labels CSV (predict-folder's, merge-labels' or any shard's) as a pandas DataFrame with the CSV's columns:
    path, label, status and error as strings (a file named "NA" or "null" stays that string; label and error
    empty where the CSV's are), p_dog and pet_score as floats, NaN on error rows (pet_score also for a model
    without one). A five-column CSV from before the pet score reads with pet_score all NaN.

    The file is checked as merge-labels and report check it (`catdog.labeling.reading`): header, every row,
    sorted unique paths; a file that is not a labels CSV is a one-line `CatdogError` naming the line. Needs
    pandas, which the labeling Docker image leaves out (`pip install pandas`, or catdog's `[pipeline]` extra);
    without it, a one-line `CatdogError` too.
    """
    try:
        import pandas as pd
    except ImportError:
        raise CatdogError("read_labels needs pandas, which catdog's labeling install leaves out: pip install pandas") from None
    from catdog.labeling.reading import LabelsReader

    columns: tuple[list, ...] = tuple([] for _ in COLUMNS)
    with LabelsReader(Path(path)) as reader:
        for row in reader.rows():
            for column, value in zip(columns, row):
                column.append(value)
    scores = {"p_dog", "pet_score"}
    return pd.DataFrame({
        name: pd.Series(values, dtype="float64" if name in scores else str) for name, values in zip(COLUMNS, columns)
    })
