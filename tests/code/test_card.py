"""The model card: what pipelines/package.py writes into the Bento model, the service reads."""

from __future__ import annotations

import math

import numpy as np

from common.card import Architecture, Layer, ModelCard
from common.drift import DriftReference, reference
from service.schemas import MODEL_CARD_PATH, ModelInfo

ARCHITECTURE = Architecture(
    input_shape=[28, 28, 1],
    layers=[
        Layer(name="flatten", kind="Flatten", output_shape=[784], parameters=0),
        Layer(name="probabilities", kind="Dense", output_shape=[10], parameters=7850),
    ],
    parameters=7850,
    multiply_adds=7840,
)


def test_a_card_survives_the_metadata_round_trip():
    ref = DriftReference.model_validate(reference(np.zeros((3, 28, 28), np.uint8)))
    card = ModelCard(
        registered_model="mnist-cnn",
        mlflow_version="4",
        run_id="abc",
        test_accuracy=0.9972,
        ece=0.0015,
        params={"train.epochs": "40"},
        drift_reference=ref,
        git_dirty_files=["params.yaml"],
        data_md5={"data/prepared/test.npz": "0" * 32},
        architecture=ARCHITECTURE,
        per_class_recall={str(d): 1.0 - d / 100 for d in range(10)},
        markdown="model-card.md",
    )
    metadata = card.to_metadata()
    assert metadata["drift_reference"]["n_images"] == 3
    assert metadata["architecture"]["layers"][1]["parameters"] == 7850
    assert "train_wall_time_s" not in metadata  # None is left out
    assert ModelCard.from_metadata(metadata) == card
    # /model says what the card says, and where its Markdown is served
    info = ModelInfo.of(card, "mnist-cnn:v4-abc")
    assert (info.architecture, info.per_class_recall) == (ARCHITECTURE, card.per_class_recall)
    assert (info.git_dirty_files, info.data_md5) == (["params.yaml"], card.data_md5)
    assert info.model_card == MODEL_CARD_PATH


def test_the_metadata_older_packages_wrote_still_reads():
    """What service/package.py wrote before the card existed (a Bento store keeps such models)."""
    old = {
        "registered_model": "mnist-cnn",
        "mlflow_version": "6",
        "run_id": "3284d7ae",
        "test_accuracy": 0.9972,
        "git_commit": "f9364e1",
        "data_hash": "0" * 64,
        "source": "models:/mnist-cnn@champion",
        "train_wall_time_s": None,
        "train_compute_macs": 3.28e13,
        "ece": None,
        "params": {"train.epochs": "40"},
        "drift_reference": reference(np.zeros((2, 28, 28), np.uint8)),
        "written_by_a_newer_version": True,  # unknown keys are ignored
    }
    card = ModelCard.from_metadata(old)
    assert (card.mlflow_version, card.train_compute_macs, card.ece) == ("6", 3.28e13, None)
    assert card.drift_reference.ink_box_pixels.counts[0] == 2  # blank: box size 0
    # packaged before the architecture, recall, lineage and Markdown card: empty, and /model too
    assert (card.architecture, card.per_class_recall, card.markdown) == (None, {}, "")
    assert (card.git_dirty_files, card.params_hash, card.data_md5, card.trained_at) == (
        [],
        "unknown",
        {},
        "",
    )
    info = ModelInfo.of(card, "mnist-cnn:v6-3284d7ae")
    assert (info.architecture, info.per_class_recall, info.model_card) == (None, {}, None)
    assert info.git_commit == "f9364e1" and info.params == {"train.epochs": "40"}


def test_a_card_without_lineage_says_unknown():
    card = ModelCard.from_metadata({"registered_model": "m", "mlflow_version": "1"})
    assert (card.git_commit, card.data_hash, card.drift_reference) == ("unknown", "unknown", None)
    assert math.isnan(card.test_accuracy)
