"""The service's own Prometheus metrics, beside BentoML's request metrics on the same `/metrics`.

Module-level `prometheus_client` objects: BentoML sets `PROMETHEUS_MULTIPROC_DIR` before the service
module is imported, so every worker writes to files its `/metrics` endpoint merges. Names start with
`digit_`; monitoring/ (alerts, dashboard) refers to them, so rename them there too.
"""

from __future__ import annotations

import numpy as np
from prometheus_client import Counter, Gauge, Histogram

from service.preprocess import ink_stats

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
    buckets=(0.02, 0.05, 0.08, 0.1, 0.12, 0.14, 0.16, 0.18, 0.2, 0.25, 0.3, 0.4, 0.6, 1.0),
)
INK_BOX = Histogram(
    "digit_input_ink_box_pixels",
    "Longer side of the ink's bounding box in the 28×28 the model saw; MNIST's is about 20",
    buckets=(2, 6, 10, 14, 16, 18, 19, 20, 21, 22, 24, 26, 28),
)


def observe_batch(size: int, seconds: float) -> None:
    BATCH_SIZE.observe(size)
    INFERENCE_SECONDS.observe(seconds)


def observe_predictions(
    images: np.ndarray, probs: np.ndarray, model_version: str, endpoint: str
) -> None:
    """Count what was predicted and what came in (uint8 (n, 28, 28), probabilities (n, 10))."""
    digits = probs.argmax(axis=1)
    for digit, count in zip(*np.unique(digits, return_counts=True), strict=True):
        PREDICTIONS.labels(str(digit), model_version, endpoint).inc(int(count))
    confidence = CONFIDENCE.labels(model_version)
    for p in probs[np.arange(len(digits)), digits]:
        confidence.observe(float(p))
    means, boxes = ink_stats(images)
    for mean, box in zip(means, boxes, strict=True):
        INK_MEAN.observe(float(mean))
        INK_BOX.observe(float(box))


def reject(reason: str, endpoint: str) -> None:
    REJECTIONS.labels(reason, endpoint).inc()
