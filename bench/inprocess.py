"""The ceiling: the packaged model called the way the service calls it, with no HTTP in the way.

Runs in its own process (`python -m bench.inprocess --tag mnist-cnn:v5-...`), after the servers have
stopped, and prints one JSON line: the numbers the served figures are compared against. The call
is the service's own (`service.forward.traced`: one traced graph, CHUNK images per call) with
every core given to TensorFlow, so no server on this machine can classify faster than this.
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


def measure(tag: str, batch: int, reps: int, threads: int, intra: int = 1) -> dict[str, float]:
    """Median wall time of the service's forward call on a uint8 batch and on a single image."""
    from service.forward import CHUNK, set_threads, traced

    set_threads(intra, threads)  # as a service worker runs a large batch: chunks side by side
    import bentoml
    import keras

    from pipelines.model import forward_macs

    model = keras.saving.load_model(bentoml.models.get(tag).path_of("model.keras"), compile=False)
    forward = traced(model, CHUNK, threads)
    x, y = digits(batch)

    def timed(inputs: np.ndarray) -> float:
        t0 = time.perf_counter()
        forward(inputs)
        return time.perf_counter() - t0

    for _ in range(3):
        timed(x)
    batch_s = statistics.median(timed(x) for _ in range(reps))
    accuracy = float((forward(x).argmax(1) == y).mean())
    one = x[:1]
    for _ in range(20):
        timed(one)
    singles = sorted(timed(one) for _ in range(200))
    macs = forward_macs(model)
    return {
        "batch": batch,
        "chunk": CHUNK,
        "batch_ms": batch_s * 1e3,
        "batch_images_per_s": batch / batch_s,
        "single_ms_p50": statistics.median(singles) * 1e3,
        "single_ms_p99": singles[int(0.99 * len(singles)) - 1] * 1e3,
        "single_images_per_s": 1 / statistics.median(singles),
        "accuracy_on_batch": accuracy,
        "threads": threads,
        "intra_op_threads": intra,
        "macs_per_image": macs,
        "gflops": 2 * macs * batch / batch_s / 1e9,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tag", required=True, help="BentoML model tag, e.g. mnist-cnn:latest")
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument(
        "--threads",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="chunks run side by side (default: every core)",
    )
    parser.add_argument(
        "--intra", type=int, default=1, help="TensorFlow threads inside one op (a worker's: 1)"
    )
    args = parser.parse_args()
    print(
        json.dumps(measure(args.tag, args.batch, args.reps, args.threads, args.intra)), flush=True
    )


if __name__ == "__main__":
    main()
