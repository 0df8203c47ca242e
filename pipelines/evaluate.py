"""Stage 4, evaluate: score the trained model on the official 10k test set, export it, log it.

The test split is scored here, and only here: accuracy and per-class scores, accuracy on slices
of hard images, calibration (ECE, reliability), the agreement of the SavedModel and TFLite
exports with the Keras model, and each OpenVINO runtime's accuracy, agreement and eligibility to
serve (pipelines/openvino_export.py; int8 is calibrated on the validation split, never on test);
and the accuracy on people's held-out feedback (`people`), when there is any. The numbers land
in metrics/eval.json (for `dvc metrics`), the plots in plots/ (for `dvc plots`), the model card
rendered from them in docs/model-card.md (pipelines/model_card.py), and everything in the same
MLflow run as train.
"""

from __future__ import annotations

import os
import sys
import types
from collections import Counter
from importlib.metadata import version
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: no display on servers or in CI

import keras
import mlflow
import numpy as np
from matplotlib.figure import Figure
from mlflow.models import Model, infer_signature
from sklearn.metrics import ConfusionMatrixDisplay, precision_recall_fscore_support

from pipelines import analysis, layout, model_card
from pipelines.architecture import summary
from pipelines.atomic import atomic_path, write_json, write_text
from pipelines.data import load_feedback, load_split
from pipelines.export import export_all
from pipelines.log import start
from pipelines.openvino_export import OPENVINO_ARTIFACT, export_openvino
from pipelines.paths import workspace
from pipelines.tracking import connect, read_json


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


def top_confusions(
    y_true: np.ndarray, y_pred: np.ndarray, n: int = 3
) -> list[tuple[int, int, int]]:
    """The `n` most frequent mistakes as (true, predicted, count), the most frequent first."""
    wrong = y_true != y_pred
    counts = Counter(zip(y_true[wrong].tolist(), y_pred[wrong].tolist(), strict=True))
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return [(t, p, c) for (t, p), c in ranked[:n]]


NOISE_IMAGES, NOISE_SEED = 100, 0


def off_distribution(net: keras.Model) -> dict[str, dict]:
    """What the model answers on inputs that are no digit (a blank, an all-white square, seeded
    uniform noise): the model card's evidence that a confidence is no "is it a digit?" test."""
    noise = np.random.default_rng(NOISE_SEED).integers(0, 256, (NOISE_IMAGES, 28, 28, 1))
    cases = {
        "blank": np.zeros((1, 28, 28, 1), np.uint8),
        "white": np.full((1, 28, 28, 1), 255, np.uint8),
        "noise": noise.astype(np.uint8),
    }
    answers = {}
    for name, x in cases.items():
        probs = np.asarray(net(x, training=False))
        top = probs.max(axis=1)
        answers[name] = {
            "images": len(x),
            "digit": int(np.bincount(probs.argmax(axis=1), minlength=10).argmax()),
            "confidence": float(top.mean()),
            "highest": float(top.max()),
            "confident": int((top > model_card.CONFIDENT).sum()),
        }
    return answers


def people_scores(net: keras.Model, people: dict[str, np.ndarray]) -> dict:
    """Accuracy on the held-out feedback (what people drew and labelled), overall and by the
    registry version that answered them then: how the served model did, and how this one does."""
    n = len(people["y"])
    if not n:
        return {"images": 0}
    probs = net.predict(people["x"], batch_size=1000, verbose=0)
    y = people["y"].astype(np.int64)
    right = probs.argmax(axis=1) == y
    eps = np.finfo(np.float32).eps
    by_version = {}
    for served in sorted(set(people["model_version"].tolist())):
        mine = people["model_version"] == served
        by_version[served] = {
            "images": int(mine.sum()),
            "accuracy": float(right[mine].mean()),  # this model
            "served_accuracy": float((people["answered"][mine] == y[mine]).mean()),  # then
        }
    return {
        "images": n,
        "accuracy": float(right.mean()),
        "loss": float(-np.mean(np.log(np.clip(probs[np.arange(n), y], eps, 1.0)))),
        "served_accuracy": float((people["answered"] == y).mean()),
        "by_version": by_version,
    }


def split_sizes() -> dict[str, int]:
    """Images per prepared split (only the labels are read)."""
    sizes = {}
    for name in layout.SPLITS:
        with np.load(workspace() / layout.split(name), allow_pickle=False) as npz:
            sizes[name] = len(npz["y"])
    return sizes


def _save_keras(path: str, **kwargs) -> None:
    os.makedirs(path, exist_ok=True)
    mlflow.keras.save_model(path=path, **kwargs)


# mlflow.keras, except that the model folder exists before the input example is written into it:
# MLflow 3.17 writes input_example.json first and fails (mlflow/mlflow#16183).
_KERAS_FLAVOR = types.SimpleNamespace(__name__="mlflow.keras", save_model=_save_keras)


# What loading the model needs (MLflow adds itself): stated, because inferring it costs MLflow a
# subprocess that loads TensorFlow and the model again, ~10 s of every evaluate stage.
REQUIREMENTS = ("keras", "numpy", "tensorflow")


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
        pip_requirements=[f"{name}=={version(name)}" for name in REQUIREMENTS],
    )
    return info.model_uri


def write_reliability_csv(target: Path, table: list[dict]) -> None:
    """The non-empty calibration bins, for `dvc plots` (x: mean confidence, y: accuracy)."""
    lines = ["bin,lower,upper,count,confidence,accuracy"]
    lines += [
        f"{b},{r['lower']:.6f},{r['upper']:.6f},{r['count']},{r['confidence']:.6f},"
        f"{r['accuracy']:.6f}"
        for b, r in enumerate(table)
        if r["count"]
    ]
    with atomic_path(target) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


def save_figure(fig: Figure, target: Path) -> None:
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png")


def log_run(
    run_id: str,
    result: dict,
    figures: dict[str, Figure],
    net: keras.Model,
    example: np.ndarray,
    card: str,
) -> str:
    """Log metrics, figures, slices, exports and the model card to the train stage's run; return
    the model URI."""
    ws = workspace()
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics(
            {
                "test_accuracy": result["accuracy"],
                "test_loss": result["loss"],
                "test_macro_f1": result["macro_f1"],
                "test_ece": result["ece"],
            }
        )
        mlflow.log_metrics({f"test_f1_digit_{d}": v["f1"] for d, v in result["per_class"].items()})
        recall = {f"test_recall_digit_{d}": v["recall"] for d, v in result["per_class"].items()}
        mlflow.log_metrics(recall)  # what `make package` gives the service (`GET /model`)
        mlflow.log_metrics(
            {f"test_slice_{name}_accuracy": s["accuracy"] for name, s in result["slices"].items()}
        )
        mlflow.log_metrics(
            {f"export_agreement_{k}": v for k, v in result["export_agreement"].items()}
        )
        for name, check in result["runtimes"].items():
            key = name.replace("-", "_")
            for figure in ("accuracy", "agreement"):
                if figure in check:
                    mlflow.log_metric(f"runtime_{key}_{figure}", check[figure])
            mlflow.log_metric(f"runtime_{key}_eligible", int(check["eligible"]))
        people = result["people"]
        mlflow.log_metric("people_images", people["images"])
        if people["images"]:
            mlflow.log_metrics(
                {"people_accuracy": people["accuracy"], "people_loss": people["loss"]}
            )
        for name, fig in figures.items():
            mlflow.log_figure(fig, f"plots/{name}")
        mlflow.log_dict(
            {"slices": result["slices"], "thresholds": result["slice_thresholds"]},
            "metrics/slices.json",
        )
        mlflow.log_dict(result, "metrics/eval.json")
        mlflow.log_text(card, model_card.ARTIFACT)
        mlflow.log_artifacts(str(ws / layout.SAVED_MODEL), artifact_path="export/saved_model")
        mlflow.log_artifact(str(ws / layout.TFLITE), artifact_path="export")
        mlflow.log_artifacts(str(ws / layout.OPENVINO), artifact_path=OPENVINO_ARTIFACT)
        return log_model(net, example)


def main() -> None:
    p = start("evaluate")
    ws = workspace()
    x_test, y_test = load_split("test")
    net = keras.saving.load_model(ws / layout.MODEL)
    probs = net.predict(x_test, batch_size=1000, verbose=0)
    y_true, y_pred = y_test.astype(np.int64), probs.argmax(axis=1)
    result = scores(y_true, probs)
    table = analysis.reliability_table(
        probs.max(axis=1), y_pred == y_true, p.evaluate.calibration_bins
    )
    result["ece"] = analysis.expected_calibration_error(table)
    result["slices"], result["slice_thresholds"] = analysis.slice_accuracy(x_test, y_true, y_pred)
    result["export_agreement"] = export_all(net, x_test, y_pred, ws)
    x_val, _ = load_split("val")  # int8 calibration and layer choice: never the test set
    test = (x_test, y_true, y_pred)
    result["runtimes"] = export_openvino(
        net, ws / layout.SAVED_MODEL, ws / layout.OPENVINO, x_val, test, p.evaluate
    )
    result["people"] = people_scores(net, load_feedback(layout.PEOPLE))

    with atomic_path(ws / layout.CONFUSION) as tmp:
        rows = np.column_stack([y_test, y_pred])
        np.savetxt(tmp, rows, fmt="%d", delimiter=",", header="actual,predicted", comments="")
    write_reliability_csv(ws / layout.RELIABILITY, table)
    gallery, _ = analysis.gallery_figure(x_test, y_true, y_pred, p.evaluate.gallery_size)
    save_figure(gallery, ws / layout.GALLERY)
    display = ConfusionMatrixDisplay.from_predictions(y_true, y_pred, labels=list(range(10)))
    display.ax_.set_title(f"MNIST test set: accuracy {result['accuracy']:.2%}")
    figures = {
        "confusion_matrix.png": display.figure_,
        "reliability_diagram.png": analysis.reliability_figure(table, result["ece"]),
        "misclassified.png": gallery,
    }

    connect(p.mlflow.experiment)
    run_id = read_json(ws / layout.RUN_INFO)["run_id"]
    card = model_card.render(
        result,
        read_json(ws / layout.TRAIN_METRICS),
        p,
        model_card.Lineage.from_tags(mlflow.get_run(run_id).data.tags),
        summary(net),
        reliability=table,
        splits=split_sizes(),
        confusions=top_confusions(y_true, y_pred),
        non_digits=off_distribution(net),
    )
    model_uri = log_run(run_id, result, figures, net, x_test[:1], card)
    write_json(ws / layout.EVAL_METRICS, result)
    write_text(ws / layout.MODEL_CARD, card)
    write_json(ws / layout.LOGGED_MODEL, {"model_uri": model_uri, "run_id": run_id})
    agree = result["export_agreement"]
    eligible = [name for name, check in result["runtimes"].items() if check["eligible"]]
    print(
        f"evaluate: test accuracy {result['accuracy']:.4f}, loss {result['loss']:.4f}, "
        f"ECE {result['ece']:.4f} on {result['n_test']} images; exports agree with Keras on "
        f"{agree['saved_model']:.2%} (SavedModel), {agree['tflite']:.2%} (TFLite); "
        f"runtimes eligible to serve: {', '.join(eligible)}; logged {model_uri}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
