"""Loading the prepared splits, the one way every stage and test reads them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipelines.paths import workspace

PREPARED = Path("data/prepared")


def load_split(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(images (n, 28, 28, 1) uint8, labels (n,) uint8) of train, val or test."""
    with np.load(workspace() / PREPARED / f"{name}.npz", allow_pickle=False) as npz:
        return npz["x"][..., None], npz["y"]
