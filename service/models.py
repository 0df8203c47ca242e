"""One servable model: a Bento model loaded on its runtime, warmed up and checked, ready to
swap in.

Loading never touches what serves: the new model is built beside the old one, answers the probe
it was packaged with (common/rollout.py) and only then is handed to the batcher. Whatever fails
here raises `LoadFailed` with the stage that failed ("load" or "check"), so the caller keeps the
old model and says why.
"""

from __future__ import annotations

import gc
import logging
import threading
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import bentoml
import numpy as np

from common.card import ModelCard
from common.image import SHAPE
from common.rollout import check_probe, read_pointer
from common.runtimes import KERAS
from service import runtime
from service.forward import set_threads
from service.runtime import AUTO
from service.schemas import ModelInfo

log = logging.getLogger(__name__)

MODEL_FILE = "model.keras"


class LoadFailed(RuntimeError):
    """A model that must not serve: `stage` is "load" (unreadable, not buildable) or "check"."""

    def __init__(self, tag: str, stage: str, why: str) -> None:
        super().__init__(f"{tag}: {stage} failed: {why}")
        self.tag, self.stage = tag, stage


class KerasOnDemand:
    """The packaged Keras model, loaded the first time something needs it: at once when Keras
    serves, only at the first /explain (gradients) when OpenVINO does, so such a worker starts
    without TensorFlow (faster, ~hundreds of MB less; bench/RESULTS.md)."""

    def __init__(self, path: Path, threads: int, parallel: int) -> None:
        self.path, self.threads, self.parallel = path, threads, parallel
        self._model = None
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def check(self) -> None:
        """Raise unless the file is a whole Keras archive (its config and weights, every CRC
        right): what can be known without TensorFlow, so a damaged package is refused at load
        even when OpenVINO serves it."""
        with zipfile.ZipFile(self.path) as archive:
            missing = {"config.json", "model.weights.h5"} - set(archive.namelist())
            damaged = archive.testzip()
        if missing or damaged:
            raise ValueError(f"{self.path.name} lacks {sorted(missing)} or is damaged ({damaged})")

    def __call__(self):
        with self._lock:
            if self._model is None:
                set_threads(self.threads, self.parallel)
                import keras

                self._model = keras.saving.load_model(self.path, compile=False)
                # TensorFlow and Keras leave ~400,000 objects; frozen (as service.py freezes
                # what loads at start), full collections skip them instead of walking them
                # again (~190 ms each: a refused 1 MB body cost 190 ms of CPU without this)
                gc.collect()
                gc.freeze()
            return self._model


@dataclass(eq=False)
class Loaded:
    """A model ready to answer: call it on uint8 (n, 28, 28) for probabilities (n, 10)."""

    tag: str
    card: ModelCard
    info: ModelInfo
    keras: KerasOnDemand = field(repr=False)  # /explain needs its layers and gradients
    infer: Callable[[np.ndarray], np.ndarray] = field(repr=False)
    probe_size: int = 0

    @property
    def version(self) -> str:
        return self.card.mlflow_version

    @property
    def runtime(self) -> str:
        return self.info.runtime

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


def load(tag: str, chunk: int, parallel: int, threads: int = 1, wanted: str = AUTO) -> Loaded:
    """Load `tag` on the runtime `wanted` picks (service/runtime.py), warm it up and check it
    against its probe; `LoadFailed` if even Keras cannot serve it. A faster runtime that fails
    to build or to answer its probe is passed over for the next one, and the reason is kept."""
    try:
        stored = bentoml.models.get(tag)
        card = ModelCard.from_metadata(stored.info.metadata)
        folder = Path(stored.path)
        keras_model = KerasOnDemand(Path(stored.path_of(MODEL_FILE)), threads, parallel)
        keras_model.check()
        tried = runtime.candidates(wanted, card, folder)
    except Exception as exc:  # anything: the old model keeps serving
        raise LoadFailed(tag, "load", f"{type(exc).__name__}: {exc}") from exc
    passed = []  # the faster runtimes not taken, and why
    for candidate in tried:
        name, last = candidate.runtime, candidate.runtime == KERAS
        if candidate.skipped:
            passed.append(f"{name} {candidate.skipped}")
            continue
        try:
            infer = runtime.build(name, folder, keras_model, chunk, parallel, threads)
            infer(np.zeros((1, *SHAPE), np.uint8))  # build the graph before the first request
        except Exception as exc:
            if last:
                raise LoadFailed(tag, "load", f"{type(exc).__name__}: {exc}") from exc
            passed.append(f"{name} failed to load ({type(exc).__name__}: {exc})")
            continue
        try:
            probe_size = check_probe(folder, infer, runtime.probe_tolerance(name))
        except Exception as exc:
            if last:
                raise LoadFailed(tag, "check", str(exc)) from exc
            passed.append(f"{name} failed its probe ({exc})")
            continue
        break
    reason = f"DIGIT_RUNTIME={wanted}" + (f"; passed over: {'; '.join(passed)}" if passed else "")
    if passed:
        log.warning("%s serves on %s: %s", stored.tag, name, reason)
    info = ModelInfo.of(card, str(stored.tag), runtime=name, runtime_reason=reason)
    return Loaded(str(stored.tag), card, info, keras_model, infer, probe_size)
