"""MNIST's own normalisation of a grey picture: how the original digits were made.

The model was trained on MNIST: white ink on black, the digit's longer side fit to 20 px and its
centre of mass put at the centre of a 28×28 field. Uploads look nothing like that (dark pen on
light paper, anywhere on a large canvas, JPEG noise, a photographed page's uneven light), so every
picture path redoes that normalisation here: find the background, keep the ink, crop, fit, centre.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from common.image import SIDE
from service.refusals import Rejected

BOX = 20  # MNIST fits the digit's longer side to 20 px
CENTRE = 14.0  # index coordinate (row and column) of the ink's centre of mass in MNIST
BORDER = 0.02  # the ring that samples the background, as a share of the shorter side
MIN_MARGIN = 0.08  # grey levels this close to the background are background (paper, JPEG noise)
NOISE_K = 4.0  # ... or this many noise sigmas of the border, if the background is noisier
MIN_INK = 0.06  # the darkest (or lightest) ink must stand this far beyond the margin
MIN_INK_PIXELS = 3.0  # and hold at least this much ink (in full-intensity pixels)
MIN_INK_SHARE = 2e-4  # or this share of the picture, if larger: noise blotches hold less
SPECK_MASS = 0.02  # a separate blob with less than this share of the ink is a speck, not digit


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
