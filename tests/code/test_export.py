"""The SavedModel and TFLite exports answer like the Keras model they came from."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines import export, layout


@pytest.fixture(scope="module")
def net():
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input(shape=(28, 28, 1), dtype="uint8")
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(4, 3, activation="relu")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(10, activation="softmax")(x)
    return keras.Model(inputs, outputs)


def test_exports_agree_with_keras_on_every_image(net, tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(250, 28, 28, 1), dtype=np.uint8)  # 250: a ragged last batch
    reference = net.predict(x, verbose=0)
    agree = export.export_all(net, x, reference.argmax(axis=1), tmp_path)
    assert agree == {"saved_model": 1.0, "tflite": 1.0}
    assert (tmp_path / layout.SAVED_MODEL / "saved_model.pb").is_file()
    assert (tmp_path / layout.TFLITE).stat().st_size > 0
    for probs in (
        export.predict_saved_model(tmp_path / layout.SAVED_MODEL, x, batch=100),
        export.predict_tflite(tmp_path / layout.TFLITE, x, batch=100),
    ):
        assert probs.shape == (250, 10)
        np.testing.assert_allclose(probs, reference, atol=1e-5)


def test_agreement_counts_matching_digits():
    probs = np.eye(10)[[1, 2, 3, 4]]
    assert export.agreement(np.array([1, 2, 0, 4]), probs) == 0.75
