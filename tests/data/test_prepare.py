"""Expectations on the data: prepare refuses what would silently spoil training."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.prepare import (
    DataValidationError,
    split,
    split_feedback,
    stats,
    validate,
    validate_feedback,
)
from pipelines.sources import Mnist, load_npz
from tests.helpers import FIXTURE


@pytest.fixture
def mnist() -> Mnist:
    return load_npz(FIXTURE)


def _with(m: Mnist, **changes) -> Mnist:
    return Mnist(**{**m.arrays(), **changes})


def _check(m: Mnist) -> Mnist:
    return validate(m, 0.05, 0.2)


def test_fixture_is_real_balanced_mnist(mnist):
    data = _check(mnist)
    assert data.x_train.shape == (800, 28, 28) and data.x_test.shape == (200, 28, 28)
    assert data.x_train.dtype == np.uint8
    assert np.bincount(data.y_train).tolist() == [80] * 10
    assert 25 < data.x_train.mean() < 40  # MNIST's mean pixel is about 33


def test_wrong_shape_is_rejected(mnist):
    with pytest.raises(DataValidationError, match=r"x_train: expected shape \(n, 28, 28\)"):
        _check(_with(mnist, x_train=mnist.x_train[:, :27, :]))


def test_labels_out_of_range_are_rejected(mnist):
    y = mnist.y_train.astype(np.int64)
    y[:3] = [10, -1, 10]
    with pytest.raises(DataValidationError, match=r"labels must lie in 0-9, found \[-1, 10\]"):
        _check(_with(mnist, y_train=y))


def test_nan_pixels_are_rejected(mnist):
    x = mnist.x_test.astype(np.float32)
    x[0, 0, 0] = np.nan
    with pytest.raises(DataValidationError, match="1 NaN or infinite pixel values"):
        _check(_with(mnist, x_test=x))


def test_scaled_pixels_are_rejected(mnist):
    with pytest.raises(DataValidationError, match="scaled to 0-1"):
        _check(_with(mnist, x_train=mnist.x_train / 255.0))


def test_out_of_range_pixels_are_rejected(mnist):
    x = mnist.x_train.astype(np.int32)
    x[0, 0, 0] = 300
    with pytest.raises(DataValidationError, match="0-255"):
        _check(_with(mnist, x_train=x))


def test_label_count_mismatch_is_rejected(mnist):
    with pytest.raises(DataValidationError, match="799 labels for 800 images"):
        _check(_with(mnist, y_train=mnist.y_train[:-1]))


def test_test_images_leaking_into_train_are_rejected(mnist):
    x = mnist.x_train.copy()
    x[:4] = mnist.x_test[:4]
    with pytest.raises(DataValidationError, match="4 test images also appear in the training set"):
        _check(_with(mnist, x_train=x))


def test_implausible_class_balance_is_rejected(mnist):
    y = mnist.y_train.copy()
    y[y == 3] = 4  # no 3s at all, twice as many 4s
    with pytest.raises(DataValidationError, match=r"digit 3 is 0\.0% of the labels"):
        _check(_with(mnist, y_train=y))


def test_every_problem_is_listed_at_once(mnist):
    y = mnist.y_train.astype(np.int64)
    y[0] = 12
    x = mnist.x_test.astype(np.float32)
    x[0, 0, 0] = np.inf
    with pytest.raises(DataValidationError) as err:
        _check(_with(mnist, y_train=y, x_test=x))
    assert "y_train" in str(err.value) and "x_test" in str(err.value)


def test_split_is_stratified_and_seeded(mnist):
    _, x_val, _, y_val = split(mnist.x_train, mnist.y_train, 0.1, seed=7)
    assert len(y_val) == 80 and np.bincount(y_val).tolist() == [8] * 10
    again = split(mnist.x_train, mnist.y_train, 0.1, seed=7)
    np.testing.assert_array_equal(x_val, again[1])
    other = split(mnist.x_train, mnist.y_train, 0.1, seed=8)
    assert not np.array_equal(x_val, other[1])


def test_stats_describe_the_training_reference(mnist):
    s = stats(mnist.x_train, mnist.y_train)
    assert s["n_images"] == 800
    assert sum(s["class_counts"].values()) == 800
    assert sum(s["pixel_histogram"]["share"]) == pytest.approx(1.0, abs=1e-4)
    assert np.array(s["mean_image"]).shape == (28, 28)
    assert s["mean_pixel"] == pytest.approx(float(mnist.x_train.mean()), abs=1e-3)


def _feedback(m: Mnist, n: int = 40) -> dict[str, np.ndarray]:
    """What the feedback stage exports for n rows (real digits as the people's drawings)."""
    return {
        "x": m.x_test[:n].copy(),
        "y": m.y_test[:n].astype(np.uint8),
        "answered": m.y_test[:n].astype(np.uint8),
        "confidence": np.full(n, 0.8, np.float32),
        "reviewed": np.zeros(n, bool),
        "model_version": np.array(["1"] * n),
        "created_at": np.arange(n, dtype=np.int64),
        "key": np.array([f"{i:064x}" for i in range(n)]),
    }


def test_good_feedback_passes_and_splits_by_row_not_by_what_else_arrived(mnist):
    rows = validate_feedback(_feedback(mnist))
    trains, people = split_feedback(rows, 0.5, seed=42)
    assert len(trains["y"]) + len(people["y"]) == 40 and 5 < len(trains["y"]) < 35
    assert not set(trains["key"]) & set(people["key"])  # the people set never trains
    # a row keeps its side when more feedback arrives: the rule reads the row alone
    more_train, _ = split_feedback(validate_feedback(_feedback(mnist, 80)), 0.5, seed=42)
    assert set(trains["key"]) <= set(more_train["key"])
    other_seed, _ = split_feedback(rows, 0.5, seed=7)
    assert set(other_seed["key"]) != set(trains["key"])
    everything, nothing = split_feedback(rows, 1.0, seed=42)
    assert len(everything["y"]) == 40 and len(nothing["y"]) == 0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: {**f, "y": np.where(f["y"] == 3, 12, f["y"]).astype(np.uint8)}, "feedback y"),
        (lambda f: {**f, "x": f["x"][:, :27]}, "feedback x"),
        (lambda f: {**f, "key": np.array([f["key"][0]] * len(f["key"]))}, "same prediction id"),
        (lambda f: {**f, "answered": f["answered"][:-1]}, "feedback answered: 39 rows"),
        (lambda f: {k: v for k, v in f.items() if k != "model_version"}, "lacks"),
    ],
    ids=["label-out-of-range", "wrong-shape", "replayed-key", "ragged", "missing-column"],
)
def test_bad_feedback_is_refused_with_what_is_wrong(mnist, change, message):
    with pytest.raises(DataValidationError, match=message):
        validate_feedback(change(_feedback(mnist)))
