"""Encoded pictures (PNG, JPEG, WebP, GIF, BMP, TIFF) -> grey, upright, transparency flattened.

Uploads come in any size, mode and orientation; the header is read first so an oversized or
too-many-pixel file is refused before it is decoded, and large pictures are decoded downscaled.
`from_image_bytes` then makes the picture MNIST-like (service.inputs.mnist).
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import (  # noqa: F401 (imported to register exactly the plugins FORMATS names)
    BmpImagePlugin,
    GifImagePlugin,
    Image,
    ImageFile,
    JpegImagePlugin,
    PngImagePlugin,
    TiffImagePlugin,
    WebPImagePlugin,
)

from service.inputs.limits import DEFAULT_LIMITS, Limits
from service.inputs.mnist import to_mnist
from service.refusals import Rejected

# A truncated upload must be refused, not decoded with a grey band where the rest should be.
ImageFile.LOAD_TRUNCATED_IMAGES = False

# Formats Pillow may try; the rest (EPS, PSD, ICO...) are attack surface a digit upload never needs.
# The JPEG opener also returns the MPO files many phones write.
FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
FORMAT_NAMES = "PNG, JPEG, WebP, GIF, BMP or TIFF"
WORK_SIDE = 1024  # larger pictures are decoded downscaled: the digit ends up 20 px anyway
# A progressive JPEG costs a pass over the whole picture per scan; encoders write ≤ 10-20 scans, a
# "scan bomb" thousands of empty ones. Refused from a count of the markers, before any decoding.
MAX_JPEG_SCANS = 32

_ORIENTATION_TAG = 0x0112
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def from_image_bytes(data: bytes, limits: Limits = DEFAULT_LIMITS) -> np.ndarray:
    """Encoded picture bytes -> uint8 (28, 28) MNIST-style digit."""
    return to_mnist(decode_image(data, limits))


def decode_image(data: bytes, limits: Limits = DEFAULT_LIMITS) -> np.ndarray:
    """Encoded picture bytes -> float32 grey (H, W) in 0..1, upright, transparency flattened.

    Pictures with a side over WORK_SIDE come back shrunk by an integer factor (box-averaged).
    """
    image = _open(data, limits)
    _load(image)
    orientation = _orientation(image)
    try:
        working, full = _working_mode(image)
        factor = math.ceil(max(working.size) / WORK_SIDE)
        if factor > 1:
            working = working.reduce(factor)
        if orientation in _TRANSPOSE:
            working = working.transpose(_TRANSPOSE[orientation])
        array = np.asarray(working, dtype=np.float32)
    except (ValueError, TypeError, OSError, KeyError) as exc:  # an exotic mode Pillow can't map
        raise Rejected(
            "not_an_image",
            f"cannot read {image.mode} pixels; send an 8- or 16-bit grey, RGB or RGBA image "
            f"({FORMAT_NAMES})",
        ) from exc
    if full is None:  # float images: take 0..1 as is, anything larger relative to its maximum
        array = np.nan_to_num(array, nan=0.0, posinf=0.0, neginf=0.0)
        full = max(1.0, float(array.max()))
    array = np.clip(array / full, 0.0, 1.0)
    if array.ndim == 3:  # LA: grey and alpha
        return _flatten_alpha(array[..., 0], array[..., 1])
    return array


def _open(data: bytes, limits: Limits) -> Image.Image:
    """Read only the header: refuse empty, oversized, unknown and too-many-pixel uploads."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise Rejected("not_an_image", f"send the image file's bytes ({FORMAT_NAMES})")
    size = memoryview(data).nbytes
    if size == 0:
        raise Rejected("empty_body", f"request body is empty; send a {FORMAT_NAMES} image")
    if size > limits.max_bytes:
        raise Rejected(
            "too_large",
            f"image is {size:,} bytes; the limit is {limits.max_bytes:,} bytes; send a smaller "
            "or more compressed picture (a 280×280 PNG is plenty)",
        )
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _too_many_pixels(None, limits) from exc
    except Exception as exc:  # Pillow raises many exception types on junk headers
        raise Rejected(
            "not_an_image",
            f"body is not a picture in a supported format; send {FORMAT_NAMES} "
            "(HEIC, SVG and PDF are not supported)",
        ) from exc
    if image.format in ("JPEG", "MPO"):
        scans = bytes(data).count(b"\xff\xda")  # start-of-scan markers (an upper bound)
        if scans > MAX_JPEG_SCANS:
            raise Rejected(
                "too_costly",
                f"the JPEG has {scans:,} scans; this service decodes at most {MAX_JPEG_SCANS} "
                "(each one is a pass over the whole picture); re-save it as a baseline JPEG",
            )
    width, height = image.size
    if width * height > limits.max_pixels:
        raise _too_many_pixels((width, height), limits)
    if width == 0 or height == 0:
        raise Rejected("not_an_image", f"image has no pixels ({width}×{height}); send a picture")
    return image


def _too_many_pixels(size: tuple[int, int] | None, limits: Limits) -> Rejected:
    declared = f"{size[0]}×{size[1]} = {size[0] * size[1]:,} pixels" if size else "too many pixels"
    return Rejected(
        "too_many_pixels",
        f"image declares {declared}; the limit is {limits.max_pixels:,}; downscale it "
        "(a digit needs a few hundred pixels a side)",
    )


def _load(image: Image.Image) -> None:
    """Decode the pixels (JPEGs straight at a reduced size), refusing cut or corrupt data."""
    if image.format in ("JPEG", "MPO"):
        image.draft(None, (WORK_SIDE, WORK_SIDE))
    try:
        image.load()
    except MemoryError:
        raise
    except Exception as exc:  # decoders raise OSError, SyntaxError, ValueError, struct.error...
        raise Rejected(
            "truncated_image",
            f"the {image.format} data ends early or is corrupt ({exc}); re-export the picture "
            "and send the complete file",
        ) from exc


def _orientation(image: Image.Image) -> int:
    """EXIF orientation (1 = upright); a broken EXIF block is ignored, not fatal."""
    try:
        return int(image.getexif().get(_ORIENTATION_TAG, 1))
    except Exception:
        return 1


def _working_mode(image: Image.Image) -> tuple[Image.Image, float | None]:
    """Any mode -> L, LA (if anything may be transparent), I or F, plus its full-scale value."""
    mode = image.mode
    if mode.startswith("I;16") or mode == "I":
        return image.convert("I"), 65535.0
    if mode == "F":
        return image, None
    if mode == "LAB":  # CIELab TIFFs: the L* channel is the lightness
        return image.getchannel("L"), 255.0
    if mode in ("LA", "La"):
        return image.convert("LA"), 255.0
    if mode in ("RGBA", "RGBa", "PA") or "transparency" in image.info:
        return image.convert("RGBA").convert("LA"), 255.0
    return image.convert("L"), 255.0


def _flatten_alpha(grey: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Composite onto the background the drawing implies, so the strokes stay visible.

    Canvas exports often keep all pixels one colour and draw with alpha alone, and their
    transparent pixels may be black or white. So when the opaque pixels are a minority (the
    strokes), the background is the opposite brightness of their mean; when they are the majority
    (an opaque sheet with transparent margins), it is the sheet's own median grey.
    """
    if alpha.min() >= 1.0:
        return grey
    weight = float(alpha.sum())
    opaque = alpha > 0.5
    if opaque.mean() > 0.5:
        background = float(np.median(grey[opaque]))
    elif weight > 0:
        background = 1.0 if float((alpha * grey).sum()) / weight < 0.5 else 0.0
    else:
        background = 0.0
    return alpha * grey + (1.0 - alpha) * background
