"""Render an MNIST digit the way people actually upload one: canvases, photos, odd file formats.

Tests feed these bytes through `service/inputs` and expect the original 28×28 digit back, so
each style exercises one thing uploads do to a digit: dark ink on light, a large canvas with the
digit off-centre, lossy compression, transparency, 16-bit grey, palettes, CMYK, a photographed page
with uneven light and an EXIF rotation. Deterministic for a given seed.
"""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

STYLES = (
    "canvas_png",
    "jpeg75",
    "transparent_png",
    "white_on_transparent_png",
    "palette_transparent_png",
    "sheet_la_png",
    "grey16_tiff",
    "palette_gif",
    "webp",
    "bmp",
    "cmyk_jpeg",
    "photo_jpeg",
)

_EXIF_ORIENTATION = 0x0112


def render(x28: np.ndarray, style: str, *, seed: int = 0) -> bytes:
    """A uint8 28×28 MNIST digit (white on black) -> the encoded bytes of one upload style."""
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; one of {STYLES}")
    rng = np.random.default_rng(seed)
    if style == "photo_jpeg":
        return _photo(x28, rng)
    if style == "grey16_tiff":
        ink = place(x28, 200, rng, scale=(4.0, 6.0))
        level = 3000 + ink * 57000  # light ink on a dark, not black, background
        return _save(Image.fromarray(np.rint(level).astype(np.uint16)), "TIFF")
    ink = place(x28, 280, rng)
    if style == "transparent_png":  # one colour everywhere, the drawing is in alpha alone
        return _save(_rgba(ink, (0, 0, 0)), "PNG")
    if style == "white_on_transparent_png":
        return _save(_rgba(ink, (255, 255, 255)), "PNG")
    if style == "palette_transparent_png":
        return _palette_transparent(ink)
    if style == "sheet_la_png":
        return _sheet(ink)
    if style == "bmp":  # light on dark
        return _save(_grey_rgb(ink), "BMP")
    if style == "webp":  # blue ballpoint
        return _save(_coloured(ink, (20, 40, 160)), "WEBP", quality=80)
    paper = _grey_rgb(1.0 - ink)
    if style == "canvas_png":
        return _save(paper, "PNG")
    if style == "jpeg75":
        return _save(paper, "JPEG", quality=75)
    if style == "palette_gif":
        return _save(paper.quantize(colors=32), "GIF")
    return _save(paper.convert("CMYK"), "JPEG", quality=90)  # cmyk_jpeg


def data_url(data: bytes, mime: str = "image/png") -> str:
    """What HTMLCanvasElement.toDataURL() sends for these bytes."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def place(
    x28: np.ndarray, side: int, rng: np.random.Generator, scale: tuple[float, float] = (6.0, 8.5)
) -> np.ndarray:
    """Ink (0..1, float) on a side×side field: the digit enlarged and put off-centre."""
    field = np.zeros((side, side), dtype=np.float32)
    rows, cols = np.nonzero(x28)
    if not rows.size:  # a blank page
        return field
    crop = x28[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    factor = min(rng.uniform(*scale), (side - 30) / max(crop.shape))  # must fit the field
    size = (round(crop.shape[1] * factor), round(crop.shape[0] * factor))
    big = np.asarray(Image.fromarray(crop).resize(size, Image.Resampling.BICUBIC), np.float32)
    top, left = (_off_centre(side - n, rng) for n in big.shape)
    field[top : top + big.shape[0], left : left + big.shape[1]] = np.clip(big / 255.0, 0, 1)
    return field


def _off_centre(room: int, rng: np.random.Generator, pad: int = 12) -> int:
    """An offset in the first or last third of the free room (but pad px from the edge)."""
    third = max(pad + 1, room // 3)
    start = int(rng.integers(pad, third))
    return start if rng.random() < 0.5 else room - start


def _save(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _grey_rgb(level: np.ndarray) -> Image.Image:
    grey = np.rint(level * 255).astype(np.uint8)
    return Image.fromarray(np.repeat(grey[..., None], 3, axis=2))


def _coloured(ink: np.ndarray, colour: tuple[int, int, int]) -> Image.Image:
    rgb = 255.0 + ink[..., None] * (np.array(colour, np.float32) - 255.0)
    return Image.fromarray(np.rint(rgb).astype(np.uint8))


def _rgba(ink: np.ndarray, colour: tuple[int, int, int]) -> Image.Image:
    rgba = np.zeros((*ink.shape, 4), dtype=np.uint8)
    rgba[..., :3] = colour
    rgba[..., 3] = np.rint(ink * 255).astype(np.uint8)
    return Image.fromarray(rgba)


def _palette_transparent(ink: np.ndarray) -> bytes:
    """16 grey levels in a palette; entry 0 (white paper) is the transparent one."""
    index = np.rint(ink * 15).astype(np.uint8)
    image = Image.frombytes("P", index.shape[::-1], index.tobytes())
    levels = np.rint(255 - np.arange(16) * 17).astype(np.uint8)
    image.putpalette(np.repeat(levels[:, None], 3, axis=1).ravel().tolist())
    return _save(image, "PNG", transparency=0)


def _sheet(ink: np.ndarray) -> bytes:
    """An opaque white sheet with the digit on it, inside transparent black margins (LA)."""
    side = ink.shape[0]
    grey = np.rint((1.0 - ink) * 255).astype(np.uint8)
    alpha = np.zeros_like(grey)
    pad = side // 16
    alpha[pad:-pad, pad:-pad] = 255
    grey[alpha == 0] = 0
    return _save(Image.fromarray(np.stack([grey, alpha], axis=2), mode="LA"), "PNG")


def _photo(x28: np.ndarray, rng: np.random.Generator) -> bytes:
    """Dark ink on grey paper lit unevenly, slightly blurred and noisy, stored rotated with an
    EXIF orientation that says how to turn it upright (as phones do), JPEG."""
    height, width = 480, 640
    ink = np.zeros((height, width), np.float32)
    field = place(x28, height, rng, scale=(6.0, 9.0))
    left = int(rng.integers(0, width - height))
    ink[:, left : left + height] = field
    ys, xs = np.ogrid[0:height, 0:width]
    light = 0.62 + 0.18 * xs / width + 0.06 * ys / height  # brighter towards one corner
    grey = light * (1.0 - 0.75 * ink) * 255 + rng.normal(0, 4.0, (height, width))
    rgb = grey[..., None] * np.array([1.0, 0.97, 0.9], np.float32)  # warm paper, warm light
    image = Image.fromarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8))
    stored = image.transpose(Image.Transpose.ROTATE_90)  # orientation 6 turns it back
    exif = Image.Exif()
    exif[_EXIF_ORIENTATION] = 6
    return _save(stored, "JPEG", quality=85, exif=exif.tobytes())
