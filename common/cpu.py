"""The CPU a number was measured on: its model name and the vector extensions that decide speed.

Machines of this kind differ (Zen 3 with AVX2 only, Zen 4 with AVX-512, VNNI and BF16), oneDNN picks
different kernels on each, and training is bit-identical only on one CPU model: every timing and
every training run records this beside its figures.
"""

from __future__ import annotations

import platform
from pathlib import Path

# The extensions that change which kernels TensorFlow/oneDNN run (as /proc/cpuinfo spells them).
VECTOR_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def _cpuinfo() -> dict[str, str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    first = text.split("\n\n", 1)[0]
    return {
        k.strip(): v.strip()
        for k, _, v in (line.partition(":") for line in first.splitlines())
        if k.strip()
    }


def model() -> str:
    """E.g. 'AMD EPYC' (what lscpu calls "Model name")."""
    return _cpuinfo().get("model name") or platform.processor() or "unknown"


def vector_extensions() -> list[str]:
    """Which of VECTOR_FLAGS this CPU has, in that order."""
    flags = set(_cpuinfo().get("flags", "").split())
    return [f for f in VECTOR_FLAGS if f in flags]


def describe() -> str:
    """One line for logs and reports, e.g. 'AMD EPYC (avx2 fma), 2 cores'."""
    import os

    return f"{model()} ({' '.join(vector_extensions()) or 'no AVX2'}), {os.cpu_count()} cores"
