"""Stage 5, register: make the logged model a registry version and decide who is champion.

Every run becomes a new version with alias `challenger`; `champion` moves only to a model that
passes the accuracy gate and is not worse than the current champion, so a bad retrain never
replaces a good model in service. The receipt is `cache: false` in dvc.yaml: no run-cache hit can
skip this side effect.

Idempotent: a retry after a crash (the stage died after registering, before its receipt, so DVC
runs it again) finds the version already registered for the same run and logged model and reuses
it, instead of registering a duplicate. A version is never left without an alias: if setting
`challenger` fails, the version this attempt created is deleted again.
"""

from __future__ import annotations

import contextlib
import sys

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipelines import layout
from pipelines.atomic import write_json
from pipelines.log import start
from pipelines.paths import workspace
from pipelines.tracking import connect, read_json

CHAMPION, CHALLENGER = "champion", "challenger"
LINEAGE_TAGS = ("git_commit", "data_hash")


def current_champion(client: MlflowClient, name: str) -> tuple[str, float] | None:
    """(version, test accuracy) of the model now aliased champion, or None if there is none."""
    try:
        mv = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None
    acc = mv.tags.get("test_accuracy")
    if acc is None:  # a version registered by hand: fall back to its run's metric
        acc = client.get_run(mv.run_id).data.metrics.get("test_accuracy", 0.0)
    return str(mv.version), float(acc)


def decide(
    accuracy: float, min_accuracy: float, champion: tuple[str, float] | None
) -> tuple[bool, str]:
    """The champion gate, as a pure function so its rules are easy to read and test."""
    if accuracy < min_accuracy:
        return False, f"test accuracy {accuracy:.4f} is below register.min_accuracy {min_accuracy}"
    if champion is None:
        return True, f"first model to pass the gate (test accuracy {accuracy:.4f})"
    version, best = champion
    if accuracy < best:
        return False, (
            f"test accuracy {accuracy:.4f} is worse than champion v{version}'s {best:.4f}"
        )
    return True, f"test accuracy {accuracy:.4f} ≥ champion v{version}'s {best:.4f}"


def already_registered(
    client: MlflowClient, name: str, run_id: str, model_uri: str
) -> ModelVersion | None:
    """The version an earlier attempt registered for this run's logged model, if there is one."""
    try:
        found = client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
    except MlflowException:  # no such registered model yet
        return None
    same = [mv for mv in found if model_uri in (mv.source, mv.tags.get("model_uri"))]
    return min(same, key=lambda mv: int(mv.version), default=None)


def register(client: MlflowClient, name: str, model_uri: str, tags: dict[str, str]) -> str:
    """Reuse or create the version of `model_uri` and give it `challenger`; return its number."""
    mv = already_registered(client, name, tags["run_id"], model_uri)
    created = mv is None
    if mv is None:
        mv = mlflow.register_model(model_uri, name, tags=tags | {"model_uri": model_uri})
    try:
        client.set_registered_model_alias(name, CHALLENGER, mv.version)
    except BaseException:
        if created:  # never leave a version without an alias behind
            with contextlib.suppress(Exception):
                client.delete_model_version(name, mv.version)
        raise
    return str(mv.version)


def main() -> None:
    p = start("register")
    ws = workspace()
    logged = read_json(ws / layout.LOGGED_MODEL)
    accuracy = float(read_json(ws / layout.EVAL_METRICS)["accuracy"])
    name = p.register.model_name

    connect(p.mlflow.experiment)
    client = MlflowClient()
    run = client.get_run(logged["run_id"])
    tags = {k: run.data.tags[k] for k in LINEAGE_TAGS if k in run.data.tags}
    tags |= {"run_id": logged["run_id"], "test_accuracy": f"{accuracy:.6f}"}

    champion = current_champion(client, name)
    version = register(client, name, logged["model_uri"], tags)
    if champion is not None and champion[0] == version:  # a retry that got this far before
        promote, reason = True, f"v{version} is already champion (registered by an earlier try)"
    else:
        promote, reason = decide(accuracy, p.register.min_accuracy, champion)
    if promote:
        client.set_registered_model_alias(name, CHAMPION, version)
    receipt = {
        "model_name": name,
        "version": int(version),
        "run_id": logged["run_id"],
        "test_accuracy": accuracy,
        "decision": "promoted to champion" if promote else "challenger only",
        "reason": reason,
        "champion_version": int(version) if promote else (int(champion[0]) if champion else None),
    }
    write_json(ws / layout.RECEIPT, receipt)
    print(f"register: {name} v{version}: {receipt['decision']} ({reason})", file=sys.stderr)


if __name__ == "__main__":
    main()
