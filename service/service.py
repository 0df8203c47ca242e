"""The digit classifier service: the registry's champion behind HTTP.

Loads the packaged model once per worker and never talks to MLflow at request time; every reply
says which registry version answered it.
"""

from __future__ import annotations

import os
from typing import Annotated

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import bentoml
import numpy as np
from bentoml.exceptions import InvalidArgument
from bentoml.validators import Shape
from pydantic import BaseModel, Field

from pipelines.params import load as load_params

MODEL_TAG = os.environ.get("DIGIT_MODEL_TAG") or f"{load_params().register.model_name}:latest"
TF_THREADS = int(os.environ.get("DIGIT_TF_THREADS", "2"))


class Prediction(BaseModel):
    digit: int = Field(description="The most likely digit, 0-9")
    confidence: float = Field(description="The probability of that digit")
    probabilities: list[float] = Field(description="Probability of each digit 0-9, in order")
    model_version: str = Field(description="The MLflow registry version that answered")


def check_pixels(image: np.ndarray) -> np.ndarray:
    """A 28×28 grid of whole or fractional values 0-255 → uint8 (1, 28, 28, 1), or a clear 400."""
    try:
        pixels = np.asarray(image, dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidArgument("image must be a 28×28 array of numbers 0-255") from None
    if pixels.shape != (28, 28):
        raise InvalidArgument(f"image must be 28 rows of 28 pixel values, got shape {pixels.shape}")
    if not np.all(np.isfinite(pixels)):
        raise InvalidArgument("image contains NaN or infinite values: send numbers 0-255")
    if pixels.min() < 0 or pixels.max() > 255:
        raise InvalidArgument(
            f"pixel values must lie in 0-255 (white ink on black), got {pixels.min():g}.."
            f"{pixels.max():g}"
        )
    return np.round(pixels).astype(np.uint8)[None, :, :, None]


@bentoml.service(
    name="digit_classifier",
    workers=1,
    resources={"cpu": str(TF_THREADS)},
    traffic={"timeout": 30},
)
class DigitClassifier:
    model_ref = bentoml.models.BentoModel(MODEL_TAG)

    def __init__(self) -> None:
        import tensorflow as tf

        # Set before TF runs any op; BentoML 1.4 does not size TF's thread pools per worker.
        tf.config.threading.set_intra_op_parallelism_threads(TF_THREADS)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        import keras

        stored = self.model_ref
        self.model = keras.saving.load_model(stored.path_of("model.keras"), compile=False)
        self.info = dict(stored.info.metadata)
        self.version = str(self.info["mlflow_version"])
        self.model(np.zeros((1, 28, 28, 1), np.uint8), training=False)  # build graphs now

    @bentoml.api
    def predict(
        self,
        image: Annotated[np.ndarray, Shape((28, 28))],
        ctx: bentoml.Context,
    ) -> Prediction:
        """Classify one 28×28 image of pixel values 0-255 (white ink on black, like MNIST)."""
        x = check_pixels(image)
        probs = np.asarray(self.model(x, training=False))[0].astype(float)
        digit = int(probs.argmax())
        ctx.response.headers["X-Model-Version"] = self.version
        return Prediction(
            digit=digit,
            confidence=float(probs[digit]),
            probabilities=[round(p, 6) for p in probs.tolist()],
            model_version=self.version,
        )
