"""OpenVINO IRs of the trained net (fp32, and int8 where it answers like Keras), each scored on
the official test set as the service would run it.

fp32 is the SavedModel converted as it is. int8 is NNCF's post-training quantization, calibrated
on the first `evaluate.int8_calibration_images` of the validation split (with NNCF's full bias
correction unless `evaluate.int8_fast_bias_correction`), with NNCF's accuracy
control choosing the layers that stay fp32 by measurement: it quantizes every layer, ranks the
layers by how much quantizing each one changes the answers on the validation split, and returns
them to fp32, most harmful first, until int8 agrees with Keras on all but
`evaluate.int8_max_val_disagreement` of the validation digits. No layer is named here: the net
changes. The test set only scores the result (common/runtimes.py: the eligibility rule).

Each IR is converted afresh from the SavedModel, quantized once and saved; scoring reads the saved
file, so what is checked is what the service will load (`compile_model` changes its model: a
reused model object scored ~97% instead of 99.7% in an earlier measurement).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from common import runtimes
from common.runtimes import RUNTIMES_FILE, no_telemetry
from pipelines.atomic import atomic_dir
from pipelines.params import Evaluate

if TYPE_CHECKING:  # imported where used: `make package` reads the constants without TensorFlow
    import keras

OPENVINO_ARTIFACT = "export/openvino"  # the folder on the MLflow run
VAL_BATCH = 500
LAYOUT_OPS = {"Convert", "Transpose", "Reshape", "Squeeze", "Unsqueeze"}
QUANTIZABLE = {"Convolution", "MatMul", "GroupConvolution"}


def convert(saved_model: Path):
    """A fresh ov.Model of the SavedModel (uint8 pixels in, probabilities out)."""
    no_telemetry()
    import openvino as ov

    return ov.convert_model(str(saved_model))


def save_ir(model, target: Path) -> None:
    """Write model.xml + model.bin atomically, weights as they are (OpenVINO's default would
    compress them to fp16)."""
    import openvino as ov

    with atomic_dir(target) as tmp:
        ov.save_model(model, str(tmp / "model.xml"), compress_to_fp16=False)


def _int8_weights(node, depth: int = 4) -> bool:
    """Whether the weights of a convolution or matmul are stored as 8-bit integers (NNCF
    dequantizes them in the graph: int8 constant → Convert → Multiply)."""
    if node.get_type_name() == "Constant":
        return node.get_element_type().get_type_name() in ("i8", "u8", "i4", "u4")
    if depth == 0:
        return False
    return any(_int8_weights(i.get_source_output().get_node(), depth - 1) for i in node.inputs())


def layer_precisions(ov_model, net: keras.Model) -> dict[str, str]:
    """{layer: "int8" | "fp32"} for each convolution and dense layer, under its Keras name when
    the graph has one op per Keras layer (the IR's own names are generated, e.g. Transpose_1038)."""
    import keras

    ops = [op for op in ov_model.get_ordered_ops() if op.get_type_name() in QUANTIZABLE]
    kinds = (keras.layers.Conv2D, keras.layers.Dense)
    names = [layer.name for layer in net.layers if isinstance(layer, kinds)]
    if len(names) != len(ops):
        names = [op.get_friendly_name() for op in ops]
    return {
        name: "int8" if _int8_weights(op.input(1).get_source_output().get_node()) else "fp32"
        for name, op in zip(names, ops, strict=True)
    }


def quantize_int8(saved_model: Path, x_val: np.ndarray, keras_val: np.ndarray, cfg: Evaluate):
    """NNCF int8 with accuracy control on the validation split (see the module's docstring)."""
    import logging

    no_telemetry()
    import nncf

    nncf.set_log_level(logging.WARNING)
    calibration = x_val[: cfg.int8_calibration_images]
    batches = [x_val[i : i + VAL_BATCH] for i in range(0, len(x_val), VAL_BATCH)]

    def agreement(compiled, data) -> float:
        answers = np.concatenate([compiled(b)[0].argmax(axis=1) for b in data])
        return float(np.mean(answers == keras_val[: len(answers)]))

    return nncf.quantize_with_accuracy_control(
        convert(saved_model),
        calibration_dataset=nncf.Dataset(calibration, lambda x: x[None]),
        validation_dataset=nncf.Dataset(batches, lambda b: b),
        validation_fn=agreement,
        max_drop=cfg.int8_max_val_disagreement,
        drop_type=nncf.DropType.ABSOLUTE,
        subset_size=len(calibration),
        fast_bias_correction=cfg.int8_fast_bias_correction,
    )


def score(
    folder: Path, runtime: str, x: np.ndarray, y: np.ndarray, keras_digits: np.ndarray
) -> dict:
    """Accuracy and agreement with Keras of `runtime` on (x (n, 28, 28, 1), y), read from the
    saved IR."""
    cores = len(os.sched_getaffinity(0))
    forward = runtimes.openvino_forward(folder / runtimes.IR[runtime], runtime, 256, cores)
    digits = forward(x[..., 0]).argmax(axis=1)
    return {
        "accuracy": float(np.mean(digits == y)),
        "agreement": float(np.mean(digits == keras_digits)),
    }


def judged(figures: dict, keras_accuracy: float) -> dict:
    eligible, why = runtimes.verdict(figures["accuracy"], figures["agreement"], keras_accuracy)
    return {**figures, "eligible": eligible, "why": why}


def export_openvino(
    net: keras.Model,
    saved_model: Path,
    target: Path,
    x_val: np.ndarray,
    test: tuple[np.ndarray, np.ndarray, np.ndarray],
    cfg: Evaluate,
) -> dict[str, dict]:
    """Write the IRs and `runtimes.json` under `target`; return each runtime's test figures and
    verdict, Keras (the reference) included. `test`: images, labels and Keras' digits."""
    x_test, y_test, keras_test = test
    keras_val = net.predict(x_val, batch_size=1000, verbose=0).argmax(axis=1)
    keras_accuracy = float(np.mean(keras_test == y_test))
    found: dict[str, dict] = {
        runtimes.KERAS: {
            "accuracy": keras_accuracy,
            "agreement": 1.0,
            "eligible": True,
            "why": "the reference",
        }
    }
    with atomic_dir(target) as tmp:
        save_ir(convert(saved_model), tmp / "fp32")
        figures = score(tmp, runtimes.FP32, x_test, y_test, keras_test)
        found[runtimes.FP32] = judged(figures, keras_accuracy)
        if runtimes.runs_here(runtimes.BF16, runtimes.cpu_capabilities()):
            figures = score(tmp, runtimes.BF16, x_test, y_test, keras_test)
            found[runtimes.BF16] = judged(figures, keras_accuracy)
        else:
            found[runtimes.BF16] = {
                "eligible": False,
                "why": "not measured: this CPU has no bf16 (AVX-512 BF16)",
            }
        int8 = quantize_int8(saved_model, x_val, keras_val, cfg)
        layers = layer_precisions(int8, net)
        if "int8" not in layers.values():
            found[runtimes.INT8] = {
                "eligible": False,
                "why": "no layer could be int8 within the validation bound",
                "layers": layers,
            }
        else:
            save_ir(int8, tmp / "int8")
            figures = score(tmp, runtimes.INT8, x_test, y_test, keras_test)
            found[runtimes.INT8] = {
                **judged(figures, keras_accuracy),
                "layers": layers,
                "calibration_images": min(cfg.int8_calibration_images, len(x_val)),
            }
        (tmp / RUNTIMES_FILE).write_text(json.dumps(found, indent=2, sort_keys=True) + "\n")
    for name, check in found.items():
        print(f"evaluate: runtime {name}: {check['why']}", file=sys.stderr)
    return found
