"""Which runtime computes a model's answers in this worker (DIGIT_RUNTIME), chosen when it loads.

`auto` takes the fastest runtime that evaluate found eligible for this model (common/runtimes.py:
int8, then bf16 where the CPU has it, then OpenVINO fp32, then Keras); a named runtime is taken if
it is eligible and runs here, and otherwise the next slower one, down to Keras, which always
serves. So a model packaged without IRs, an int8 that failed the agreement rule, or a CPU without
bf16 never stops a worker: it serves on the best runtime left, and `/model` and the
`digit_model_runtime` metric say which and why.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common import runtimes
from common.card import ModelCard
from common.rollout import PROBE_TOLERANCE

log = logging.getLogger(__name__)
AUTO = "auto"
CHOICES = (AUTO, *runtimes.RUNTIMES)


@dataclass(frozen=True)
class Candidate:
    runtime: str
    skipped: str = ""  # why it cannot serve here ("": it may)


def candidates(
    wanted: str, card: ModelCard, folder: Path, capabilities: set[str] | None = None
) -> list[Candidate]:
    """The runtimes to try for `wanted`, fastest first, each with why it is skipped (if it is);
    Keras, last, is never skipped. `capabilities`: the CPU's (None: OpenVINO asks it)."""
    order = runtimes.FASTEST_FIRST
    if wanted != AUTO:  # the one asked for, then the slower ones
        order = order[order.index(wanted) :]
    found = []
    for runtime in order:
        if runtime == runtimes.KERAS:
            found.append(Candidate(runtime))
            break
        check = card.runtimes.get(runtime)
        if check is None:
            found.append(Candidate(runtime, "the model was packaged without it"))
        elif not check.eligible:
            found.append(Candidate(runtime, f"not eligible: {check.why}"))
        elif not (folder / runtimes.OPENVINO_DIR / runtimes.IR[runtime]).is_file():
            found.append(Candidate(runtime, "its IR is missing from the packaged model"))
        else:
            if capabilities is None:
                capabilities = _capabilities()
            if "FP32" not in capabilities:
                found.append(Candidate(runtime, "OpenVINO cannot run on this machine"))
            elif not runtimes.runs_here(runtime, capabilities):
                found.append(Candidate(runtime, "this CPU has no bf16 (AVX-512 BF16)"))
            else:
                found.append(Candidate(runtime))
    return found


def _capabilities() -> set[str]:
    try:
        return runtimes.cpu_capabilities()
    except Exception as exc:  # not installed, no CPU plugin: serve on Keras, say why
        log.warning("OpenVINO cannot run here: %s: %s", type(exc).__name__, exc)
        return set()


def build(
    runtime: str,
    folder: Path,
    keras_model: Callable[[], object],
    chunk: int,
    parallel: int,
    threads: int,
) -> Callable[[np.ndarray], np.ndarray]:
    """The forward call of `runtime` for the packaged model in `folder`."""
    if runtime == runtimes.KERAS:
        from service.forward import traced

        return traced(keras_model(), chunk, parallel)
    xml = folder / runtimes.OPENVINO_DIR / runtimes.IR[runtime]
    return runtimes.openvino_forward(xml, runtime, chunk, parallel, threads)


def probe_tolerance(runtime: str) -> float:
    """How far the packaged probe's probabilities may move in `runtime`."""
    exact = runtime in (runtimes.KERAS, runtimes.FP32)
    return PROBE_TOLERANCE if exact else runtimes.REDUCED_PROBE_TOLERANCE
