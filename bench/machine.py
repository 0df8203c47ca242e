"""What the numbers were measured on: commit, hardware, load, versions. Numbers without this are
not comparable, and on shared 2-core machines the load average matters as much as the CPU."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from common import cpu

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("bentoml", "mlflow", "tensorflow", "keras", "numpy", "openvino", "nncf")


def _git(*args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
    return proc.stdout.strip() if proc.returncode == 0 else ""


def commit() -> str:
    """Short HEAD, `-dirty` when anything but bench/RESULTS.md differs from it."""
    head = _git("rev-parse", "--short=12", "HEAD") or "unknown"
    changed = [
        line
        for line in _git("status", "--porcelain").splitlines()
        if not line.endswith("bench/RESULTS.md")
    ]
    return f"{head}-dirty" if changed else head


def memory_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("nan")


def gpu() -> str:
    if any(Path("/dev").glob("nvidia[0-9]*")):
        return "an NVIDIA GPU is present (TensorFlow may use it)"
    return "no GPU"


def wrk_version() -> str:
    try:
        proc = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    except FileNotFoundError:
        return "not installed"
    first = (proc.stdout or proc.stderr).splitlines()
    return first[0].split(" Copyright")[0] if first else "unknown"


def load_average() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.2f} (1 min), {five:.2f} (5 min)"


def versions() -> str:
    found = []
    for name in PACKAGES:
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            found.append(f"{name} (missing)")
    return ", ".join([f"Python {platform.python_version()}", *found])


def describe() -> dict[str, str]:
    """The facts the report prints under "Run", in order."""
    cores = len(os.sched_getaffinity(0))
    return {
        "commit": commit(),
        "machine": f"{cpu.model()} ({' '.join(cpu.vector_extensions()) or 'no AVX2'}), "
        f"{cores} cores, {memory_gib():.0f} GiB RAM, {gpu()}",
        "load average at start": load_average(),
        "versions": versions(),
        "load generator": f"{wrk_version()}, on the same machine, 127.0.0.1",
        "service settings": service_settings(),
    }


def service_settings() -> str:
    """The DIGIT_* variables our server inherits: an A/B run sets some (bench/RESULTS.md)."""
    given = sorted(f"`{k}={v}`" for k, v in os.environ.items() if k.startswith("DIGIT_"))
    return ", ".join(given) if given else "the defaults (no `DIGIT_*` variable set)"
