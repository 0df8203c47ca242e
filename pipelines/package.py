"""Import the registry's champion into the BentoML model store (`make package`).

Run after `dvc repro`. The Bento model carries a model card (common/card.py): the MLflow version,
run id, test accuracy, lineage and training params, so the service can say exactly what it serves
without ever calling MLflow. Importing the same champion again changes nothing.

The card also carries prepare's drift reference (`stats.json["drift_reference"]`, also written as
`reference.json` beside the model), but only when the workspace's prepared data is the data the
champion was trained on (its `data_hash` tag); otherwise the model is packaged without one and the
drift panels stay empty.

Not a DVC stage, on purpose: its input is the registry's `champion` alias, which moves without the
workspace changing (a teammate's promotion, a rollback), and its output is the BentoML store, which
lives outside the workspace; so DVC could neither tell when to rerun it nor keep its result. It is
cheap and idempotent, so `make package` simply runs it every time.
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

from common.card import ModelCard
from common.drift import REFERENCE_KEY, DriftReference
from pipelines import layout
from pipelines import params as params_mod
from pipelines.data import load_split
from pipelines.paths import tracking_uri, workspace
from pipelines.tracking import data_hash

MODEL_FILE = "model.keras"
REFERENCE_FILE = "reference.json"


def drift_reference(champion_data_hash: str) -> DriftReference | None:
    """prepare's drift reference if data/prepared is what the champion was trained on, else None."""
    stats_file = workspace() / layout.STATS
    try:
        ref = json.loads(stats_file.read_text()).get(REFERENCE_KEY)
        arrays = [a for split in layout.SPLITS for a in load_split(split)]
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
    return DriftReference.model_validate(ref)


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
        card = ModelCard(
            registered_model=name,
            mlflow_version=str(mv.version),
            run_id=mv.run_id,
            source=f"models:/{name}@champion",
            test_accuracy=float(mv.tags.get("test_accuracy", "nan")),
            ece=run.metrics.get("test_ece"),
            train_wall_time_s=run.metrics.get("train_wall_time_s"),
            train_compute_macs=run.metrics.get("train_compute_macs"),
            git_commit=mv.tags.get("git_commit", "unknown"),
            data_hash=mv.tags.get("data_hash", "unknown"),
            params={k: v for k, v in sorted(run.params.items()) if k.startswith("train.")},
            drift_reference=reference,
        )
        with bentoml.models.create(
            tag, module="keras", metadata=card.to_metadata(), labels={"alias": "champion"}
        ) as bento_model:
            keras.saving.save_model(net, Path(bento_model.path) / MODEL_FILE)
            if reference is not None:
                (Path(bento_model.path) / REFERENCE_FILE).write_text(reference.model_dump_json())
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
