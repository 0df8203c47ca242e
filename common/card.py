"""The model card: what the package step writes into a Bento model and the service reads back.

One typed schema for the contract between `pipelines/package.py` (which knows the registry and the
prepared data) and `service/` (which knows neither): where the model came from, how good it is,
what trained it and on which data, what the net is (its layers, parameters and multiply-adds), and
the drift reference of that data. It is stored as the Bento model's metadata, so
`bentoml models get TAG` shows it too. Every field has a default: a model packaged before a field
existed still loads (the store keeps old models), its new fields empty.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field

from common.drift import DriftReference


class Layer(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    name: str
    kind: str = Field(description="The Keras layer class (Conv2D, Dense, ...)")
    output_shape: list[int | None] = Field(description="One image's output, without the batch axis")
    parameters: int = Field(description="Its weights, trainable or not")


class Architecture(BaseModel):
    """The served net in brief; the one summary (pipelines/architecture.py) the model card
    Markdown and `/model` both show."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    input_shape: list[int | None] = Field(description="One image's input, without the batch axis")
    layers: list[Layer] = Field(description="Every layer after the input, in order")
    parameters: int = Field(description="All weights (Keras' count_params: the layers' sum)")
    multiply_adds: int = Field(description="Multiply-adds of one image's forward pass")


class RuntimeCheck(BaseModel):
    """evaluate's verdict on one runtime (common/runtimes.py): may it serve this model, and why."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    eligible: bool
    why: str = Field(description="The verdict in words, with its figures")
    accuracy: float | None = Field(None, description="On the official test set (None: not run)")
    agreement: float | None = Field(None, description="Share of test digits answered like Keras")
    layers: dict[str, str] = Field({}, description="int8: each conv/dense layer's precision")


class ModelCard(BaseModel):
    # Field names are the metadata keys; unknown keys (a newer writer) are ignored, not fatal.
    model_config = ConfigDict(frozen=True, extra="ignore", protected_namespaces=())

    registered_model: str = Field(description="The MLflow registered model's name")
    mlflow_version: str = Field(description="Its registry version")
    run_id: str = Field("", description="The MLflow run that trained it")
    source: str = Field("", description="The registry URI it was packaged from")
    test_accuracy: float = Field(math.nan, description="On the official 10k test set")
    ece: float | None = Field(None, description="Expected calibration error on the test set")
    train_wall_time_s: float | None = None
    train_compute_macs: float | None = Field(None, description="Training multiply-adds")
    git_commit: str = Field("unknown", description="The code's commit ('-dirty': uncommitted)")
    git_dirty_files: list[str] = Field([], description="The tracked files that were uncommitted")
    params_hash: str = Field("unknown", description="sha256 of all params (canonical JSON)")
    data_hash: str = Field("unknown", description="sha256 of the prepared data's contents")
    data_md5: dict[str, str] = Field(
        {}, description="DVC's md5 of each prepared file, as dvc.lock records it"
    )
    trained_at: str = Field("", description="When the training run started (UTC, ISO 8601)")
    params: dict[str, str] = Field({}, description="The training params (params.yaml's train.*)")
    architecture: Architecture | None = Field(None, description="None: packaged before it was")
    per_class_recall: dict[str, float] = Field(
        {}, description="Test-set recall of each digit, '0' to '9'"
    )
    markdown: str = Field(
        "", description="The file in the Bento model holding evaluate's model card ('': none)"
    )
    drift_reference: DriftReference | None = Field(
        None, description="The training data's ink statistics (None: packaged without one)"
    )
    runtimes: dict[str, RuntimeCheck] = Field(
        {}, description="evaluate's verdict per runtime ({}: packaged without OpenVINO IRs)"
    )

    def to_metadata(self) -> dict:
        """Plain JSON for `bentoml.models.create(metadata=...)`; what is None is left out."""
        return self.model_dump(mode="json", exclude_none=True)

    @classmethod
    def from_metadata(cls, metadata: dict) -> ModelCard:
        return cls.model_validate(dict(metadata))
