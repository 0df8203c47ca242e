"""What the API takes and answers, as pydantic models: BentoML validates with them and documents
them in the OpenAPI spec (`/docs.json`), so the types here are the API's contract."""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, Field, Strict

from common.card import Architecture, ModelCard, RuntimeCheck
from common.feedback_store import MAX_VERSION
from common.image import SIDE

Scale = Literal["0-255", "0-1"]
# Strict: JSON numbers only (no `true`, no "7"), 0-255, exactly 28 × 28, so the schema says what is
# accepted and generated clients send that. The Guard checks the same before BentoML parses.
Pixel = Annotated[float, Strict(), Field(ge=0, le=255)]
Row = Annotated[list[Pixel], Field(min_length=SIDE, max_length=SIDE)]
Grid = Annotated[list[Row], Field(min_length=SIDE, max_length=SIDE)]
SCALE_DOC = "'0-255' (default): pixel values 0-255; '0-1': floats 0-1 (multiplied by 255)"
GRID_DOC = "28 rows of 28 pixel values, white ink on black: numbers 0-255 (0-1 with scale '0-1')"
MAX_CHANNELS = 16  # feature maps per layer in an explanation (the first ones)


class Prediction(BaseModel):
    digit: int = Field(description="The most likely digit, 0-9")
    confidence: float = Field(description="The probability of that digit")
    probabilities: list[float] = Field(description="Probability of each digit 0-9, in order")
    model_version: str = Field(description="The MLflow registry version that answered")


class SeenPrediction(Prediction):
    seen: list[list[int]] = Field(
        description="The 28×28 pixels (0-255, white ink on black) the model saw after preprocessing"
    )
    prediction_id: str | None = Field(
        None,
        description="Signs this answer (seen, digit, model_version, time, confidence) for POST "
        "/feedback; null when the feedback loop is off",
    )


class BatchItem(BaseModel):
    digit: int
    confidence: float
    probabilities: list[float]


class BatchPrediction(BaseModel):
    predictions: list[BatchItem] = Field(description="One result per image, in order")
    model_version: str


class Rollout(BaseModel):
    follows_store: bool = Field(
        description="Whether this worker swaps in a newly packaged champion (DIGIT_MODEL_TAG "
        "ending in :latest, DIGIT_RELOAD_INTERVAL_S > 0)"
    )
    reload_interval_s: float
    challenger_version: str | None = Field(description="The challenger this worker serves")
    challenger_bento_tag: str | None
    canary_share: float = Field(description="Share of requests the challenger answers")
    shadow_share: float = Field(description="Share of images the challenger also answers, unseen")


MODEL_CARD_PATH = "/model/card"


class ModelInfo(BaseModel):
    name: str
    version: str = Field(description="MLflow registry version")
    run_id: str
    bento_tag: str
    test_accuracy: float
    train_wall_time_s: float | None
    train_compute_macs: float | None
    ece: float | None
    git_commit: str = Field(description="The code's commit ('-dirty': uncommitted changes)")
    git_dirty_files: list[str] = Field(description="The tracked files that were uncommitted")
    params_hash: str = Field(description="sha256 of the params training read (canonical JSON)")
    data_hash: str = Field(description="sha256 of the prepared data's contents")
    data_md5: dict[str, str] = Field(
        description="DVC's md5 of each prepared file: compare with a commit's dvc.lock"
    )
    trained_at: str = Field(
        description="When the training run started (UTC, ISO 8601; '': unknown)"
    )
    params: dict[str, str] = Field(description="The training params (params.yaml's train.*)")
    per_class_recall: dict[str, float] = Field(description="Test-set recall of each digit")
    architecture: Architecture | None = Field(
        description="Layers, parameters, multiply-adds per image (None: packaged without)"
    )
    model_card: str | None = Field(
        description="Where the Markdown model card is served (None: packaged without one)"
    )
    runtime: str = Field(
        "keras", description="What computes the answers: keras, openvino-fp32, -bf16 or -int8"
    )
    runtime_reason: str = Field(
        "", description="DIGIT_RUNTIME, and why faster runtimes were passed over"
    )
    runtimes: dict[str, RuntimeCheck] = Field(
        {}, description="evaluate's verdict per runtime: test accuracy, agreement with Keras"
    )
    rollout: Rollout | None = None

    @classmethod
    def of(
        cls, card: ModelCard, bento_tag: str, runtime: str = "keras", runtime_reason: str = ""
    ) -> ModelInfo:
        return cls(
            name=card.registered_model,
            version=card.mlflow_version,
            run_id=card.run_id,
            bento_tag=bento_tag,
            test_accuracy=card.test_accuracy,
            train_wall_time_s=card.train_wall_time_s,
            train_compute_macs=card.train_compute_macs,
            ece=card.ece,
            git_commit=card.git_commit,
            git_dirty_files=card.git_dirty_files,
            params_hash=card.params_hash,
            data_hash=card.data_hash,
            data_md5=card.data_md5,
            trained_at=card.trained_at,
            params=card.params,
            per_class_recall=card.per_class_recall,
            architecture=card.architecture,
            model_card=MODEL_CARD_PATH if card.markdown else None,
            runtime=runtime,
            runtime_reason=runtime_reason,
            runtimes=card.runtimes,
        )


class FeatureMaps(BaseModel):
    layer: str = Field(description="The convolution layer's name in the model")
    channels: int = Field(description=f"Its channel count (maps holds the first {MAX_CHANNELS})")
    maps: list[list[list[int]]] = Field(
        description="(channel, row, column) after ReLU, each channel scaled to 0-255"
    )


class Explanation(BaseModel):
    digit: int = Field(description="The class explained: the model's answer")
    probabilities: list[float] = Field(description="Probability of each digit 0-9")
    features: list[FeatureMaps] = Field(description="The first convolution layers' feature maps")
    gradcam: list[list[int]] = Field(
        description="28×28, 0-255: Grad-CAM of the last convolution layer for `digit`"
    )
    saliency: list[list[int]] = Field(
        description="28×28, 0-255: |d probability / d pixel|, the pixels that would move it most"
    )


# The feedback loop (service/feedback.py). Strict like Pixel: JSON integers only.
SeenPixel = Annotated[int, Strict(), Field(ge=0, le=255)]
SeenGrid = Annotated[
    list[Annotated[list[SeenPixel], Field(min_length=SIDE, max_length=SIDE)]],
    Field(min_length=SIDE, max_length=SIDE),
]
Digit = Annotated[int, Strict(), Field(ge=0, le=9)]
Version = Annotated[str, Field(min_length=1, max_length=MAX_VERSION)]
PREDICTION_ID = r"^(0|[1-9][0-9]{0,11})\.(0|[1-9][0-9]{0,6})\.[0-9a-f]{64}$"


class FeedbackStored(BaseModel):
    stored: bool = Field(description="Always true: the row is in the feedback database")
    id: int = Field(description="The row's id")
    label: int | None = Field(description="The label stored (null: not sure, queued for a helper)")
    correct: bool | None = Field(description="Whether the answer was the label (null: not sure)")
    model_version: str = Field(description="The registry version that answered")


class Reviewed(BaseModel):
    reviewed: int = Field(description="The row a helper labelled")
    label: int


class FeedbackInfo(BaseModel):
    enabled: bool = Field(description="Whether POST /feedback takes feedback (DIGIT_FEEDBACK)")
    queue_below: float = Field(
        description="Answers less confident than this may be sent as not sure (label null)"
    )
    max_age_s: float = Field(description="How long a prediction_id may be used")


class QueueItem(BaseModel):
    id: int
    seen: list[list[int]] = Field(description="The 28×28 the model saw")
    answered: int
    confidence: float
    label: int | None = Field(description="The sender's label (null: not sure)")
    model_version: str


class FeedbackQueue(BaseModel):
    below: float = Field(description="Only answers less confident than this are queued")
    items: list[QueueItem]


# Reply builders: the model's probabilities (n, 10) and the registry version that answered; each
# takes the (n, 28, 28) images answered too, which only the picture reply shows back.


def _fields(probs: np.ndarray, version: str) -> dict:
    p = probs[0].astype(float)
    digit = int(p.argmax())
    return dict(
        digit=digit,
        confidence=float(p[digit]),
        probabilities=[round(v, 6) for v in p.tolist()],
        model_version=version,
    )


def prediction(probs: np.ndarray, version: str, images: np.ndarray | None = None) -> Prediction:
    """One image's answer."""
    return Prediction(**_fields(probs, version))


def seen_prediction(probs: np.ndarray, version: str, images: np.ndarray) -> SeenPrediction:
    """One picture's answer, with the 28×28 the model saw in it."""
    return SeenPrediction(**_fields(probs, version), seen=images[0].tolist())


def batch_prediction(
    probs: np.ndarray, version: str, images: np.ndarray | None = None
) -> BatchPrediction:
    """A batch's answers, one item per image in order."""
    digits = probs.argmax(axis=1)
    return BatchPrediction(
        predictions=[
            BatchItem(
                digit=int(d),
                confidence=float(p[d]),
                probabilities=[round(v, 6) for v in p.astype(float).tolist()],
            )
            for d, p in zip(digits, probs, strict=True)
        ],
        model_version=version,
    )
