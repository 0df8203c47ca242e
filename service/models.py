"""One servable model: a Bento model loaded, traced, warmed up and checked, ready to swap in.

Loading never touches what serves: the new model is built beside the old one, answers the probe
it was packaged with (common/rollout.py) and only then is handed to the batcher. Whatever fails
here raises `LoadFailed` with the stage that failed ("load" or "check"), so the caller keeps the
old model and says why.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import bentoml
import numpy as np

from common.card import ModelCard
from common.image import SHAPE
from common.rollout import check_probe, read_pointer
from service.forward import traced
from service.schemas import ModelInfo

MODEL_FILE = "model.keras"


class LoadFailed(RuntimeError):
    """A model that must not serve: `stage` is "load" (unreadable, not buildable) or "check"."""

    def __init__(self, tag: str, stage: str, why: str) -> None:
        super().__init__(f"{tag}: {stage} failed: {why}")
        self.tag, self.stage = tag, stage


@dataclass(eq=False)
class Loaded:
    """A model ready to answer: call it on uint8 (n, 28, 28) for probabilities (n, 10)."""

    tag: str
    card: ModelCard
    info: ModelInfo
    model: object = field(repr=False)  # the Keras model (/explain needs its layers)
    infer: Callable[[np.ndarray], np.ndarray] = field(repr=False)
    probe_size: int = 0

    @property
    def version(self) -> str:
        return self.card.mlflow_version

    @property
    def header(self) -> list[tuple[bytes, bytes]]:
        return [(b"x-model-version", self.version.encode())]

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.infer(images)


def resolve(tag: str) -> str:
    """The exact Bento tag `tag` names now (`name:latest` → `name:<version>`), read from the
    store each time: a cheap file read, so the watcher can poll it."""
    return str(bentoml.models.get(tag).tag)


def challenger_of(champion_tag: str) -> str | None:
    """The Bento tag `make package` named challenger beside this champion, if any."""
    stored = bentoml.models.get(champion_tag)
    version = read_pointer(Path(stored.path))
    return f"{stored.tag.name}:{version}" if version else None


def load(tag: str, chunk: int, parallel: int) -> Loaded:
    """Load, trace, warm up and check `tag`; `LoadFailed` if any of it goes wrong."""
    try:
        import keras

        stored = bentoml.models.get(tag)
        card = ModelCard.from_metadata(stored.info.metadata)
        model = keras.saving.load_model(stored.path_of(MODEL_FILE), compile=False)
        infer = traced(model, chunk, parallel)
        infer(np.zeros((1, *SHAPE), np.uint8))  # build the graph before the first request
    except Exception as exc:  # anything: the old model keeps serving
        raise LoadFailed(tag, "load", f"{type(exc).__name__}: {exc}") from exc
    try:
        probe_size = check_probe(Path(stored.path), infer)
    except Exception as exc:
        raise LoadFailed(tag, "check", str(exc)) from exc
    info = ModelInfo.of(card, str(stored.tag))
    return Loaded(str(stored.tag), card, info, model, infer, probe_size)
