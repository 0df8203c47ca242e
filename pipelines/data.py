"""Loading the prepared splits, the one way every stage and test reads them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipelines import layout
from pipelines.paths import workspace


def load_split(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(images (n, 28, 28, 1) uint8, labels (n,) uint8) of train, val or test."""
    with np.load(workspace() / layout.split(name), allow_pickle=False) as npz:
        return npz["x"][..., None], npz["y"]


def load_feedback(path: Path) -> dict[str, np.ndarray]:
    """A prepared feedback share (layout.FEEDBACK_TRAIN or layout.PEOPLE): every array, the images
    as (n, 28, 28, 1) like the splits'."""
    with np.load(workspace() / path, allow_pickle=False) as npz:
        arrays = dict(npz)
    return arrays | {"x": arrays["x"][..., None]}
