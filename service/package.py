"""Import the registry's champion into the BentoML model store (`make package`).

Run after `dvc repro`. The Bento model carries the MLflow version, run id and test accuracy as
metadata, so the service can say exactly what it serves without ever calling MLflow. Importing the
same champion again changes nothing.

It also carries prepare's drift reference (`stats.json["drift_reference"]`, in `reference.json` and
the metadata), but only when the workspace's prepared data is the data the champion was trained on
(its `data_hash` tag); otherwise the model is packaged without one and the drift panels stay empty.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import bentoml
import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipelines import params as params_mod
from pipelines.data import PREPARED, load_split
from pipelines.drift import REFERENCE_KEY
from pipelines.paths import tracking_uri, workspace
from pipelines.tracking import data_hash

MODEL_FILE = "model.keras"
REFERENCE_FILE = "reference.json"


def drift_reference(champion_data_hash: str) -> dict | None:
    """prepare's drift reference if data/prepared is what the champion was trained on, else None."""
    stats_file = workspace() / PREPARED / "stats.json"
    try:
        ref = json.loads(stats_file.read_text()).get(REFERENCE_KEY)
        arrays = [a for split in ("train", "val", "test") for a in load_split(split)]
    except (OSError, ValueError) as exc:
        print(f"package: no drift reference ({exc})", file=sys.stderr)
        return None
    if ref is None:
        print(
            f"package: no drift reference: {stats_file} has no '{REFERENCE_KEY}' "
            "(rerun `dvc repro` to refresh prepare's outputs)",
            file=sys.stderr,
        )
        return None
    if data_hash(arrays) != champion_data_hash:
        print(
            "package: no drift reference: data/prepared is not the data the champion was "
            f"trained on (data_hash {champion_data_hash[:12]}...)",
            file=sys.stderr,
        )
        return None
    return ref


def bento_tag(name: str, version: str, run_id: str) -> str:
    """One Bento tag per registry version *and* run: a rebuilt store reusing v1 gets a new tag."""
    return f"{name}:v{version}-{run_id[:8]}"


def package(name: str) -> bentoml.Model:
    mlflow.set_tracking_uri(tracking_uri())
    client = MlflowClient()
    try:
        mv = client.get_model_version_by_alias(name, "champion")
    except MlflowException:
        raise SystemExit(
            f"package: the registry at {tracking_uri()} has no '{name}@champion' yet. "
            "Run `dvc repro` first (a model becomes champion when it passes register.min_accuracy)."
        ) from None
    tag = bento_tag(name, mv.version, mv.run_id)
    reference = drift_reference(mv.tags.get("data_hash", "unknown"))
    try:
        existing = {str(m.tag): m for m in bentoml.models.list(name)}
    except bentoml.exceptions.NotFound:
        existing = {}
    latest = max(existing.values(), key=lambda m: m.creation_time, default=None)
    if latest is not None and str(latest.tag) == tag:
        if reference is None or REFERENCE_KEY in latest.info.metadata:
            print(
                f"package: {tag} is already the latest {name} in the BentoML store",
                file=sys.stderr,
            )
            return latest
        print(f"package: re-importing {tag} to add the drift reference", file=sys.stderr)
    if tag in existing:  # an older champion came back (or gains a reference): re-import it
        bentoml.models.delete(tag)

    import keras  # heavy; only needed when there is something to import

    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(f"models:/{name}/{mv.version}", dst_path=tmp)
        net = mlflow.keras.load_model(local)
        run = client.get_run(mv.run_id).data
        metadata = {
            "registered_model": name,
            "mlflow_version": str(mv.version),
            "run_id": mv.run_id,
            "test_accuracy": float(mv.tags.get("test_accuracy", "nan")),
            "git_commit": mv.tags.get("git_commit", "unknown"),
            "data_hash": mv.tags.get("data_hash", "unknown"),
            "source": f"models:/{name}@champion",
            "train_wall_time_s": run.metrics.get("train_wall_time_s"),
            "train_compute_macs": run.metrics.get("train_compute_macs"),
            "ece": run.metrics.get("test_ece"),
            "params": {k: v for k, v in sorted(run.params.items()) if k.startswith("train.")},
        }
        if reference is not None:
            metadata[REFERENCE_KEY] = reference
        with bentoml.models.create(
            tag, module="keras", metadata=metadata, labels={"alias": "champion"}
        ) as bento_model:
            keras.saving.save_model(net, Path(bento_model.path) / MODEL_FILE)
            if reference is not None:
                (Path(bento_model.path) / REFERENCE_FILE).write_text(json.dumps(reference))
    with_ref = "with" if reference is not None else "without"
    print(
        f"package: imported {name} v{mv.version} (run {mv.run_id}) as {tag}, "
        f"{with_ref} a drift reference",
        file=sys.stderr,
    )
    return bentoml.models.get(tag)


def main() -> None:
    package(params_mod.load().register.model_name)


if __name__ == "__main__":
    main()
