"""The model call the service makes, shared with the benchmark's in-process ceiling.

An eager Keras call costs ~30 ms of Python per call on 2 cores, a traced `tf.function` under 2 ms
(measured in-process), so the service and `make bench` both call one traced graph that takes any
batch size, at most `chunk` images at a time (bounded memory per call). Threads: each worker gives
TensorFlow few intra-op threads (idle ones spin and steal the CPU from the other worker under
load) and runs the chunks of a large batch side by side instead, so one big request still gets
every core (`python -m bench.inprocess` on 2 cores, 1,000 images: 1,500-1,600 images/s one chunk
at a time on one thread, 2,900-3,000 with two chunks side by side, 2,400-2,800 with two intra-op
threads; `--threads`/`--intra` choose).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from common.image import MODEL_INPUT
from common.runtimes import chunked

CHUNK = 256  # images per graph call (DIGIT_MODEL_BATCH): larger costs memory, not speed, here


_sized: list[tuple[int, int]] = []  # the pools' sizes, once set (TensorFlow allows it once)


def set_threads(intra: int, parallel: int) -> None:
    """Size TensorFlow's thread pools before it runs any op (BentoML 1.4 does not, per worker):
    `intra` threads inside an op, room for `parallel` graph calls at once. Only the first call
    sizes them: a worker's later models (a hot swap) share its pools."""
    if _sized:
        return
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(intra)
    tf.config.threading.set_inter_op_parallelism_threads(parallel)
    _sized.append((intra, parallel))


def traced(model, chunk: int = CHUNK, parallel: int = 1) -> Callable[[np.ndarray], np.ndarray]:
    """A Keras model → a function uint8 (n, 28, 28) → probabilities (n, 10), inference mode,
    running up to `parallel` chunks of a large batch at once."""
    import tensorflow as tf

    graph = tf.function(
        lambda x: model(x, training=False),
        input_signature=[tf.TensorSpec([None, *MODEL_INPUT], tf.uint8)],
    )

    def call(images: np.ndarray) -> np.ndarray:
        return graph(images[..., None]).numpy()

    return chunked(call, chunk, parallel)
