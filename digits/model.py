"""The champion in your own process: load it, give it arrays, pictures or files, get digits.

`load()` takes the packaged model from the BentoML store through the service's own loader
(`service.models.load`: traced, warmed up and checked against the probe it was packaged with), so
it answers exactly as a served worker does. `from_mlflow()` takes the registry's logged model
instead (`models:/mnist-cnn@champion`, through `mlflow.pyfunc`), for a machine with the MLflow
store but no packaged model. Inputs are made model input as the service makes them: arrays are
MNIST pixels taken as they are (like `/predict`), pictures are made MNIST-like (like
`/predict_image`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from digits.inputs import Inputs, as_images, service_limits
from digits.stores import use_project_stores
from service.inputs.limits import Limits

DEFAULT_TAG = "mnist-cnn:latest"
DEFAULT_URI = "models:/mnist-cnn@champion"
CHUNK = 256  # images per model call (the service's DIGIT_MODEL_BATCH default)


@dataclass(frozen=True)
class Prediction:
    """One image's answer: the service's fields, and the 28×28 the model saw."""

    digit: int
    confidence: float
    probabilities: tuple[float, ...]  # digits 0-9, as the model gave them (the API rounds to 6)
    version: str  # the MLflow registry version
    seen: np.ndarray  # uint8 (28, 28), white ink on black


class Model:
    """A model answering uint8 (n, 28, 28) with probabilities (n, 10); `predict` takes more."""

    def __init__(
        self,
        probabilities_of: Callable[[np.ndarray], np.ndarray],
        version: str,
        name: str,
        limits: Limits | None = None,
    ) -> None:
        self._probabilities_of = probabilities_of
        self.version, self.name = version, name
        self.limits = limits or service_limits()

    def __repr__(self) -> str:
        return f"Model({self.name!r}, version={self.version!r})"

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """uint8 (n, 28, 28) → float32 (n, 10), CHUNK images per model call."""
        parts = [images[i : i + CHUNK] for i in range(0, len(images), CHUNK)]
        return np.concatenate([np.asarray(self._probabilities_of(p)) for p in parts])

    def predict(self, inputs: Inputs) -> list[Prediction]:
        """Predictions for a uint8 array (28, 28), (n, 28, 28) or (n, 28, 28, 1), a PIL image,
        a file path (picture, .npy, .npz, IDX), picture bytes, or a list of these; raises
        `digits.Unreadable` (a ValueError) with the reason when one gives no digit."""
        images = self.images(inputs)
        probs = self.probabilities(images)
        return [
            Prediction(int(p.argmax()), float(p.max()), tuple(p.tolist()), self.version, x)
            for p, x in zip(probs, images, strict=True)
        ]

    def images(self, inputs: Inputs) -> np.ndarray:
        """The uint8 (n, 28, 28) the model sees for `inputs` (what `predict` takes)."""
        return as_images(inputs, self.limits)


def load(tag: str = DEFAULT_TAG) -> Model:
    """The packaged model `tag` names in the BentoML store (default: the champion `make package`
    put there), loaded on the runtime DIGIT_RUNTIME picks (default `auto`, as the service) and
    checked by the service's own loader."""
    use_project_stores()
    from service.models import load as load_packaged
    from service.settings import Settings

    loaded = load_packaged(tag, CHUNK, 1, 1, Settings.from_env().runtime)
    return Model(loaded, loaded.version, loaded.tag)


def from_mlflow(uri: str = DEFAULT_URI) -> Model:
    """The registry's logged model (`models:/<name>@<alias>` or `models:/<name>/<version>`)
    through `mlflow.pyfunc`, fed what its signature says: uint8 (n, 28, 28, 1)."""
    use_project_stores()
    import keras
    import mlflow
    from mlflow.store.artifact.utils.models import get_model_name_and_version

    keras.config.disable_interactive_logging()  # no progress bar on stdout per call
    model = mlflow.pyfunc.load_model(uri)
    found = get_model_name_and_version(mlflow.MlflowClient(), uri)  # (id,) if unregistered
    name, version = found if len(found) == 2 else (found[0], "")
    return Model(lambda x: model.predict(x[..., None]), str(version), f"{name}/{version}")
