"""How `make package` hands models to a running service, and how the service checks one.

The BentoML model store is the only thing the two share. `<name>:latest` (BentoML's own `latest`
file) is the champion; a `challenger` file beside it names the challenger's Bento tag version, for
shadow and canary. Every packaged model carries a probe: a few test digits and the probabilities
the registry's model gave them when it was packaged. A service that loads a model answers the
probe before serving it, so a model that loads but computes something else (a truncated file,
the wrong weights, a broken runtime) is never swapped in.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

CHALLENGER_POINTER = "challenger"  # beside BentoML's `latest`, in the store's <name>/ folder
PROBE_FILE = "probe.npz"  # in each Bento model's folder: images (k, 28, 28) uint8, probabilities
PROBE_IMAGES = 16
# Probabilities may differ by float rounding between Keras' eager call at package time and the
# service's traced graph (different batch shapes pick different kernels): ~1e-6 seen here.
PROBE_TOLERANCE = 1e-3


class ProbeMismatch(ValueError):
    """The model answered the probe unlike the registry's model did."""


def pointer(model_folder: Path) -> Path:
    """The challenger pointer of the model name whose version folder is `model_folder`."""
    return Path(model_folder).parent / CHALLENGER_POINTER


def read_pointer(model_folder: Path) -> str | None:
    """The challenger's version (Bento tag version), or None when none is packaged."""
    try:
        return pointer(model_folder).read_text().strip() or None
    except FileNotFoundError:
        return None


def save_probe(path: Path, images: np.ndarray, probabilities: np.ndarray) -> None:
    np.savez_compressed(path, images=images.astype(np.uint8), probabilities=probabilities)


def check_probe(model_folder: Path, probabilities_of, tolerance: float = PROBE_TOLERANCE) -> int:
    """Run `probabilities_of` (uint8 (k, 28, 28) → (k, 10)) on the folder's probe and raise
    `ProbeMismatch` unless it answers like the packaged model; return the probe's size (0: the
    model was packaged before probes existed, and only well-formed output is checked)."""
    path = Path(model_folder) / PROBE_FILE
    if path.exists():
        with np.load(path) as probe:
            images, want = probe["images"], probe["probabilities"]
    else:
        images, want = np.zeros((1, 28, 28), np.uint8), None
    got = np.asarray(probabilities_of(images))
    if got.shape != (len(images), 10) or not np.isfinite(got).all():
        raise ProbeMismatch(f"output of shape {got.shape} for {len(images)} probe images")
    if not np.allclose(got.sum(axis=1), 1.0, atol=1e-3):
        raise ProbeMismatch("its outputs are not probabilities (rows do not sum to 1)")
    if want is None:
        return 0
    worst = float(np.abs(got - want).max())
    wrong = int((got.argmax(axis=1) != want.argmax(axis=1)).sum())
    if worst > tolerance or wrong:
        raise ProbeMismatch(
            f"it answers the {len(images)} probe digits unlike the packaged model (largest "
            f"probability difference {worst:.3g} > {tolerance}; {wrong} different digits)"
        )
    return len(images)
