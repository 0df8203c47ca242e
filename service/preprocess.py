"""Turn what clients send (pixel arrays, image files, canvas data URLs) into MNIST-style digits.

The model was trained on MNIST: white ink on black, the digit's longer side fit to 20 px and its
centre of mass put at the centre of a 28×28 field. Uploads look nothing like that (dark pen on
light paper, anywhere on a large canvas, JPEG noise, transparency, rotated phone photos), so every
image path of the service comes through here and redoes MNIST's own normalisation. Numpy and
Pillow only, no model: the web page's backend and the tests import it cheaply. Bad input only ever
raises `Rejected`, which carries a metric label, an HTTP status and a message saying what to fix.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
from dataclasses import dataclass

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

from pipelines import drift

# A truncated upload must be refused, not decoded with a grey band where the rest should be.
ImageFile.LOAD_TRUNCATED_IMAGES = False

SIDE = 28  # the MNIST field
BOX = 20  # MNIST fits the digit's longer side to 20 px
CENTRE = 14.0  # index coordinate (row and column) of the ink's centre of mass in MNIST
SCALES = ("0-255", "0-1")

# Formats Pillow may try; the rest (EPS, PSD, ICO...) are attack surface a digit upload never needs.
# The JPEG opener also returns the MPO files many phones write.
FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
FORMAT_NAMES = "PNG, JPEG, WebP, GIF, BMP or TIFF"
WORK_SIDE = 1024  # larger pictures are decoded downscaled: the digit ends up 20 px anyway

BORDER = 0.02  # the ring that samples the background, as a share of the shorter side
MIN_MARGIN = 0.08  # grey levels this close to the background are background (paper, JPEG noise)
NOISE_K = 4.0  # ... or this many noise sigmas of the border, if the background is noisier
MIN_INK = 0.06  # the darkest (or lightest) ink must stand this far beyond the margin
MIN_INK_PIXELS = 3.0  # and hold at least this much ink (in full-intensity pixels)
MIN_INK_SHARE = 2e-4  # or this share of the picture, if larger: noise blotches hold less
SPECK_MASS = 0.02  # a separate blob with less than this share of the ink is a speck, not digit

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


class Rejected(ValueError):
    """Bad input the caller can fix: a metric label (reason), an HTTP status and a message.

    str(exc) is the message, written to tell the client what to change.
    """

    def __init__(self, reason: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.status = status

    def __reduce__(self) -> tuple[type[Rejected], tuple[str, str, int]]:
        # the default would rebuild it from `message` alone and fail (e.g. across processes)
        return (type(self), (self.reason, self.message, self.status))


@dataclass(frozen=True)
class Limits:
    """Caps applied before any costly work, so a hostile upload costs little."""

    max_bytes: int = 5 * 1024 * 1024  # encoded upload size
    max_pixels: int = 40_000_000  # declared width*height; refuses decompression bombs
    max_batch: int = 1024  # items in one batch request (enforced by the caller)


DEFAULT_LIMITS = Limits()


# --- pixel arrays -------------------------------------------------------------------------------


def pixels(values: object, scale: str = "0-255") -> np.ndarray:
    """JSON-ish nested lists or an array -> uint8 (n, 28, 28).

    Accepts one image (28, 28) or a batch (n, 28, 28), each optionally with a trailing channel of 1.
    scale "0-255" takes values 0..255, "0-1" takes 0..1; fractions are rounded half up. The values
    are taken as they are (no inversion, no centring): array clients are expected to send MNIST.
    """
    if scale not in SCALES:
        raise Rejected("bad_scale", f"scale must be '0-255' or '0-1' (got {scale!r})")
    array = _batch(_numbers(values))
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


def _batch(array: np.ndarray) -> np.ndarray:
    """(28,28), (28,28,1), (n,28,28) or (n,28,28,1) -> (n, 28, 28)."""
    shape = array.shape
    if array.ndim in (3, 4) and shape[-1] == 1 and shape[-3:-1] == (SIDE, SIDE):
        array = array[..., 0]
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or array.shape[1:] != (SIDE, SIDE):
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


# --- encoded pictures ---------------------------------------------------------------------------


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
            413,
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
        413,
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


# --- MNIST normalisation ------------------------------------------------------------------------


def to_mnist(grey: np.ndarray) -> np.ndarray:
    """Grey (H, W) in 0..1 -> uint8 (28, 28) made the way MNIST was: bright ink on black, the
    longer side of the ink's box fit to 20 px (aspect kept), centre of mass at (14, 14)."""
    ink = _ink(_as_grey(grey))
    rows, cols = _ink_box(ink)
    digit = _fit(ink[rows, cols])
    return np.floor(_centre(digit) * 255.0 + 0.5).astype(np.uint8)


def _as_grey(grey: object) -> np.ndarray:
    try:
        array = np.asarray(grey, dtype=np.float32)
    except (ValueError, TypeError) as exc:
        raise Rejected("not_numbers", "grey image must be a 2-D array of numbers") from exc
    if array.ndim != 2 or array.size == 0:
        raise Rejected(
            "wrong_shape",
            f"grey image must be a non-empty 2-D array (H, W) (got shape {array.shape})",
        )
    if not np.isfinite(array).all():
        raise Rejected("not_finite", "grey image must hold finite numbers (got NaN or infinity)")
    return np.clip(array, 0.0, 1.0)


def _ink(grey: np.ndarray) -> np.ndarray:
    """Grey -> ink in 0..1 (bright on dark), background and its noise removed, contrast stretched.

    The background is a plane fitted to the border, so a gradient of light across a photographed
    page is removed too; the ink is whichever side of it (darker or lighter) holds more mass.
    """
    background, noise = _background(grey)
    residual = grey - background
    margin = max(MIN_MARGIN, NOISE_K * noise)
    light = np.clip(residual - margin, 0.0, None)
    dark = np.clip(-residual - margin, 0.0, None)
    ink = dark if dark.sum() > light.sum() else light
    present = ink[ink > 0]
    peak = float(np.percentile(present, 99)) if present.size else 0.0
    if peak < MIN_INK:
        raise _blank()
    ink = np.clip(ink / peak, 0.0, 1.0)
    if ink.sum() < max(MIN_INK_PIXELS, MIN_INK_SHARE * ink.size):
        raise _blank()
    return ink


def _blank() -> Rejected:
    return Rejected(
        "blank_image",
        "no digit found: the image is blank or its contrast is too low; draw the digit clearly "
        "darker (or lighter) than the background",
        422,  # a well-formed picture, but nothing in it to classify
    )


def _background(grey: np.ndarray) -> tuple[np.ndarray, float]:
    """Plane a + b·y + c·x fitted to the border ring (outliers dropped), and the ring's noise."""
    height, width = grey.shape
    ring = np.zeros(grey.shape, dtype=bool)
    t = max(1, round(BORDER * min(height, width)))
    ring[:t] = ring[-t:] = True
    ring[:, :t] = ring[:, -t:] = True
    ys, xs = np.nonzero(ring)
    values = grey[ring].astype(np.float64)
    design = np.column_stack([np.ones_like(values), ys / height - 0.5, xs / width - 0.5])
    keep = np.ones(values.size, dtype=bool)
    for _ in range(3):  # fit, drop what the digit or a smudge put on the border, refit
        coef = np.linalg.lstsq(design[keep], values[keep], rcond=None)[0]
        residual = np.abs(values - design @ coef)
        noise = 1.4826 * float(np.median(residual[keep]))
        keep = residual <= max(3.0 * noise, 0.02)
        if keep.sum() < 3:
            break
    rows = coef[0] + coef[1] * (np.arange(height) / height - 0.5)
    cols = coef[2] * (np.arange(width) / width - 0.5)
    return (rows[:, None] + cols[None, :]).astype(np.float32), noise


def _ink_box(ink: np.ndarray) -> tuple[slice, slice]:
    """Bounding box of the digit's ink, ignoring separate specks (dust, JPEG blotches)."""
    rows, cols = slice(None), slice(None)
    for _ in range(2):
        rows = _span(ink[:, cols].sum(axis=1))
        cols = _span(ink[rows].sum(axis=0))
    return rows, cols


def _span(profile: np.ndarray) -> slice:
    """Slice over the runs of a projection profile that hold a real share of the ink."""
    edges = np.diff(np.concatenate(([0], (profile > 0).astype(np.int8), [0])))
    starts, stops = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    mass = np.add.reduceat(profile, starts)
    keep = (mass >= SPECK_MASS * mass.sum()) | (mass == mass.max())
    return slice(int(starts[keep][0]), int(stops[keep][-1]))


def _fit(patch: np.ndarray) -> np.ndarray:
    """Resize (anti-aliased) so the longer side is BOX px, keeping the aspect ratio."""
    height, width = patch.shape
    longer = max(height, width)
    size = (max(1, round(width * BOX / longer)), max(1, round(height * BOX / longer)))
    image = Image.fromarray(patch.astype(np.float32))
    resized = image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)


def _centre(digit: np.ndarray) -> np.ndarray:
    """Paste into a black 28×28 field, shifted (whole pixels) so the centre of mass is at 14."""
    mass = float(digit.sum())
    if mass <= 0:
        raise _blank()
    height, width = digit.shape
    cy = float(digit.sum(axis=1) @ np.arange(height)) / mass
    cx = float(digit.sum(axis=0) @ np.arange(width)) / mass
    top = min(max(math.floor(CENTRE - cy + 0.5), 0), SIDE - height)
    left = min(max(math.floor(CENTRE - cx + 0.5), 0), SIDE - width)
    field = np.zeros((SIDE, SIDE), dtype=np.float32)
    field[top : top + height, left : left + width] = digit
    return field


def from_image_bytes(data: bytes, limits: Limits = DEFAULT_LIMITS) -> np.ndarray:
    """Encoded picture bytes -> uint8 (28, 28) MNIST-style digit."""
    return to_mnist(decode_image(data, limits))


def from_data_url(url: str, limits: Limits = DEFAULT_LIMITS) -> np.ndarray:
    """'data:image/png;base64,...' (HTMLCanvasElement.toDataURL()) -> uint8 (28, 28)."""
    return from_image_bytes(_data_url_bytes(url, limits), limits)


def _data_url_bytes(url: object, limits: Limits) -> bytes:
    """The decoded payload of a base64 image data URL; its length is checked before decoding."""
    example = "data:image/png;base64,iVBORw0..."
    if not isinstance(url, str):
        raise Rejected("bad_data_url", f"image must be a data URL string like {example}")
    longest = limits.max_bytes * 4 // 3 * 102 // 100 + 1024  # base64, line breaks, header
    if len(url) > longest:
        raise Rejected(
            "too_large",
            f"data URL is {len(url):,} characters, more than a {limits.max_bytes:,}-byte image "
            "encodes to; send a smaller or more compressed picture",
            413,
        )
    header, comma, payload = url.partition(",")
    params = [part.strip().lower() for part in header.split(";")]
    if not comma or not params[0].startswith("data:"):
        raise Rejected("bad_data_url", f"image must be a data URL like {example}")
    if not params[0].removeprefix("data:").startswith("image/") or "base64" not in params[1:]:
        raise Rejected(
            "bad_data_url",
            f"data URL must carry base64 image content (got {header[:60]!r}); send {example}",
        )
    payload = "".join(payload.split())
    payload += "=" * (-len(payload) % 4)
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise Rejected(
            "bad_data_url",
            "data URL's base64 is invalid (characters outside A-Z a-z 0-9 + / =, or cut short); "
            "send the string exactly as toDataURL() returns it",
        ) from exc


# --- monitoring ---------------------------------------------------------------------------------


def ink_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (n, 28, 28) or (28, 28) -> (mean intensity in 0..1, ink box size in px) per image.

    `pipelines.drift.ink_stats` (the one implementation, shared with prepare's drift reference);
    a wrong shape is refused as `wrong_shape`.
    """
    try:
        return drift.ink_stats(images)
    except ValueError as exc:
        raise Rejected("wrong_shape", str(exc)) from None
