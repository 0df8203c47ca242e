"""Pixel arrays (JSON nested lists, .npy files) -> uint8 (n, 28, 28), taken as they are.

Array clients are expected to send MNIST already (no inversion, no centring), so the checks here
are about shape, type and range, each refused with a reason that says what to send instead.
"""

from __future__ import annotations

import io
import math

import numpy as np

from common.image import SHAPE, SIDE
from service.refusals import Rejected

SCALES = ("0-255", "0-1")
_PLAIN = frozenset({int, float})  # what JSON numbers parse to; bool is a subclass of int: not here
NPY_HEADER_BYTES = 1024  # np.save() writes 128; numpy's own cap (10,000) is for foreign files


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
    if isinstance(values, list | tuple | np.ndarray) and len(values) > max_batch:
        raise _too_many(len(values), max_batch)  # counted before a single value is looked at
    x = pixels(values, scale)
    if len(x) > max_batch:
        raise _too_many(len(x), max_batch)
    return x


def _too_many(n: int, max_batch: int) -> Rejected:
    return Rejected(
        "batch_too_large",
        f"{n} images in one request; the limit is {max_batch} (DIGIT_MAX_BATCH): split it.",
    )


def json_image(values: object, scale: object = "0-255") -> np.ndarray:
    """A JSON field holding one image -> uint8 (1, 28, 28), strictly: 28 lists of 28 plain
    numbers. The first problem found is the one reported, so a body of bad cells costs one
    error, not one per cell; booleans and numeric strings are refused, not coerced."""
    _check_scale(scale)
    _check_grid(values, "image")
    return pixels(values, scale)


def json_images(
    values: object, scale: object, max_batch: int, no_booleans: bool = False
) -> np.ndarray:
    """A JSON field holding a batch -> uint8 (n, 28, 28), as strictly as `json_image`.

    `no_booleans`: the caller knows the body holds no JSON `true`/`false`; then a batch numpy
    reads as an (n, 28, 28) array of numbers is taken without walking every cell in Python (half
    the cost of a large batch), and only a batch it cannot read is walked, to name the first bad
    cell."""
    _check_scale(scale)
    if not isinstance(values, list):
        got = _kind(values)
        raise Rejected("invalid_field", f"'images' must be a list of 28×28 images (got {got})")
    if not values:
        raise Rejected("wrong_shape", "'images' is empty; send at least one 28×28 image")
    if len(values) > max_batch:
        raise _too_many(len(values), max_batch)
    if no_booleans:
        try:
            array = np.asarray(values)
        except (ValueError, TypeError):  # ragged
            array = None
        plain = array is not None and array.dtype.kind in "iuf"
        if plain and array.ndim == 3 and array.shape[1:] == SHAPE:
            return pixels(array, scale)
    for i, image in enumerate(values):
        _check_grid(image, f"images[{i}]")
    return pixels(values, scale)


def _check_scale(scale: object) -> None:
    if not isinstance(scale, str) or scale not in SCALES:
        raise Rejected("bad_scale", f"scale must be '0-255' or '0-1' (got {scale!r})")


def _check_grid(values: object, where: str) -> None:
    """28 lists of 28 ints or floats, or a Rejected naming the first place that is not."""
    if not isinstance(values, list):
        raise Rejected(
            "invalid_field", f"'{where}' must be a list of 28 rows (got {_kind(values)})"
        )
    if len(values) != SIDE:
        raise Rejected(
            "wrong_shape",
            f"'{where}' must be 28 rows of 28 values (got {len(values)} rows); send a 28×28 array",
        )
    for r, row in enumerate(values):
        if not isinstance(row, list) or len(row) != SIDE:
            got = f"{len(row)} values" if isinstance(row, list) else _kind(row)
            raise Rejected(
                "wrong_shape",
                f"'{where}' row {r} must hold 28 values (got {got}); send 28 rows of 28 numbers",
            )
        if not _PLAIN.issuperset(map(type, row)):
            c, bad = next((c, v) for c, v in enumerate(row) if type(v) not in _PLAIN)
            raise Rejected(
                "not_numbers",
                f"'{where}'[{r}][{c}] is {_kind(bad)}, not a number; pixel values must be plain "
                "JSON numbers (no strings, booleans or null)",
            )


def _kind(value: object) -> str:
    names = {bool: "a boolean", str: "a string", dict: "an object", type(None): "null"}
    return names.get(type(value), "a number" if isinstance(value, int | float) else "a list")


def load_npy(data: bytes, max_batch: int = 1 << 16) -> np.ndarray:
    """np.save() bytes -> the uint8 array in them, reading the header first: a zip (.npz), a
    pickle, a malformed header, a shape that is not small non-negative integers or that the bytes
    do not hold is refused before anything is allocated."""
    if data[:4] == b"PK\x03\x04":
        raise Rejected("not_npy", "'array' is a zip (np.savez?); send the output of np.save().")
    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
        read_header = {
            (1, 0): np.lib.format.read_array_header_1_0,
            (2, 0): np.lib.format.read_array_header_2_0,
        }[version]
        shape, fortran, dtype = read_header(stream, max_header_size=NPY_HEADER_BYTES)
    except Exception as exc:  # numpy raises ValueError, SyntaxError, KeyError... on bad headers
        raise Rejected(
            "not_npy",
            f"'array' is not a readable .npy file ({str(exc)[:200]}); send np.save() output.",
        ) from None
    if dtype != np.uint8:
        raise Rejected("wrong_dtype", f"'array' must be uint8, got {dtype}.")
    limit = max_batch * SIDE * SIDE
    if not all(type(n) is int and 0 <= n <= limit for n in shape):
        declared = str(shape)[:100]
        raise Rejected("not_npy", f"'array' declares the shape {declared}; send (n, 28, 28).")
    size, held = math.prod(shape), len(data) - stream.tell()
    if size != held:  # (a shape the body holds is no allocation: frombuffer is a view)
        raise Rejected(
            "not_npy",
            f"'array' declares the shape {shape} ({size:,} bytes) but holds {held:,} bytes; "
            "send the complete np.save() output of (n, 28, 28), n ≤ "
            f"{max_batch}.",
        )
    order = "F" if fortran else "C"
    return np.frombuffer(data, np.uint8, size, stream.tell()).reshape(shape, order=order)


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
    return batch(load_npy(data, max_batch), "0-255", max_batch)
