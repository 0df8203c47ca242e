"""The service's own Prometheus metrics, beside BentoML's request metrics on the same `/metrics`.

Module-level `prometheus_client` objects: BentoML sets `PROMETHEUS_MULTIPROC_DIR` before the service
module is imported, so every worker writes to files its `/metrics` endpoint merges. Names start with
`digit_`; monitoring/ (alerts, dashboard) refers to them, so rename them there too.
"""

from __future__ import annotations

from collections import Counter as Tally

import numpy as np
from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.utils import floatToGoString

from common.drift import (
    INK_BOX_BUCKETS,
    INK_MEAN_BUCKETS,
    DriftReference,
    cumulative_shares,
    ink_stats,
)
from service.batcher import Batch

PREDICTIONS = Counter(
    "digit_predictions",
    "Predictions served, by predicted digit, model version and endpoint",
    ["digit", "model_version", "endpoint"],
)
CONFIDENCE = Histogram(
    "digit_prediction_confidence",
    "Probability of the predicted digit (a falling share near 1 is an early sign of drift)",
    ["model_version"],
    buckets=(0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 1.0),
)
INFERENCE_SECONDS = Histogram(
    "digit_inference_seconds",
    "Time of one model call (one batch)",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0),
)
BATCH_SIZE = Histogram(
    "digit_batch_size",
    "Images per model call",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
)
REJECTIONS = Counter(
    "digit_rejections",
    "Requests refused with a 4xx or 503, by reason and endpoint",
    ["reason", "endpoint"],
)
MODEL_INFO = Gauge(
    "digit_model_info",
    "The model this worker serves (value 1; the labels carry the identity)",
    ["model_name", "model_version", "run_id", "bento_tag"],
    multiprocess_mode="max",
)
INK_MEAN = Histogram(
    "digit_input_ink_mean",
    "Mean pixel intensity (0-1) of the 28×28 the model saw; MNIST's training mean is about 0.13",
    buckets=INK_MEAN_BUCKETS,
)
INK_BOX = Histogram(
    "digit_input_ink_box_pixels",
    "Longer side of the ink's bounding box in the 28×28 the model saw; MNIST's is about 20",
    buckets=INK_BOX_BUCKETS,
)
# The training reference of the two histograms above (prepare's stats.json, packaged with the
# model): the cumulative share of training images in each bucket, `le` spelled exactly as the
# live histograms spell it, so monitoring/rules.yml can subtract one from the other per bucket.
REFERENCE_INK_MEAN = Gauge(
    "digit_reference_ink_mean_share",
    "Training reference: share of training images with ink mean <= le (cumulative)",
    ["le"],
    multiprocess_mode="max",
)
REFERENCE_INK_BOX = Gauge(
    "digit_reference_ink_box_pixels_share",
    "Training reference: share of training images with ink box size <= le (cumulative)",
    ["le"],
    multiprocess_mode="max",
)
REFERENCE_IMAGES = Gauge(
    "digit_reference_images",
    "Training images behind the drift reference (0: packaged without one)",
    multiprocess_mode="max",
)


def observe_batch(batch: Batch, model_version: str) -> None:
    """Count one model call and what it predicted and saw (uint8 (n, 28, 28) → (n, 10)).

    Runs on the batcher's model thread: one vectorised pass per batch, rows labelled by endpoint.
    """
    BATCH_SIZE.observe(len(batch.images))
    INFERENCE_SECONDS.observe(batch.seconds)
    digits = batch.outputs.argmax(axis=1)
    for (digit, endpoint), count in Tally(zip(digits.tolist(), batch.tags, strict=True)).items():
        PREDICTIONS.labels(str(digit), model_version, endpoint).inc(count)
    confidence = CONFIDENCE.labels(model_version)
    for p in batch.outputs[np.arange(len(digits)), digits].tolist():
        confidence.observe(p)
    means, boxes = ink_stats(batch.images)
    for mean, box in zip(means.tolist(), boxes.tolist(), strict=True):
        INK_MEAN.observe(mean)
        INK_BOX.observe(box)


def export_reference(reference: DriftReference) -> None:
    """Publish prepare's drift reference (packaged in the model card) as gauges."""
    for gauge, histogram in (
        (REFERENCE_INK_MEAN, reference.ink_mean),
        (REFERENCE_INK_BOX, reference.ink_box_pixels),
    ):
        for le, share in cumulative_shares(histogram):
            gauge.labels(floatToGoString(le)).set(share)
    REFERENCE_IMAGES.set(reference.n_images)


def serving(name: str, version: str, run_id: str, bento_tag: str) -> None:
    """Say which model this worker serves (digit_model_info = 1)."""
    MODEL_INFO.labels(name, version, run_id, bento_tag).set(1)


def reject(reason: str, endpoint: str) -> None:
    REJECTIONS.labels(reason, endpoint).inc()
