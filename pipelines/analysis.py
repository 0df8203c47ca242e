"""Where the model fails and how far to trust its confidence: slices, calibration, figures.

Pure functions over arrays, so the evaluate stage stays thin and each number can be checked by
hand in a unit test. Slices are computed from the images themselves (no extra labels needed), with
thresholds taken from the quantiles of the set being scored and reported alongside the results.
"""

from __future__ import annotations

import math

import numpy as np
from matplotlib.figure import Figure

from common.image import SIDE, STROKE_LEVEL, extent, planes

CENTRE = ((SIDE - 1) / 2, (SIDE - 1) / 2)  # the geometric centre, in (row, col) pixel coordinates


def ink_area(images: np.ndarray) -> np.ndarray:
    """Pixels of stroke per image: a proxy for stroke thickness."""
    return (planes(images) > STROKE_LEVEL).sum(axis=(1, 2))


def bbox_area(images: np.ndarray) -> np.ndarray:
    """Area of the ink's bounding box per image (0 for a blank image): a proxy for digit size."""
    ink = planes(images) > STROKE_LEVEL
    return extent(ink.any(axis=2)) * extent(ink.any(axis=1))


def centre_offset(images: np.ndarray) -> np.ndarray:
    """Distance in pixels of the ink's centre of mass from the image centre (0 for a blank)."""
    ink = (planes(images) > STROKE_LEVEL).astype(np.float64)
    mass = ink.sum(axis=(1, 2))
    safe = np.where(mass > 0, mass, 1.0)
    r = np.arange(ink.shape[1], dtype=np.float64)
    c = np.arange(ink.shape[2], dtype=np.float64)
    row = (ink.sum(axis=2) @ r) / safe
    col = (ink.sum(axis=1) @ c) / safe
    dist = np.hypot(row - CENTRE[0], col - CENTRE[1])
    return np.where(mass > 0, dist, 0.0)


def slice_thresholds(images: np.ndarray) -> dict[str, float]:
    """Quantile cut-offs of the image features that define the slices."""
    ink, box, off = ink_area(images), bbox_area(images), centre_offset(images)
    return {
        "ink_area_q25": float(np.quantile(ink, 0.25)),
        "ink_area_q75": float(np.quantile(ink, 0.75)),
        "bbox_area_q25": float(np.quantile(box, 0.25)),
        "bbox_area_q75": float(np.quantile(box, 0.75)),
        "centre_offset_q90": float(np.quantile(off, 0.90)),
    }


def slice_masks(images: np.ndarray, thresholds: dict[str, float]) -> dict[str, np.ndarray]:
    """Boolean membership of each slice: thin/thick strokes, small/large digits, off-centre."""
    ink, box, off = ink_area(images), bbox_area(images), centre_offset(images)
    return {
        "thin": ink <= thresholds["ink_area_q25"],
        "thick": ink >= thresholds["ink_area_q75"],
        "small": box <= thresholds["bbox_area_q25"],
        "large": box >= thresholds["bbox_area_q75"],
        "off_centre": off >= thresholds["centre_offset_q90"],
    }


def slice_accuracy(
    images: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray
) -> tuple[dict[str, dict], dict[str, float]]:
    """({slice: {"accuracy", "n"}}, thresholds); quantile cut-offs make no slice empty."""
    thresholds = slice_thresholds(images)
    correct = np.asarray(y_true) == np.asarray(y_pred)
    slices = {
        name: {"accuracy": float(correct[mask].mean()), "n": int(mask.sum())}
        for name, mask in slice_masks(images, thresholds).items()
    }
    return slices, thresholds


def reliability_table(confidence: np.ndarray, correct: np.ndarray, bins: int) -> list[dict]:
    """Per equal-width bin (lower, upper]: count, mean confidence and accuracy (None if empty).

    The first bin also takes confidence 0, so every prediction lands in exactly one bin.
    """
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.digitize(confidence, edges[1:-1], right=True)
    table = []
    for b in range(bins):
        mask = which == b
        n = int(mask.sum())
        table.append(
            {
                "lower": float(edges[b]),
                "upper": float(edges[b + 1]),
                "count": n,
                "confidence": float(confidence[mask].mean()) if n else None,
                "accuracy": float(correct[mask].mean()) if n else None,
            }
        )
    return table


def expected_calibration_error(table: list[dict]) -> float:
    """ECE: the count-weighted mean gap between accuracy and confidence over the bins."""
    total = sum(row["count"] for row in table)
    if total == 0:
        return 0.0
    return float(
        sum(
            row["count"] * abs(row["accuracy"] - row["confidence"]) for row in table if row["count"]
        )
        / total
    )


def reliability_figure(table: list[dict], ece: float) -> Figure:
    """Accuracy against confidence per bin, with the diagonal a calibrated model would follow."""
    fig = Figure(figsize=(5, 5), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
    rows = [r for r in table if r["count"]]
    ax.bar(
        [r["lower"] for r in rows],
        [r["accuracy"] for r in rows],
        width=[r["upper"] - r["lower"] for r in rows],
        align="edge",
        edgecolor="black",
        alpha=0.7,
        label="accuracy in bin",
    )
    ax.plot(
        [r["confidence"] for r in rows],
        [r["accuracy"] for r in rows],
        "o",
        color="tab:red",
        label="(mean confidence, accuracy)",
    )
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy")
    ax.set_title(f"Reliability on the test set: ECE {ece:.4f}")
    ax.legend(loc="upper left")
    return fig


def gallery_figure(
    images: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray, limit: int
) -> tuple[Figure, int]:
    """(a grid of up to `limit` misclassified digits titled "true→pred", how many it shows)."""
    wrong = np.flatnonzero(np.asarray(y_true) != np.asarray(y_pred))[:limit]
    cols = 10
    rows = max(1, math.ceil(len(wrong) / cols))
    fig = Figure(figsize=(cols * 1.0, rows * 1.15 + 0.4), dpi=80, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    digits = planes(images)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, wrong, strict=False):
        ax.imshow(digits[i], cmap="gray", vmin=0, vmax=255)
        ax.set_title(f"{int(y_true[i])}→{int(y_pred[i])}", fontsize=9)
    total = int((np.asarray(y_true) != np.asarray(y_pred)).sum())
    fig.suptitle(
        f"Misclassified test digits (true→predicted): {len(wrong)} of {total} shown"
        if total
        else "No misclassified test digits"
    )
    return fig, len(wrong)
