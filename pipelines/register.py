"""Stage 5, register: make the logged model a registry version and decide who is champion.

Every run becomes a new version with alias `challenger`; `champion` moves only to a model that
passes the accuracy gate and is not worse than the current champion, so a bad retrain never
replaces a good model in service. The receipt is `cache: false` in dvc.yaml: no run-cache hit can
skip this side effect.
"""

from __future__ import annotations

import sys

import mlflow
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
    return mv.version, float(acc)


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
    promote, reason = decide(accuracy, p.register.min_accuracy, champion)
    mv = mlflow.register_model(logged["model_uri"], name, tags=tags)
    client.set_registered_model_alias(name, CHALLENGER, mv.version)
    if promote:
        client.set_registered_model_alias(name, CHAMPION, mv.version)
    receipt = {
        "model_name": name,
        "version": int(mv.version),
        "run_id": logged["run_id"],
        "test_accuracy": accuracy,
        "decision": "promoted to champion" if promote else "challenger only",
        "reason": reason,
        "champion_version": int(mv.version)
        if promote
        else (int(champion[0]) if champion else None),
    }
    write_json(ws / layout.RECEIPT, receipt)
    print(f"register: {name} v{mv.version}: {receipt['decision']} ({reason})", file=sys.stderr)


if __name__ == "__main__":
    main()
