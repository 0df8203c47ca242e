"""Stage 3, train: fit the CNN on the training split, watching the validation split.

Opens the MLflow run that evaluate later continues: params, per-epoch metrics, lineage tags, and
the training compute (epochs run × training images × forward multiply-adds per image). A
tracking-server outage during training only delays the metrics (pipelines/epoch_log.py).

Resumable (pipelines/resume.py): after Ctrl-C or a crash, the next `dvc repro` continues after the
last completed epoch, in the same MLflow run, and ends with the same weights as an uninterrupted
run.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import keras
import mlflow
import numpy as np
import tensorflow as tf
from mlflow.exceptions import MlflowException

from common import cpu
from pipelines import layout, resume
from pipelines import model as model_mod
from pipelines.atomic import atomic_path, write_json, write_text
from pipelines.data import load_feedback, load_split
from pipelines.epoch_log import EpochMetrics, patiently
from pipelines.log import start
from pipelines.paths import workspace
from pipelines.tracking import connect, flatten, lineage

# What dvc.yaml gives this stage (`params:`); their hash is the run's `params_hash` lineage tag.
TRAIN_PARAMS = {"seed", "train", "mlflow"}


def make_deterministic(seed: int) -> None:
    """Same params, same machine → same weights: seed everything, ask TF for deterministic ops."""
    tf.keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def dataset(x: np.ndarray, y: np.ndarray, batch_size: int) -> tf.data.Dataset:
    """The validation data: batched and prefetched, labels one-hot (for label smoothing)."""
    return tf.data.Dataset.from_tensor_slices((x, tf.one_hot(y, 10))).batch(batch_size).prefetch(2)


def epochs_dataset(
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    seed: int,
    first: int,
    last: int,
    weights: np.ndarray | None = None,
) -> tf.data.Dataset:
    """Epochs `first`..`last - 1` back to back, each shuffled with its own seed (seed, epoch):
    epoch k sees the same batches whether the run started at 0 or resumed at k. With `weights`,
    each image's loss is weighted (feedback rows); without, the data is exactly MNIST's."""
    columns = (x, tf.one_hot(y, 10)) if weights is None else (x, tf.one_hot(y, 10), weights)
    base = tf.data.Dataset.from_tensor_slices(columns)

    def epoch(e: tf.Tensor) -> tf.data.Dataset:
        return base.shuffle(len(y), seed=seed * 100_003 + e).batch(batch_size)

    return tf.data.Dataset.range(first, last).flat_map(epoch).prefetch(tf.data.AUTOTUNE)


class Progress(keras.callbacks.Callback):
    """After Keras' own epoch line, where the run stands: "epoch 7/18, about 6 min left"."""

    def __init__(self, first: int, last: int, clock: Any = time.perf_counter) -> None:
        super().__init__()
        self.first, self.last, self.clock = first, last, clock

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.started = self.clock()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        line = progress_line(epoch + 1, self.first, self.last, self.clock() - self.started)
        print(f"train: {line}", file=sys.stderr, flush=True)


def progress_line(epoch: int, first: int, last: int, elapsed_s: float) -> str:
    """'epoch 7/18, about 6 min left': this attempt's mean epoch times the epochs to go."""
    if epoch >= last:
        return f"epoch {epoch}/{last}, done in {elapsed_s / 60:.1f} min"
    left = elapsed_s / max(epoch - first, 1) * (last - epoch)
    eta = f"about {left / 60:.0f} min left" if left >= 90 else f"about {left:.0f} s left"
    return f"epoch {epoch}/{last}, {eta}"


def open_run(saved: resume.Saved | None, backup: resume.Backup) -> tuple[Any, resume.Saved | None]:
    """The MLflow run to train in: the backed-up one when resuming, else a new one."""
    if saved is not None:
        try:
            return mlflow.start_run(run_id=saved.run_id), saved
        except MlflowException:  # the run is gone (deleted, another store): start over
            print("train: the backed-up MLflow run is gone; starting over", file=sys.stderr)
            saved = None
    backup.start()
    return mlflow.start_run(run_name=f"train-{time.strftime('%Y%m%d-%H%M%S')}"), None


def read_history(path: Path) -> list[dict[str, float]]:
    """The per-epoch rows CSVLogger wrote, across every attempt of this run."""
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    return [dict(zip(header, map(float, line.split(",")), strict=True)) for line in lines[1:]]


def with_feedback(
    x: np.ndarray, y: np.ndarray, feedback: dict[str, np.ndarray], weight: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The training images with the feedback share appended, and the loss weights (None: no
    feedback to add, so training is exactly what it was without the loop)."""
    if not len(feedback["y"]) or weight == 0:
        return x, y, None
    weights = np.concatenate(
        [np.ones(len(y), np.float32), np.full(len(feedback["y"]), weight, np.float32)]
    )
    return (np.concatenate([x, feedback["x"]]), np.concatenate([y, feedback["y"]]), weights)


def main() -> None:
    p = start("train")
    ws = workspace()
    (x_tr, y_tr), (x_val, y_val) = load_split("train"), load_split("val")
    x_test, y_test = load_split("test")
    feedback, people = load_feedback(layout.FEEDBACK_TRAIN), load_feedback(layout.PEOPLE)
    x_fit, y_fit, weights = with_feedback(x_tr, y_tr, feedback, p.train.feedback_weight)
    make_deterministic(p.seed)
    steps_per_epoch = -(-len(y_fit) // p.train.batch_size)
    net, trainer = model_mod.build(p.train, seed=p.seed)
    model_mod.compile_for_training(trainer, p.train, steps_per_epoch)
    macs = model_mod.forward_macs(net)
    files = [layout.split(name) for name in layout.SPLITS] + [layout.FEEDBACK_TRAIN, layout.PEOPLE]
    trained_by = p.model_dump(include=TRAIN_PARAMS)  # the params dvc.yaml gives this stage
    data = [x_tr, y_tr, x_val, y_val, x_test, y_test]
    tags = lineage(trained_by, data, files, feedback={"train": feedback, "people": people})
    hashed = tags["data_hash"] + tags["feedback_hash"]
    backup = resume.Backup(
        ws,
        resume.key(
            params=trained_by,
            data=hashed,
            code=resume.code_fingerprint(),
            versions=[tf.__version__, keras.__version__, np.__version__],
        ),
    )

    connect(p.mlflow.experiment)
    run_ctx, saved = open_run(backup.load(), backup)
    with run_ctx as run:
        mlflow.set_tags(
            {
                **tags,
                "dvc_stage": "train",
                "dvc_experiment": os.environ.get("DVC_EXP_NAME", ""),  # set by `dvc exp run`
                "cpu": cpu.describe(),  # training is bit-identical only on one CPU model
            }
        )
        if saved is None:
            mlflow.log_params(flatten(p.model_dump()))
            mlflow.log_params({"model.parameters": net.count_params(), "model.forward_macs": macs})
        first = 0
        if saved is not None:
            resume.restore(trainer, saved)
            first = saved.epoch
            print(f"train: resuming after epoch {first} (backup {backup.folder})", file=sys.stderr)
        last = first if saved is not None and saved.stopped else p.train.epochs
        shipper = EpochMetrics(run.info.run_id)  # survives a tracking-server outage
        callbacks: list[keras.callbacks.Callback] = [shipper]
        early = None
        if p.train.early_stopping_patience:
            early = keras.callbacks.EarlyStopping(
                monitor="val_loss",
                patience=p.train.early_stopping_patience,
                restore_best_weights=True,
                verbose=1,
            )
            callbacks.append(early)
        callbacks.append(keras.callbacks.CSVLogger(str(backup.history), append=True))
        callbacks.append(Progress(first, last))
        offset = saved.wall_time_s if saved is not None else 0.0
        callbacks.append(
            resume.EpochBackup(backup, run.info.run_id, offset, time.perf_counter, early, saved)
        )
        started = time.perf_counter()
        trainer.fit(
            epochs_dataset(x_fit, y_fit, p.train.batch_size, p.seed, first, last, weights),
            validation_data=dataset(x_val, y_val, 1000),
            epochs=last,
            initial_epoch=first,
            steps_per_epoch=steps_per_epoch,
            verbose=p.train.verbose,
            callbacks=callbacks,
        )
        wall = offset + time.perf_counter() - started
        shipper.close()  # every epoch's metrics are in MLflow before the run can end
        # Saved with Keras' own layers, so loading it needs no code of ours.
        served = model_mod.plain(net, p.train)
        with atomic_path(ws / layout.MODEL) as model_tmp:
            served.save(model_tmp)
        history = read_history(backup.history)
        write_text(ws / layout.HISTORY, backup.history.read_text())
        epochs_run, final = len(history), history[-1]
        # Score the weights as saved (EMA-averaged, or the best epoch's): what evaluate will see.
        val_pred = served.predict(x_val, batch_size=1000, verbose=0).argmax(axis=1)
        summary = {
            "epochs": epochs_run,
            "train_accuracy": final["accuracy"],
            "train_loss": final["loss"],
            "val_accuracy": float(np.mean(val_pred == y_val)),
            "val_loss_last_epoch": final["val_loss"],
            "parameters": int(net.count_params()),
            "forward_macs_per_image": macs,
            "train_images": len(y_fit),
            "feedback_images": len(y_fit) - len(y_tr),  # of them, people's (weighted)
            "train_compute_macs": float(epochs_run * len(y_fit) * macs),
            "wall_time_s": round(wall, 2),
            "cpu": cpu.model(),
            "cpu_vector_extensions": " ".join(cpu.vector_extensions()),
            "cpu_count": os.cpu_count(),
            "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "") == "1",
        }
        final_metrics = {
            "train_wall_time_s": wall,
            "train_compute_macs": summary["train_compute_macs"],
            "final_val_accuracy": summary["val_accuracy"],
        }
        patiently(lambda: mlflow.log_metrics(final_metrics), "final metrics")
        patiently(
            lambda: mlflow.log_artifact(str(ws / layout.HISTORY), artifact_path="plots"),
            "training history",
        )
        write_json(ws / layout.TRAIN_METRICS, summary)
        write_json(
            ws / layout.RUN_INFO,
            {"run_id": run.info.run_id, "experiment_id": run.info.experiment_id},
        )
    backup.discard()  # every output is in place: nothing left to resume
    print(
        f"train: val accuracy {summary['val_accuracy']:.4f} in {wall:.0f} s, "
        f"{summary['train_compute_macs']:.2e} training multiply-adds "
        f"(MLflow run {run.info.run_id})",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
