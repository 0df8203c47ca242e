"""Serving formats beyond Keras: a TensorFlow SavedModel (TF Serving) and a TFLite flatbuffer.

A converted model is only worth shipping if it answers like the original, so each export is run
over the whole test set and its predicted digits are compared with the Keras model's.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import warnings
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from pipelines import layout
from pipelines.atomic import atomic_dir, atomic_path

BATCH = 1000


def export_saved_model(net: keras.Model, target: Path) -> None:
    """Write a SavedModel; signature `serving_default`: uint8 (-1, 28, 28, 1) → 10 probabilities."""
    with atomic_dir(target) as tmp:
        net.export(str(tmp), format="tf_saved_model", verbose=False)


def convert_tflite(saved_model: Path, target: Path) -> None:
    """Convert the SavedModel to TFLite (float32, no quantisation: the same answers, smaller)."""
    flatbuffer = tf.lite.TFLiteConverter.from_saved_model(str(saved_model)).convert()
    with atomic_path(target) as tmp:
        tmp.write_bytes(flatbuffer)


def predict_saved_model(path: Path, x: np.ndarray, batch: int = BATCH) -> np.ndarray:
    """Probabilities from the SavedModel's serving signature, as TF Serving would compute them."""
    serve = tf.saved_model.load(str(path)).signatures["serving_default"]
    out = []
    for i in range(0, len(x), batch):
        (probs,) = serve(tf.constant(x[i : i + batch])).values()
        out.append(probs.numpy())
    return np.concatenate(out)


def predict_tflite(path: Path, x: np.ndarray, batch: int = BATCH) -> np.ndarray:
    """Probabilities from the TFLite interpreter, its input resized to run `batch` images a call."""
    with warnings.catch_warnings():
        # tf.lite.Interpreter still works in TF 2.21; its successor (ai-edge-litert) is not a dep.
        warnings.filterwarnings("ignore", message=r"\s*Warning: tf.lite.Interpreter is deprecated")
        interpreter = tf.lite.Interpreter(model_path=str(path))
    (inp,), (outp,) = interpreter.get_input_details(), interpreter.get_output_details()
    out, shape = [], None
    for i in range(0, len(x), batch):
        chunk = x[i : i + batch]
        if chunk.shape != shape:  # the converted model's batch size is 1 until resized
            interpreter.resize_tensor_input(inp["index"], list(chunk.shape))
            interpreter.allocate_tensors()
            shape = chunk.shape
        interpreter.set_tensor(inp["index"], chunk)
        interpreter.invoke()
        out.append(interpreter.get_tensor(outp["index"]).copy())
    return np.concatenate(out)


def agreement(reference: np.ndarray, probs: np.ndarray) -> float:
    """Share of images on which `probs` predicts the same digit as the reference labels."""
    return float(np.mean(probs.argmax(axis=1) == reference))


def export_all(net: keras.Model, x: np.ndarray, reference: np.ndarray, ws: Path) -> dict:
    """Write both exports under `ws` and return their agreement with the Keras predictions."""
    export_saved_model(net, ws / layout.SAVED_MODEL)
    convert_tflite(ws / layout.SAVED_MODEL, ws / layout.TFLITE)
    return {
        "saved_model": agreement(reference, predict_saved_model(ws / layout.SAVED_MODEL, x)),
        "tflite": agreement(reference, predict_tflite(ws / layout.TFLITE, x)),
    }
