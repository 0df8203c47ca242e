"""The ceiling: the packaged model called the way the service calls it, with no HTTP in the way.

Runs in its own process (`python -m bench.inprocess --tag mnist-cnn:v5-... --runtime keras`),
after the servers have stopped, and prints one JSON line: the numbers the served figures are
compared against. The call is the service's own on the runtime asked for (service/models.py: the
traced TensorFlow graph, or the OpenVINO IR; CHUNK images per call) with every core given to it,
so no server on this machine can classify faster than this; `make bench` runs it for every
runtime, each in a fresh process, interleaved.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from bench.payloads import digits


def rss_mib() -> float:
    """This process's resident memory now (what a server worker holds with the model loaded)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(
    tag: str, batch: int, reps: int, threads: int, intra: int = 1, runtime: str = "keras"
) -> dict[str, float | str]:
    """Median wall time of the service's forward call on `runtime` (loaded the way a worker loads
    it: service/models.py) on a uint8 batch and on a single image, and what loading it cost."""
    t0 = time.perf_counter()
    from service.forward import CHUNK
    from service.models import load

    # as a service worker runs a large batch: `threads` chunks side by side, `intra` threads each
    served = load(tag, CHUNK, threads, intra, runtime)
    load_s = time.perf_counter() - t0
    forward = served.infer
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
    architecture = served.card.architecture
    macs = architecture.multiply_adds if architecture else float("nan")
    return {
        "runtime": served.runtime,
        "asked": runtime,
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
        "load_s": load_s,  # imports, model load, compile, warm-up, probe
        "rss_mib": rss_mib(),
        "tensorflow_loaded": "tensorflow" in sys.modules,
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
        "--intra", type=int, default=1, help="threads inside one model call (a worker's: 1)"
    )
    parser.add_argument(
        "--runtime", default="keras", help="DIGIT_RUNTIME: auto, keras, openvino-fp32, ..."
    )
    args = parser.parse_args()
    figures = measure(args.tag, args.batch, args.reps, args.threads, args.intra, args.runtime)
    print(json.dumps(figures), flush=True)


if __name__ == "__main__":
    main()
