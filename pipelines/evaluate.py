"""Stage 4, evaluate: score the trained model on the official 10k test set, and log the model.

Only the test split is used here, and only here; the numbers land in metrics/eval.json (for
`dvc metrics`), the confusion plot in plots/ (for `dvc plots`), and the same MLflow run as train.
"""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: no display on servers or in CI

import keras
import mlflow
import numpy as np
from mlflow.models import Model, infer_signature
from sklearn.metrics import ConfusionMatrixDisplay, precision_recall_fscore_support

from pipelines.atomic import atomic_path, write_json
from pipelines.data import load_split
from pipelines.log import start
from pipelines.paths import workspace
from pipelines.tracking import connect, read_json
from pipelines.train import MODEL, RUN_INFO

METRICS = Path("metrics/eval.json")
CONFUSION = Path("plots/confusion.csv")
LOGGED_MODEL = Path("models/logged_model.json")


def scores(y_true: np.ndarray, probs: np.ndarray) -> dict:
    """Accuracy, log loss and per-class precision/recall/F1 from predicted probabilities."""
    y_pred = probs.argmax(axis=1)
    eps = np.finfo(np.float32).eps
    loss = float(-np.mean(np.log(np.clip(probs[np.arange(len(y_true)), y_true], eps, 1.0))))
    prec, rec, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=range(10), zero_division=0
    )
    return {
        "accuracy": float(np.mean(y_pred == y_true)),
        "loss": loss,
        "n_test": len(y_true),
        "macro_f1": float(np.mean(f1)),
        "per_class": {
            str(d): {
                "precision": round(float(prec[d]), 6),
                "recall": round(float(rec[d]), 6),
                "f1": round(float(f1[d]), 6),
                "support": int(support[d]),
            }
            for d in range(10)
        },
    }


def _save_keras(path: str, **kwargs) -> None:
    os.makedirs(path, exist_ok=True)
    mlflow.keras.save_model(path=path, **kwargs)


# mlflow.keras, except that the model folder exists before the input example is written into it:
# MLflow 3.17 writes input_example.json first and fails (mlflow/mlflow#16183).
_KERAS_FLAVOR = types.SimpleNamespace(__name__="mlflow.keras", save_model=_save_keras)


def log_model(net: keras.Model, example: np.ndarray) -> str:
    """Log the Keras model with a uint8 (-1, 28, 28, 1) signature and an input example."""
    signature = infer_signature(example, net(example, training=False).numpy())
    info = Model.log(
        artifact_path=None,
        name="model",
        flavor=_KERAS_FLAVOR,
        model=net,
        signature=signature,
        input_example=example,
    )
    return info.model_uri


def main() -> None:
    p = start("evaluate")
    ws = workspace()
    x_test, y_test = load_split("test")
    net = keras.saving.load_model(ws / MODEL)
    probs = net.predict(x_test, batch_size=1000, verbose=0)
    result = scores(y_test.astype(np.int64), probs)

    with atomic_path(ws / CONFUSION) as tmp:
        rows = np.column_stack([y_test, probs.argmax(axis=1)])
        np.savetxt(tmp, rows, fmt="%d", delimiter=",", header="actual,predicted", comments="")

    connect(p.mlflow.experiment)
    run_id = read_json(ws / RUN_INFO)["run_id"]
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics(
            {
                "test_accuracy": result["accuracy"],
                "test_loss": result["loss"],
                "test_macro_f1": result["macro_f1"],
            }
        )
        mlflow.log_metrics({f"test_f1_digit_{d}": v["f1"] for d, v in result["per_class"].items()})
        display = ConfusionMatrixDisplay.from_predictions(
            y_test, probs.argmax(axis=1), labels=list(range(10))
        )
        display.ax_.set_title(f"MNIST test set: accuracy {result['accuracy']:.2%}")
        mlflow.log_figure(display.figure_, "plots/confusion_matrix.png")
        mlflow.log_dict(result, "metrics/eval.json")
        model_uri = log_model(net, x_test[:1])
    write_json(ws / METRICS, result)
    write_json(ws / LOGGED_MODEL, {"model_uri": model_uri, "run_id": run_id})
    print(
        f"evaluate: test accuracy {result['accuracy']:.4f}, loss {result['loss']:.4f} "
        f"on {result['n_test']} images; logged {model_uri}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
