"""The model card: what pipelines/package.py writes into the Bento model, the service reads."""

from __future__ import annotations

import math

import numpy as np

from common.card import ModelCard
from common.drift import DriftReference, reference


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
    )
    metadata = card.to_metadata()
    assert metadata["drift_reference"]["n_images"] == 3
    assert "train_wall_time_s" not in metadata  # None is left out
    assert ModelCard.from_metadata(metadata) == card


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


def test_a_card_without_lineage_says_unknown():
    card = ModelCard.from_metadata({"registered_model": "m", "mlflow_version": "1"})
    assert (card.git_commit, card.data_hash, card.drift_reference) == ("unknown", "unknown", None)
    assert math.isnan(card.test_accuracy)
