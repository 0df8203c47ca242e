"""Pixel arrays (JSON nested lists, .npy files) -> uint8 (n, 28, 28), taken as they are.

Array clients are expected to send MNIST already (no inversion, no centring), so the checks here
are about shape, type and range, each refused with a reason that says what to send instead.
"""

from __future__ import annotations

import io

import numpy as np

from common.image import SHAPE
from service.refusals import Rejected

SCALES = ("0-255", "0-1")


def pixels(values: object, scale: str = "0-255") -> np.ndarray:
    """JSON-ish nested lists or an array -> uint8 (n, 28, 28).

    Accepts one image (28, 28) or a batch (n, 28, 28), each optionally with a trailing channel of 1.
    scale "0-255" takes values 0..255, "0-1" takes 0..1; fractions are rounded half up.
    """
    if scale not in SCALES:
        raise Rejected("bad_scale", f"scale must be '0-255' or '0-1' (got {scale!r})")
    array = _as_batch(_numbers(values))
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        bad = int(np.size(array) - np.isfinite(array).sum())
        raise Rejected(
            "not_finite",
            f"pixel values must be finite numbers (got NaN or infinity in {bad} places); "
            f"send numbers in 0..{255 if scale == '0-255' else 1}",
        )
    top = 255 if scale == "0-255" else 1
    low, high = array.min().item(), array.max().item()
    if low < 0 or high > top:
        hint = "; values above 1: did you mean scale '0-255'?" if top == 1 and high > 1 else ""
        raise Rejected(
            "out_of_range",
            f"pixel values must lie in 0..{top} for scale '{scale}' (got min {low:g}, "
            f"max {high:g}){hint}",
        )
    if scale == "0-1":
        array = array * 255.0
    return np.floor(array + 0.5).astype(np.uint8)


def one_image(values: object, scale: str = "0-255") -> np.ndarray:
    """Exactly one 28×28 image as uint8 (1, 28, 28)."""
    x = pixels(values, scale)
    if len(x) != 1:
        raise Rejected("wrong_shape", f"expected one 28×28 image, got {len(x)}")
    return x


def batch(values: object, scale: str, max_batch: int) -> np.ndarray:
    """A batch of at most `max_batch` images as uint8 (n, 28, 28)."""
    x = pixels(values, scale)
    if len(x) > max_batch:
        raise Rejected(
            "batch_too_large",
            f"{len(x)} images in one request; the limit is {max_batch} "
            "(DIGIT_MAX_BATCH): split it.",
        )
    return x


def load_npy(data: bytes) -> np.ndarray:
    """np.save() bytes -> the uint8 array in them (no pickles)."""
    try:
        values = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise Rejected("not_npy", f"'array' is not a readable .npy file ({exc}).") from None
    if values.dtype != np.uint8:
        raise Rejected("wrong_dtype", f"'array' must be uint8, got {values.dtype}.")
    return values


def _numbers(values: object) -> np.ndarray:
    """Any nested sequence -> a numeric array, refusing what JSON numbers cannot be."""
    if isinstance(values, str | bytes):
        raise Rejected("not_numbers", "pixel values must be numbers in nested lists (got a string)")
    try:
        array = np.asarray(values)
    except (ValueError, TypeError) as exc:
        raise Rejected(
            "not_numbers",
            "pixel values must form a rectangular array of numbers (rows have different "
            "lengths); send 28 rows of 28 numbers per image",
        ) from exc
    if array.dtype.kind not in "iuf":
        what = {"U": "strings", "S": "strings", "b": "booleans", "c": "complex numbers"}.get(
            array.dtype.kind, "null, mixed values or rows of different lengths"
        )
        raise Rejected(
            "not_numbers",
            f"pixel values must be plain numbers (got {what}); send 28 rows of 28 numbers",
        )
    return array


def _as_batch(array: np.ndarray) -> np.ndarray:
    """(28,28), (28,28,1), (n,28,28) or (n,28,28,1) -> (n, 28, 28)."""
    shape = array.shape
    if array.ndim in (3, 4) and shape[-1] == 1 and shape[-3:-1] == SHAPE:
        array = array[..., 0]
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or array.shape[1:] != SHAPE:
        raise Rejected(
            "wrong_shape",
            f"image must be 28 rows of 28 values (got shape {tuple(shape)}); send a 28×28 "
            "array, or a batch shaped (n, 28, 28)",
        )
    if array.shape[0] == 0:
        raise Rejected(
            "wrong_shape",
            f"batch is empty (got shape {tuple(shape)}); send at least one 28×28 image",
        )
    return array


def from_npy(data: bytes, max_batch: int) -> np.ndarray:
    """np.save() bytes of a batch -> uint8 (n, 28, 28), at most `max_batch` images."""
    return batch(load_npy(data), "0-255", max_batch)
