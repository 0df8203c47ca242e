"""Stage 3, train: fit the CNN on the training split, watching the validation split.

Opens the MLflow run that evaluate later continues: params, per-epoch metrics, lineage tags, and
the training compute (epochs run × training images × forward multiply-adds per image).
"""

from __future__ import annotations

import os
import sys
import time

import mlflow
import numpy as np
import tensorflow as tf

from pipelines import layout
from pipelines import model as model_mod
from pipelines.atomic import atomic_path, write_json
from pipelines.data import load_split
from pipelines.log import start
from pipelines.paths import workspace
from pipelines.tracking import connect, data_hash, flatten, git_commit


def make_deterministic(seed: int) -> None:
    """Same params, same machine → same weights: seed everything, ask TF for deterministic ops."""
    tf.keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def dataset(x: np.ndarray, y: np.ndarray, batch_size: int, seed: int | None) -> tf.data.Dataset:
    """Cached, seeded-shuffled, batched and prefetched; labels one-hot (for label smoothing)."""
    ds = tf.data.Dataset.from_tensor_slices((x, tf.one_hot(y, 10))).cache()
    if seed is not None:
        ds = ds.shuffle(len(y), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def main() -> None:
    p = start("train")
    ws = workspace()
    (x_tr, y_tr), (x_val, y_val) = load_split("train"), load_split("val")
    make_deterministic(p.seed)
    steps_per_epoch = -(-len(y_tr) // p.train.batch_size)
    net, trainer = model_mod.build(p.train, seed=p.seed)
    model_mod.compile_for_training(trainer, p.train, steps_per_epoch)
    macs = model_mod.forward_macs(net)

    connect(p.mlflow.experiment)
    with mlflow.start_run(run_name=f"train-{time.strftime('%Y%m%d-%H%M%S')}") as run:
        mlflow.set_tags(
            {
                "git_commit": git_commit(),
                "dvc_stage": "train",
                "data_hash": data_hash([x_tr, y_tr, x_val, y_val, *load_split("test")]),
                "dvc_experiment": os.environ.get("DVC_EXP_NAME", ""),  # set by `dvc exp run`
            }
        )
        mlflow.log_params(flatten(p.model_dump()))
        mlflow.log_params({"model.parameters": net.count_params(), "model.forward_macs": macs})
        callbacks: list[tf.keras.callbacks.Callback] = [mlflow.keras.MlflowCallback()]
        if p.train.early_stopping_patience:
            callbacks.append(
                tf.keras.callbacks.EarlyStopping(
                    monitor="val_loss",
                    patience=p.train.early_stopping_patience,
                    restore_best_weights=True,
                    verbose=1,
                )
            )
        with atomic_path(ws / layout.HISTORY) as history_tmp:
            callbacks.append(tf.keras.callbacks.CSVLogger(str(history_tmp)))
            started = time.perf_counter()
            hist = trainer.fit(
                dataset(x_tr, y_tr, p.train.batch_size, p.seed),
                validation_data=dataset(x_val, y_val, 1000, None),
                epochs=p.train.epochs,
                verbose=p.train.verbose,
                shuffle=False,  # the tf.data pipeline already shuffles, seeded
                callbacks=callbacks,
            )
            wall = time.perf_counter() - started
        with atomic_path(ws / layout.MODEL) as model_tmp:
            net.save(model_tmp)
        epochs_run = len(hist.history["loss"])
        # Score the weights as saved (EMA-averaged, or the best epoch's): what evaluate will see.
        val_pred = net.predict(x_val, batch_size=1000, verbose=0).argmax(axis=1)
        summary = {
            "epochs": epochs_run,
            "train_accuracy": float(hist.history["accuracy"][-1]),
            "train_loss": float(hist.history["loss"][-1]),
            "val_accuracy": float(np.mean(val_pred == y_val)),
            "val_loss_last_epoch": float(hist.history["val_loss"][-1]),
            "parameters": int(net.count_params()),
            "forward_macs_per_image": macs,
            "train_images": len(y_tr),
            "train_compute_macs": float(epochs_run * len(y_tr) * macs),
            "wall_time_s": round(wall, 2),
        }
        mlflow.log_metrics(
            {
                "train_wall_time_s": wall,
                "train_compute_macs": summary["train_compute_macs"],
                "final_val_accuracy": summary["val_accuracy"],
            }
        )
        mlflow.log_artifact(str(ws / layout.HISTORY), artifact_path="plots")
        write_json(ws / layout.TRAIN_METRICS, summary)
        write_json(
            ws / layout.RUN_INFO,
            {"run_id": run.info.run_id, "experiment_id": run.info.experiment_id},
        )
    print(
        f"train: val accuracy {summary['val_accuracy']:.4f} in {wall:.0f} s, "
        f"{summary['train_compute_macs']:.2e} training multiply-adds "
        f"(MLflow run {run.info.run_id})",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
