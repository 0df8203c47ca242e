"""The ceiling: the packaged Keras model called directly, with no HTTP, JSON or queue in the way.

Runs in its own process (`python -m bench.inprocess --tag mnist-cnn:v5-...`), after the servers have
stopped, and prints one JSON line: the numbers the served figures are compared against.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from bench.payloads import digits


def measure(tag: str, batch: int, reps: int, threads: int) -> dict[str, float]:
    """Median wall time of `model(x, training=False)` on a uint8 batch and on a single image."""
    import tensorflow as tf

    # The same thread budget as one service worker (DIGIT_TF_THREADS), so the ceiling compares.
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import bentoml
    import keras

    model = keras.saving.load_model(bentoml.models.get(tag).path_of("model.keras"), compile=False)
    x, y = digits(batch)
    x = x[..., None]

    def timed(inputs: np.ndarray) -> float:
        t0 = time.perf_counter()
        np.asarray(model(inputs, training=False))  # as the service does: result in numpy
        return time.perf_counter() - t0

    for _ in range(3):
        timed(x)
    batch_s = statistics.median(timed(x) for _ in range(reps))
    accuracy = float((np.asarray(model(x, training=False)).argmax(1) == y).mean())
    one = x[:1]
    for _ in range(20):
        timed(one)
    singles = sorted(timed(one) for _ in range(200))
    return {
        "batch": batch,
        "batch_ms": batch_s * 1e3,
        "batch_images_per_s": batch / batch_s,
        "single_ms_p50": statistics.median(singles) * 1e3,
        "single_ms_p99": singles[int(0.99 * len(singles)) - 1] * 1e3,
        "single_images_per_s": 1 / statistics.median(singles),
        "accuracy_on_batch": accuracy,
        "threads": threads,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tag", required=True, help="BentoML model tag, e.g. mnist-cnn:latest")
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("DIGIT_TF_THREADS", 2)))
    args = parser.parse_args()
    print(json.dumps(measure(args.tag, args.batch, args.reps, args.threads)), flush=True)


if __name__ == "__main__":
    main()
