"""Input statistics for drift monitoring, shared by prepare (the reference) and the service.

One implementation of the per-image statistics (`ink_stats`) and one set of bucket edges: prepare
histograms the training split with them into `stats.json["drift_reference"]`, the package step
copies that reference into the model card, and the service exports its live inputs as Prometheus
histograms with the same edges, plus the reference as gauges, so a recording rule can compare the
two bucket by bucket (monitoring/rules.yml). Numpy and pydantic only: cheap to import.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict

from common.image import BOX_LEVEL, SHAPE, extent

# Upper bucket edges (Prometheus `le`, inclusive), the +Inf bucket implied. Changing them changes
# the reference in stats.json (rerun prepare, repackage) and the service's histograms together.
INK_MEAN_BUCKETS = (0.02, 0.05, 0.08, 0.1, 0.12, 0.14, 0.16, 0.18, 0.2, 0.25, 0.3, 0.4, 0.6, 1.0)
INK_BOX_BUCKETS = (2, 6, 10, 14, 16, 18, 19, 20, 21, 22, 24, 26, 28)
REFERENCE_KEY = "drift_reference"  # in data/prepared/stats.json and the model card


class Histogram(BaseModel):
    """Counts per bucket as Prometheus fills them: counts[i] for edges[i-1] < v <= edges[i]."""

    model_config = ConfigDict(frozen=True)
    buckets: list[float]
    counts: list[int]


class DriftReference(BaseModel):
    """The training split's ink statistics, what the live inputs are compared with."""

    model_config = ConfigDict(frozen=True)
    n_images: int
    ink_mean: Histogram
    ink_box_pixels: Histogram


def ink_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (n, 28, 28) or (28, 28) -> (mean intensity in 0..1, ink box size in px) per image.

    The box is the one around pixels above BOX_LEVEL; its size is max(height, width), 0 if blank.
    Cheap and vectorised: it feeds drift histograms on every model call. A wrong shape raises
    ValueError.
    """
    array = np.asarray(images)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or array.shape[1:] != SHAPE:
        raise ValueError(f"images must be shaped (n, 28, 28) or (28, 28) (got {np.shape(images)})")
    mean = array.mean(axis=(1, 2), dtype=np.float64) / 255.0
    ink = array > BOX_LEVEL
    size = np.maximum(extent(ink.any(axis=2)), extent(ink.any(axis=1)))
    return mean, size


def bucket_counts(values: np.ndarray, edges: Sequence[float]) -> list[int]:
    """Counts per bucket as Prometheus fills them (edges[i-1] < v <= edges[i]), +Inf last."""
    index = np.searchsorted(np.asarray(edges, dtype=np.float64), values, side="left")
    return [int(c) for c in np.bincount(index, minlength=len(edges) + 1)]


def reference(images: np.ndarray) -> dict:
    """The training reference (a DriftReference as plain JSON): per-bucket counts of ink mean and
    ink-box size over `images`."""
    means, boxes = ink_stats(images)
    return {
        "n_images": len(means),
        "ink_mean": {
            "buckets": list(INK_MEAN_BUCKETS),
            "counts": bucket_counts(means, INK_MEAN_BUCKETS),
        },
        "ink_box_pixels": {
            "buckets": list(INK_BOX_BUCKETS),
            "counts": bucket_counts(boxes, INK_BOX_BUCKETS),
        },
    }


def cumulative_shares(histogram: Histogram) -> list[tuple[float, float]]:
    """[(le, share of values <= le), ...] ending with (inf, 1.0)."""
    counts = np.asarray(histogram.counts, dtype=np.float64)
    total = counts.sum()
    shares = np.cumsum(counts) / total if total else np.zeros_like(counts)
    edges = [float(b) for b in histogram.buckets] + [float("inf")]
    return list(zip(edges, (float(s) for s in shares), strict=True))
