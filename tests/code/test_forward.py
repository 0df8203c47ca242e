"""The service's model call: any batch size, chunked, chunks side by side, rows in order."""

from __future__ import annotations

import numpy as np
import pytest

from service.forward import traced


@pytest.fixture(scope="module")
def model():
    import keras

    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((28, 28, 1), dtype="uint8"),
            keras.layers.Rescaling(1 / 255),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )


@pytest.mark.parametrize(
    ("n", "chunk", "parallel"), [(1, 7, 2), (30, 7, 1), (30, 7, 2), (9, 256, 2)]
)
def test_any_batch_gives_the_models_own_answers_in_order(model, n, chunk, parallel):
    x = np.random.default_rng(n).integers(0, 256, (n, 28, 28), dtype=np.uint8)
    want = np.asarray(model(x[..., None], training=False))
    got = traced(model, chunk, parallel)(x)
    assert got.shape == (n, 10)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
