"""The inference runtimes a model can serve on, the rule that makes one eligible, and the one
OpenVINO call that both evaluate (which checks a runtime) and the service (which serves it) make.

A runtime is a way of computing the same net: Keras (TensorFlow's traced graph), or OpenVINO on
the IR evaluate wrote: fp32, fp32 with the bf16 precision hint (CPUs with AVX-512 BF16 only) and
int8 (NNCF post-training quantization). A reduced-precision one answers slightly differently, so it
may serve only if it agrees with Keras on ≥ 99.9% of the official test set and its accuracy is
within 0.05 points; evaluate measures that once and the model card carries the verdict. Checking
it where it is computed and serving it from the same call is what keeps "checked" and "served" the
same configuration: `compile_model` changes the model it is given, so each call here reads the
IR afresh and compiles it once.

openvino is imported inside the functions: importing this module costs nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

KERAS = "keras"
FP32, BF16, INT8 = "openvino-fp32", "openvino-bf16", "openvino-int8"
RUNTIMES = (KERAS, FP32, BF16, INT8)
# `auto` takes the first eligible of these: the order measured on every CPU of this machine kind
# (bench/RESULTS.md: int8 > bf16 > fp32 > TensorFlow in images/s, in process).
FASTEST_FIRST = (INT8, BF16, FP32, KERAS)
# A packaged model's OpenVINO folder (beside model.keras), evaluate's verdicts in it, the IR each
# OpenVINO runtime reads from it, and the precision its non-quantized operations run in.
OPENVINO_DIR = "openvino"
RUNTIMES_FILE = "runtimes.json"
IR = {FP32: Path("fp32/model.xml"), BF16: Path("fp32/model.xml"), INT8: Path("int8/model.xml")}
PRECISION = {FP32: "f32", BF16: "bf16", INT8: "f32"}

MIN_AGREEMENT = 0.999  # share of test digits answered like Keras
MAX_ACCURACY_DROP = 0.0005  # 0.05 points of test accuracy
ROUNDING = 1e-9  # shares of whole images: 0.9963 - 0.9958 is a hair above 0.0005 in floats
# A probe's probabilities may move this much in a reduced-precision runtime (fp32: 1e-3), its
# digits not at all: int8 moved one near-tie's probabilities by 0.15 in the tests, while a wrong
# or damaged model names other digits.
REDUCED_PROBE_TOLERANCE = 0.25


def verdict(accuracy: float, agreement: float, keras_accuracy: float) -> tuple[bool, str]:
    """Whether a runtime that scored `accuracy` and agreed with Keras on `agreement` of the test
    set may serve, and why (in words for the model card and `/model`)."""
    drop = keras_accuracy - accuracy
    if agreement < MIN_AGREEMENT - ROUNDING:
        return (
            False,
            f"agrees with Keras on {agreement:.2%} of the test set (< {MIN_AGREEMENT:.1%})",
        )
    if drop > MAX_ACCURACY_DROP + ROUNDING:
        return False, f"test accuracy {drop * 100:.2f} points below Keras (> 0.05)"
    change = (accuracy - keras_accuracy) * 100
    return True, f"agrees on {agreement:.2%}, accuracy {change:+.2f} points"


def no_telemetry() -> None:
    """Decline OpenVINO's usage telemetry for this process, before openvino is imported: `import
    openvino` sets it up (a client id in ~/intel/), its converter and NNCF send events to Google
    Analytics unless the user ran `opt_in_out --opt_out`. Neither a pipeline stage nor a server
    may reach the network on its own, and the sender, which forks inside a TensorFlow process,
    hung an evaluate here on a machine without internet."""
    from openvino_telemetry.utils import opt_in_checker

    declined = opt_in_checker.ConsentCheckResult.DECLINED
    opt_in_checker.OptInChecker.check = lambda self, *args, **kwargs: declined


def cpu_capabilities() -> set[str]:
    """What OpenVINO's CPU plugin can use here (FP32, BF16, INT8, ...): AVX-512 BF16 and VNNI
    exist on some machines of this kind and not on others."""
    no_telemetry()
    import openvino as ov

    return set(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def runs_here(runtime: str, capabilities: set[str]) -> bool:
    """bf16 computes in bf16 only on a CPU that has it (elsewhere OpenVINO quietly runs fp32)."""
    return runtime != BF16 or "BF16" in capabilities


def openvino_forward(
    xml: Path, runtime: str, chunk: int, streams: int = 1, threads: int = 1
) -> Callable[[np.ndarray], np.ndarray]:
    """The IR at `xml`, compiled for `runtime` → a function uint8 (n, 28, 28) → probabilities
    (n, 10), at most `chunk` images per inference and up to `streams` of them at once (each on
    `threads` threads), like the Keras call in service/forward.py."""
    no_telemetry()
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(
        core.read_model(str(xml)),  # read afresh: compile_model changes the model it is given
        "CPU",
        {
            "INFERENCE_PRECISION_HINT": PRECISION[runtime],
            "NUM_STREAMS": streams,
            "INFERENCE_NUM_THREADS": streams * threads,
            # the workers of a server share the cores: pinned threads would fight over them
            "ENABLE_CPU_PINNING": False,
        },
    )
    # Chunks run side by side in OpenVINO's own threads (AsyncInferQueue, one request a
    # stream), submitted from the calling thread only: infer() on requests of one compiled model
    # from several Python threads at once deadlocked here (both stuck setting their input's shape).
    jobs = ov.AsyncInferQueue(compiled, streams)
    answers: dict[int, np.ndarray] = {}
    jobs.set_callback(
        lambda request, i: answers.__setitem__(i, request.get_output_tensor(0).data.copy())
    )
    one_call = threading.Lock()  # callers share the queue: one forward at a time

    def forward(images: np.ndarray) -> np.ndarray:
        size = min(chunk, max(1, -(-len(images) // streams)))
        with one_call:
            answers.clear()
            for i, start in enumerate(range(0, len(images), size)):
                jobs.start_async(
                    {0: np.ascontiguousarray(images[start : start + size, ..., None])}, i
                )
            jobs.wait_all()
            return np.concatenate([answers[i] for i in range(len(answers))])

    return forward


def chunked(
    call: Callable[[np.ndarray], np.ndarray], chunk: int, parallel: int
) -> Callable[[np.ndarray], np.ndarray]:
    """`call` on a batch of any size: at most `chunk` images a call (bounded memory), the chunks of
    a large batch `parallel` at a time, so one big request still gets every core."""
    pool = ThreadPoolExecutor(parallel, thread_name_prefix="forward") if parallel > 1 else None

    def forward(images: np.ndarray) -> np.ndarray:
        size = min(chunk, max(1, -(-len(images) // parallel)))
        parts = [images[i : i + size] for i in range(0, len(images), size)]
        if len(parts) == 1:
            return call(parts[0])
        return np.concatenate(list(pool.map(call, parts)) if pool else [call(p) for p in parts])

    return forward
