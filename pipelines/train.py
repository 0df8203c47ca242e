"""Stage 3, train: fit the CNN on the training split, watching the validation split.

Opens the MLflow run that evaluate later continues: params, per-epoch metrics, lineage tags.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import tensorflow as tf

from pipelines import model as model_mod
from pipelines.atomic import atomic_path, write_json
from pipelines.data import load_split
from pipelines.log import start
from pipelines.paths import workspace
from pipelines.tracking import connect, data_hash, flatten, git_commit

MODEL = Path("models/model.keras")
RUN_INFO = Path("models/mlflow_run.json")
METRICS = Path("metrics/train.json")
HISTORY = Path("plots/train/history.csv")


def make_deterministic(seed: int) -> None:
    """Same params, same machine → same weights: seed everything, ask TF for deterministic ops."""
    tf.keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def dataset(x: np.ndarray, y: np.ndarray, batch_size: int, seed: int | None) -> tf.data.Dataset:
    ds = tf.data.Dataset.from_tensor_slices((x, y)).cache()
    if seed is not None:
        ds = ds.shuffle(len(y), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def main() -> None:
    p = start("train")
    ws = workspace()
    (x_tr, y_tr), (x_val, y_val) = load_split("train"), load_split("val")
    make_deterministic(p.seed)
    net = model_mod.build(p.train, steps_per_epoch=-(-len(y_tr) // p.train.batch_size))

    connect(p.mlflow.experiment)
    with mlflow.start_run(run_name=f"train-{time.strftime('%Y%m%d-%H%M%S')}") as run:
        mlflow.set_tags(
            {
                "git_commit": git_commit(),
                "dvc_stage": "train",
                "data_hash": data_hash([x_tr, y_tr, x_val, y_val, *load_split("test")]),
            }
        )
        mlflow.log_params(flatten(p.model_dump()))
        mlflow.log_param("model.parameters", net.count_params())
        with atomic_path(ws / HISTORY) as history_tmp:
            started = time.perf_counter()
            hist = net.fit(
                dataset(x_tr, y_tr, p.train.batch_size, p.seed),
                validation_data=dataset(x_val, y_val, p.train.batch_size, None),
                epochs=p.train.epochs,
                verbose=p.train.verbose,
                shuffle=False,  # the tf.data pipeline already shuffles, seeded
                callbacks=[
                    mlflow.keras.MlflowCallback(),
                    tf.keras.callbacks.CSVLogger(str(history_tmp)),
                ],
            )
            wall = time.perf_counter() - started
        with atomic_path(ws / MODEL) as model_tmp:
            net.save(model_tmp)
        last = {k: float(v[-1]) for k, v in hist.history.items()}
        summary = {
            "epochs": len(hist.history["loss"]),
            "train_accuracy": last["accuracy"],
            "train_loss": last["loss"],
            "val_accuracy": last["val_accuracy"],
            "val_loss": last["val_loss"],
            "parameters": int(net.count_params()),
            "wall_time_s": round(wall, 2),
        }
        mlflow.log_metric("train_wall_time_s", wall)
        mlflow.log_artifact(str(ws / HISTORY), artifact_path="plots")
        write_json(ws / METRICS, summary)
        write_json(
            ws / RUN_INFO, {"run_id": run.info.run_id, "experiment_id": run.info.experiment_id}
        )
    print(
        f"train: val accuracy {summary['val_accuracy']:.4f} in {wall:.0f} s "
        f"(MLflow run {run.info.run_id})",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
