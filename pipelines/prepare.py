"""Stage 2, prepare: validate the raw data, split off a stratified validation set, write stats;
split people's feedback into a training share and the held-out "people" evaluation set.

Bad data stops here with every problem listed, before any training time is spent; the previous
prepared files stay as they were because nothing is written until validation passes.
"""

from __future__ import annotations

import hashlib
import sys

import numpy as np
from sklearn.model_selection import train_test_split

from common.drift import REFERENCE_KEY, reference
from common.feedback_store import EXPORT_KEYS
from common.image import SHAPE
from pipelines import layout
from pipelines.atomic import save_npz, write_json
from pipelines.log import fail, start
from pipelines.paths import workspace
from pipelines.sources import DataSourceError, Mnist, load_npz

HIST_BINS = 16  # pixel-intensity histogram buckets of width 16 (0-15, 16-31, ...)


class DataValidationError(ValueError):
    """The data breaks an expectation; the message lists every broken one."""


def _check_images(name: str, x: np.ndarray, problems: list[str]) -> np.ndarray | None:
    if x.ndim != 3 or x.shape[1:] != SHAPE:
        problems.append(f"{name}: expected shape (n, 28, 28), got {x.shape}")
        return None
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        problems.append(f"{name}: expected numeric pixels, got dtype {x.dtype}")
        return None
    if np.issubdtype(x.dtype, np.floating):
        bad = ~np.isfinite(x)
        if bad.any():
            problems.append(f"{name}: {int(bad.sum())} NaN or infinite pixel values")
            return None
        if not np.array_equal(x, np.round(x)):
            problems.append(
                f"{name}: pixels must be whole numbers 0-255, found fractions "
                "(data scaled to 0-1? store the raw uint8 pixels)"
            )
            return None
    if x.size and (x.min() < 0 or x.max() > 255):
        problems.append(f"{name}: pixel values must lie in 0-255, found {x.min()}..{x.max()}")
        return None
    return x.astype(np.uint8)


def _check_labels(
    name: str, y: np.ndarray, n: int | None, problems: list[str]
) -> np.ndarray | None:
    if y.ndim != 1:
        problems.append(f"{name}: expected a 1-D label vector, got shape {y.shape}")
        return None
    if n is not None and len(y) != n:
        problems.append(f"{name}: {len(y)} labels for {n} images")
        return None
    if np.issubdtype(y.dtype, np.floating) and not np.all(np.isfinite(y)):
        problems.append(f"{name}: NaN or infinite labels")
        return None
    if not np.issubdtype(y.dtype, np.number) or not np.array_equal(y, np.round(y)):
        problems.append(f"{name}: labels must be whole numbers 0-9")
        return None
    if y.size and (y.min() < 0 or y.max() > 9):
        bad = np.unique(y[(y < 0) | (y > 9)])[:5].tolist()
        problems.append(f"{name}: labels must lie in 0-9, found {bad}")
        return None
    return y.astype(np.uint8)


def _check_balance(name: str, y: np.ndarray, lo: float, hi: float, problems: list[str]) -> None:
    shares = np.bincount(y, minlength=10) / max(len(y), 1)
    for digit, share in enumerate(shares):
        if not lo <= share <= hi:
            problems.append(
                f"{name}: digit {digit} is {share:.1%} of the labels, outside "
                f"[{lo:.0%}, {hi:.0%}] (prepare.min/max_class_fraction)"
            )


def validate(raw: Mnist, min_class_fraction: float, max_class_fraction: float) -> Mnist:
    """Check every expectation on the raw arrays and return them as uint8, or raise listing all."""
    problems: list[str] = []
    x_train = _check_images("x_train", np.asarray(raw.x_train), problems)
    x_test = _check_images("x_test", np.asarray(raw.x_test), problems)
    y_train = _check_labels(
        "y_train", np.asarray(raw.y_train), None if x_train is None else len(x_train), problems
    )
    y_test = _check_labels(
        "y_test", np.asarray(raw.y_test), None if x_test is None else len(x_test), problems
    )
    for name, y in (("y_train", y_train), ("y_test", y_test)):
        if y is not None:
            _check_balance(name, y, min_class_fraction, max_class_fraction, problems)
    if x_train is not None and x_test is not None:
        seen = {hashlib.blake2b(img.tobytes(), digest_size=16).digest() for img in x_train}
        leaked = sum(
            hashlib.blake2b(img.tobytes(), digest_size=16).digest() in seen for img in x_test
        )
        if leaked:
            problems.append(f"{leaked} test images also appear in the training set (leakage)")
    if problems:
        raise DataValidationError("the raw data failed validation:\n  - " + "\n  - ".join(problems))
    assert x_train is not None and y_train is not None and x_test is not None and y_test is not None
    return Mnist(x_train, y_train, x_test, y_test)


def validate_feedback(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Check the feedback export (stage feedback) as strictly as the raw data, listing all."""
    problems: list[str] = []
    missing = [k for k in EXPORT_KEYS if k not in arrays]
    if missing:
        raise DataValidationError(f"{layout.FEEDBACK} lacks {missing}: rerun the feedback stage")
    x = _check_images("feedback x", np.asarray(arrays["x"]), problems)
    y = _check_labels(
        "feedback y", np.asarray(arrays["y"]), None if x is None else len(x), problems
    )
    n = len(arrays["y"])
    for k in EXPORT_KEYS:
        if len(arrays[k]) != n:
            problems.append(f"feedback {k}: {len(arrays[k])} rows for {n} labels")
    keys = np.asarray(arrays["key"])
    if len(np.unique(keys)) != len(keys):
        problems.append("feedback key: the same prediction id twice (a replay got through)")
    if problems:
        raise DataValidationError("the feedback failed validation:\n  - " + "\n  - ".join(problems))
    return {**arrays, "x": x, "y": y}


def people_share(keys: np.ndarray, seed: int) -> np.ndarray:
    """Each row's fixed place in [0, 1) by a seeded hash of its key (the prediction id's
    signature): whether it trains depends on the row alone, not on what else arrived."""
    digests = [hashlib.blake2b(f"{seed}:{k}".encode(), digest_size=8).digest() for k in keys]
    return np.array([int.from_bytes(d, "big") / 2**64 for d in digests], np.float64)


def split_feedback(
    arrays: dict[str, np.ndarray], train_share: float, seed: int
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(the rows that train, the held-out "people" rows), every array split alike."""
    trains = people_share(arrays["key"], seed) < train_share
    return (
        {k: np.asarray(v)[trains] for k, v in arrays.items()},
        {k: np.asarray(v)[~trains] for k, v in arrays.items()},
    )


def split(x: np.ndarray, y: np.ndarray, val_fraction: float, seed: int):
    """Seeded split that keeps each digit's share the same in train and validation."""
    return train_test_split(x, y, test_size=val_fraction, random_state=seed, stratify=y)


def stats(x: np.ndarray, y: np.ndarray) -> dict:
    """The training reference the service's live inputs are later compared against.

    REFERENCE_KEY holds the ink-mean and ink-box histograms (common/drift.py) that
    `pipelines.package` ships with the model and monitoring/ compares the live inputs with.
    """
    hist = np.bincount(x.reshape(-1) // (256 // HIST_BINS), minlength=HIST_BINS)
    return {
        "n_images": len(y),
        "class_counts": {str(d): int(c) for d, c in enumerate(np.bincount(y, minlength=10))},
        "pixel_histogram": {
            "bin_width": 256 // HIST_BINS,
            "share": [round(float(v), 6) for v in hist / hist.sum()],
        },
        "mean_pixel": round(float(x.mean()), 4),
        "mean_image": np.round(x.mean(axis=0), 2).tolist(),
        REFERENCE_KEY: reference(x),
    }


def main() -> None:
    p = start("prepare")
    ws = workspace()
    try:
        data = validate(
            load_npz(ws / layout.RAW), p.prepare.min_class_fraction, p.prepare.max_class_fraction
        )
        with np.load(ws / layout.FEEDBACK, allow_pickle=False) as npz:
            feedback = validate_feedback(dict(npz))
    except (DataSourceError, DataValidationError) as err:
        fail("prepare", err)
    except (OSError, ValueError) as err:
        fail("prepare", DataValidationError(f"{layout.FEEDBACK} is unreadable: {err}"))
    x_tr, x_val, y_tr, y_val = split(data.x_train, data.y_train, p.prepare.val_fraction, p.seed)
    save_npz(ws / layout.split("train"), x=x_tr, y=y_tr)
    save_npz(ws / layout.split("val"), x=x_val, y=y_val)
    save_npz(ws / layout.split("test"), x=data.x_test, y=data.y_test)
    write_json(ws / layout.STATS, stats(x_tr, y_tr))
    trains, people = split_feedback(feedback, p.prepare.feedback_train_share, p.seed)
    save_npz(ws / layout.FEEDBACK_TRAIN, **trains)
    save_npz(ws / layout.PEOPLE, **people)
    print(
        f"prepare: train {len(y_tr)}, val {len(y_val)}, test {len(data.y_test)}; feedback "
        f"{len(trains['y'])} to train, {len(people['y'])} held out as people's "
        f"→ {layout.PREPARED}/",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
