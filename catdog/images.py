"""Decoding images: the one decode-and-resize function that training, evaluation and labeling share.

Pillow only, no TensorFlow. A JPEG is DCT-downscaled while decoding (`draft`) when it is at least
twice the target size; since every stage calls `load_image`, the model sees the same pixels in
training and in prediction.
"""

from __future__ import annotations

import functools
import hashlib
import io
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from catdog.errors import CatdogError

DEFAULT_MAX_PIXELS = 50_000_000

# We check the pixel count ourselves (with the user's limit) before decoding; Pillow's own
# guard would otherwise warn or raise at its fixed 89 Mpx.
Image.MAX_IMAGE_PIXELS = None

# The formats the README promises; no other Pillow plugin ever sees a file. EPS in particular would hand
# untrusted input to Ghostscript, and a looping PostScript file hangs the decoding thread.
FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF")


class ImageError(CatdogError):
    """A file that cannot be used as an image, with a one-line reason."""


def _to_rgb_or_gray(im: Image.Image) -> Image.Image:
    """8-bit RGB, or 8-bit gray ("L") for one-channel images: resizing before the gray -> RGB copy
    gives the same pixels with a third of the memory on large images."""
    if im.mode in ("RGB", "L"):
        return im
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        # In place, in float32: a 50 Mpx 16-bit image must not need gigabytes on its way to 8 bits.
        arr = np.array(im, dtype=np.float32)
        if im.mode != "F" and (im.mode.startswith("I;16") or arr.max(initial=0) > 255):
            arr /= 257.0
        arr += 0.5
        np.clip(arr, 0, 255, out=arr)
        return Image.fromarray(arr.astype(np.uint8), "L")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "RGBa", "La", "PA"):
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, im).convert("RGB")
    return im.convert("RGB")


@functools.cache
def _refused_plugins() -> tuple[tuple[str, Callable[[bytes], object]], ...]:
    """Pillow's formats that catdog refuses, with their prefix checks (looked up once, not per file)."""
    Image.init()
    return tuple((name, accept) for name, (_factory, accept) in Image.OPEN.items() if name not in FORMATS and accept is not None)


def _sniff_format(head: bytes) -> str | None:
    """The name of a format Pillow knows but catdog refuses, from a file's first bytes (no plugin runs)."""
    for name, accept in _refused_plugins():
        try:
            if accept(head):
                return name
        except Exception:  # noqa: BLE001 - a plugin's prefix check is only a hint
            continue
    return None


def open_image(source: Path | str | bytes | BinaryIO) -> Image.Image:
    """`Image.open` restricted to FORMATS; any other format is an `ImageError` naming it."""
    fp = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        return Image.open(fp, formats=FORMATS)
    except UnidentifiedImageError:
        if isinstance(source, bytes):
            head = source[:16]
        elif hasattr(source, "read"):
            source.seek(0)
            head = source.read(16)
        else:
            with open(source, "rb") as fh:
                head = fh.read(16)
        if not head:
            raise ImageError("empty file") from None
        refused = _sniff_format(head)
        if refused:
            raise ImageError(f"unsupported format: {refused}") from None
        raise


def _open(source: Path | str | bytes | BinaryIO, max_pixels: int) -> Image.Image:
    im = open_image(source)
    width, height = im.size
    if width * height > max_pixels:
        im.close()
        raise ImageError(f"image too large: {width}x{height} pixels exceeds the limit of {max_pixels}")
    return im


def describe_error(exc: BaseException) -> str:
    """One line that says why a file could not be used as an image."""
    if isinstance(exc, ImageError):
        return str(exc)
    if isinstance(exc, UnidentifiedImageError):
        return "not an image (unrecognized format)"
    if isinstance(exc, IsADirectoryError):
        return "is a directory"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, FileNotFoundError):
        return "file not found"
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, (OSError, SyntaxError, ValueError, EOFError)):
        return f"corrupt or truncated image: {text}"
    return f"{type(exc).__name__}: {text}"


@contextmanager
def _decoding(source: Path | str | bytes | BinaryIO, max_pixels: int, side: int) -> Iterator[Image.Image]:
    """The opened image (a JPEG DCT-scaled toward `side`), with every decoder failure in the block turned
    into an `ImageError` with a one-line reason: what `load_image` and `load_thumbnail` share."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with _open(source, max_pixels) as im:
                if im.format == "JPEG":
                    im.draft("RGB", (side, side))
                yield im
    except Exception as exc:  # noqa: BLE001 - every decoder failure becomes a reason
        raise ImageError(describe_error(exc)) from exc


def load_image(
    source: Path | str | bytes | BinaryIO,
    size: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    gate: Callable[[int], AbstractContextManager] | None = None,
) -> np.ndarray:
    """Decode an image file (one of FORMATS, whatever its name) into a `size` x `size` x 3 uint8 RGB array.

    Applies EXIF orientation, takes the first frame of animations, converts every mode to RGB
    (alpha over white) and squashes to a square with bilinear resampling, like Keras'
    `load_img(target_size=...)` without cropping. Raises `ImageError` with a one-line reason.
    `gate(pixels)`, if given, is entered around the decode with the number of pixels it will hold
    (after JPEG draft scaling): callers decoding in parallel use it to bound memory.
    """
    with _decoding(source, max_pixels, size) as im:
        width, height = im.size
        with gate(width * height) if gate else nullcontext():
            im.load()
            return fit_image(im, size)


def check_header(source: Path | str | bytes | BinaryIO, size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """Raise the `ImageError` that `load_image(source, size, max_pixels)` raises before it decodes a pixel (not an
    image, a refused format, too large, a broken header: the same steps, the same reason); return None where it
    would go on to decode. Cheap, so it can run ahead of the decoding on other cores."""
    with _decoding(source, max_pixels, size):
        pass


def fit_image(im: Image.Image, size: int) -> np.ndarray:
    """A decoded image as the model takes it: EXIF orientation applied, converted to RGB (alpha over white,
    16-bit to 8-bit) and squashed to `size` x `size` with bilinear resampling; `size` x `size` x 3 uint8.
    The step after decoding that `load_image` and the Python API's in-memory images share."""
    oriented = ImageOps.exif_transpose(im)
    resized = _to_rgb_or_gray(oriented).resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(resized.convert("RGB"), dtype=np.uint8)


def check_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> str | None:
    """Fully decode image bytes; return None when usable, else the reason it is not."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with _open(data, max_pixels) as im:
                im.load()
                _to_rgb_or_gray(ImageOps.exif_transpose(im))
    except Exception as exc:  # noqa: BLE001
        return describe_error(exc)
    return None


def inspect_file(path: Path | str, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[str, str | None]:
    """Read a file once: its content sha256 and the reason it is not a usable image (None if it is)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        return "", describe_error(exc)
    return hashlib.sha256(data).hexdigest(), check_image(data, max_pixels)


def load_thumbnail(source: Path | str | bytes | BinaryIO, max_side: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode an image as `load_image` does (EXIF orientation, first frame, alpha over white), scaled down to
    fit `max_side` x `max_side` with its aspect ratio kept: 8-bit RGB or gray. Raises `ImageError`."""
    with _decoding(source, max_pixels, max_side) as im:
        im.load()
        oriented = _to_rgb_or_gray(ImageOps.exif_transpose(im))
        width, height = oriented.size
        scale = min(1.0, max_side / max(width, height))
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        return oriented.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
