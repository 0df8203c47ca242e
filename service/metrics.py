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
CONFIDENCE_BUCKETS = (0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 1.0)
SECONDS_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
CONFIDENCE = Histogram(
    "digit_prediction_confidence",
    "Probability of the predicted digit (a falling share near 1 is an early sign of drift)",
    ["model_version"],
    buckets=CONFIDENCE_BUCKETS,
)
INFERENCE_SECONDS = Histogram(
    "digit_inference_seconds",
    "Time of one model call (one batch)",
    buckets=SECONDS_BUCKETS,
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
    "1 while a worker serves this model in this role (champion, challenger); 0 once swapped out",
    ["model_name", "model_version", "run_id", "bento_tag", "role"],
    multiprocess_mode="max",
)
MODEL_RUNTIME = Gauge(
    "digit_model_runtime",
    "1 while a worker computes this model's answers on this runtime (keras, openvino-fp32, "
    "openvino-bf16, openvino-int8: DIGIT_RUNTIME); 0 once swapped out",
    ["model_version", "role", "runtime"],
    multiprocess_mode="max",
)
RELOADS = Counter(
    "digit_model_reloads",
    "Newly packaged models the watcher found, by role and outcome (swapped, load_failed, "
    "check_failed: not swapped in, the old model still serves)",
    ["role", "outcome"],
)
for _role in ("champion", "challenger"):  # at 0 from the start, so the first failure is an increase
    for _outcome in ("swapped", "load_failed", "check_failed"):
        RELOADS.labels(_role, _outcome)
# Drift series carry the version whose inputs (live) or training data (reference) they describe,
# so monitoring/rules.yml compares each model's inputs with its own reference across a swap.
INK_MEAN = Histogram(
    "digit_input_ink_mean",
    "Mean pixel intensity (0-1) of the 28×28 the model saw; MNIST's training mean is about 0.13",
    ["model_version"],
    buckets=INK_MEAN_BUCKETS,
)
INK_BOX = Histogram(
    "digit_input_ink_box_pixels",
    "Longer side of the ink's bounding box in the 28×28 the model saw; MNIST's is about 20",
    ["model_version"],
    buckets=INK_BOX_BUCKETS,
)
SHADOW = Counter(
    "digit_shadow_comparisons",
    "Images the challenger also answered in the shadow, by the champion's digit and whether the "
    "challenger agreed (yes, no)",
    ["digit", "agree", "champion_version", "challenger_version"],
)
SHADOW_CONFIDENCE = Histogram(
    "digit_shadow_confidence",
    "The challenger's probability of its own answer, in the shadow",
    ["challenger_version"],
    buckets=CONFIDENCE_BUCKETS,
)
SHADOW_SECONDS = Histogram(
    "digit_shadow_inference_seconds",
    "Time of one challenger call in the shadow (off the reply path)",
    buckets=SECONDS_BUCKETS,
)
SHADOW_SKIPPED = Counter(
    "digit_shadow_skipped",
    "Images not shadowed, by reason (backlog: the challenger was too far behind)",
    ["reason"],
)
# The training reference of the two histograms above (prepare's stats.json, packaged with the
# model): the cumulative share of training images in each bucket, `le` spelled exactly as the
# live histograms spell it, so monitoring/rules.yml can subtract one from the other per bucket.
REFERENCE_INK_MEAN = Gauge(
    "digit_reference_ink_mean_share",
    "Training reference: share of training images with ink mean <= le (cumulative)",
    ["le", "model_version"],
    multiprocess_mode="max",
)
REFERENCE_INK_BOX = Gauge(
    "digit_reference_ink_box_pixels_share",
    "Training reference: share of training images with ink box size <= le (cumulative)",
    ["le", "model_version"],
    multiprocess_mode="max",
)
REFERENCE_IMAGES = Gauge(
    "digit_reference_images",
    "Training images behind the drift reference (0: packaged without one)",
    ["model_version"],
    multiprocess_mode="max",
)
# The feedback loop (service/feedback.py): what people said about the answers, so monitoring can
# compare the live accuracy of each version with the test accuracy its card states.
FEEDBACK = Counter(
    "digit_feedback",
    "Feedback rows stored, by the digit answered, the person's label ('none': not sure), model "
    "version and whether the answer was right (yes, no; unknown when not sure)",
    ["answered", "label", "model_version", "correct"],
)
FEEDBACK_REVIEWS = Counter(
    "digit_feedback_reviews",
    "Helpers' labels of queued feedback rows, by label and the version that answered",
    ["label", "model_version"],
)
MODEL_TEST_ACCURACY = Gauge(
    "digit_model_test_accuracy",
    "The served model's test accuracy as its card states it (champion and challenger)",
    ["model_version"],
    multiprocess_mode="max",
)
FEEDBACK_ROWS = Gauge(
    "digit_feedback_rows",
    "Rows in the feedback table when a worker opened it, then after each insert it made",
    multiprocess_mode="max",
)
FEEDBACK_MAX_ROWS = Gauge(
    "digit_feedback_max_rows",
    "Rows the feedback table may hold (DIGIT_FEEDBACK_MAX_ROWS), then 507",
    multiprocess_mode="max",
)


def observe_batch(batch: Batch) -> None:
    """Count one model call and what it predicted and saw (uint8 (n, 28, 28) → (n, 10)), under
    the version of the model that answered it (batch.model).

    Runs on the batcher's model thread: one vectorised pass per batch, rows labelled by endpoint.
    """
    model_version = batch.model.version
    BATCH_SIZE.observe(len(batch.images))
    INFERENCE_SECONDS.observe(batch.seconds)
    digits = batch.outputs.argmax(axis=1)
    for (digit, endpoint), count in Tally(zip(digits.tolist(), batch.tags, strict=True)).items():
        PREDICTIONS.labels(str(digit), model_version, endpoint).inc(count)
    confidence = CONFIDENCE.labels(model_version)
    for p in batch.outputs[np.arange(len(digits)), digits].tolist():
        confidence.observe(p)
    means, boxes = ink_stats(batch.images)
    ink_mean, ink_box = INK_MEAN.labels(model_version), INK_BOX.labels(model_version)
    for mean, box in zip(means.tolist(), boxes.tolist(), strict=True):
        ink_mean.observe(mean)
        ink_box.observe(box)


def observe_shadow(
    champion: np.ndarray, challenger: np.ndarray, versions: tuple[str, str], seconds: float
) -> None:
    """Count one shadow call: the two models' probabilities (n, 10) for the same images."""
    SHADOW_SECONDS.observe(seconds)
    ours, theirs = champion.argmax(axis=1), challenger.argmax(axis=1)
    agree = np.where(ours == theirs, "yes", "no")
    for (digit, same), count in Tally(zip(ours.tolist(), agree.tolist(), strict=True)).items():
        SHADOW.labels(str(digit), same, *versions).inc(count)
    confidence = SHADOW_CONFIDENCE.labels(versions[1])
    for p in challenger[np.arange(len(theirs)), theirs].tolist():
        confidence.observe(p)


def shadow_skipped(images: int, reason: str = "backlog") -> None:
    SHADOW_SKIPPED.labels(reason).inc(images)


def export_reference(reference: DriftReference, model_version: str) -> None:
    """Publish the drift reference packaged in a model's card as gauges, under its version."""
    for gauge, histogram in (
        (REFERENCE_INK_MEAN, reference.ink_mean),
        (REFERENCE_INK_BOX, reference.ink_box_pixels),
    ):
        for le, share in cumulative_shares(histogram):
            gauge.labels(floatToGoString(le), model_version).set(share)
    REFERENCE_IMAGES.labels(model_version).set(reference.n_images)


def serving(info, role: str, on: bool = True) -> None:
    """Say which model this worker serves in `role` (digit_model_info 1), or no longer (0)."""
    MODEL_INFO.labels(info.name, info.version, info.run_id, info.bento_tag, role).set(int(on))
    MODEL_RUNTIME.labels(info.version, role, info.runtime).set(int(on))


def model_accuracy(info) -> None:
    """Publish a served model's official test accuracy, under its version."""
    MODEL_TEST_ACCURACY.labels(info.version).set(info.test_accuracy)


def feedback_stored(answered: int, label: int | None, model_version: str, rows: int) -> None:
    """Count one stored feedback row; `rows`: the table's rows after it."""
    correct = "unknown" if label is None else ("yes" if label == answered else "no")
    label_name = "none" if label is None else str(label)
    FEEDBACK.labels(str(answered), label_name, model_version, correct).inc()
    FEEDBACK_ROWS.set(rows)


def feedback_table(rows: int | None, max_rows: int) -> None:
    """The table's size (None: not known yet) and its limit, at start."""
    FEEDBACK_MAX_ROWS.set(max_rows)
    if rows is not None:
        FEEDBACK_ROWS.set(rows)


def feedback_reviewed(label: int, model_version: str) -> None:
    FEEDBACK_REVIEWS.labels(str(label), model_version).inc()


def reload(role: str, outcome: str) -> None:
    RELOADS.labels(role, outcome).inc()


def reject(reason: str, endpoint: str) -> None:
    REJECTIONS.labels(reason, endpoint).inc()
