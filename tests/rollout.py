"""New champions and challengers for the rollout tests, made the way users make them: a registry
version that the gate (or a promotion) puts in place, then `python -m pipelines.package`.

A new version re-registers the champion's logged model (same weights, a new registry version and
Bento tag), so no test waits for a second training; what changes for the service is exactly what a
new champion changes: the tag `:latest` names, the version in every reply and metric. Broken
models are made in the BentoML store directly: a model that cannot load, or one that loads but
answers its probe unlike the registry's model did.
"""

from __future__ import annotations

import contextlib
import io
import shutil
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
from mlflow.tracking import MlflowClient

from bench.rollout import copy_model
from common.rollout import PROBE_FILE
from pipelines import register
from service.models import MODEL_FILE
from tests.helpers import BIN, run

MODEL = "mnist-cnn"


@contextlib.contextmanager
def client(env: dict[str, str]) -> Iterator[MlflowClient]:
    """A client of env's store; MLflow's registry calls back into the process-wide tracking URI
    (e.g. to find a logged model), so that points there too meanwhile."""
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    try:
        yield MlflowClient()
    finally:
        mlflow.set_tracking_uri(before)


def register_copy(env: dict[str, str], accuracy: float, of: str = "champion") -> str:
    """A new registry version of `of`'s logged model with this test accuracy, alias
    `challenger` (what register gives every new run); returns its number."""
    with client(env) as c:
        return _register_copy(c, accuracy, of)


def _register_copy(c: MlflowClient, accuracy: float, of: str) -> str:
    mv = c.get_model_version_by_alias(MODEL, of)
    tags = {k: mv.tags[k] for k in (*register.LINEAGE_TAGS, "run_id") if k in mv.tags}
    new = c.create_model_version(
        MODEL,
        mv.source,
        run_id=mv.run_id,
        tags={**tags, "test_accuracy": f"{accuracy:.6f}"},
        model_id=getattr(mv, "model_id", None),
    )
    c.set_registered_model_alias(MODEL, register.CHALLENGER, new.version)
    return str(new.version)


def settle(env: dict[str, str], min_accuracy: float = 0.5) -> str:
    """The gate, as register runs it after a new version: returns the champion."""
    with client(env) as c:
        champion, _ = register.settle(c, MODEL, min_accuracy)
    return str(champion.version)


def package(workspace: Path, env: dict[str, str]) -> str:
    """`make package`: the champion (and challenger) into the store; returns its output."""
    proc = run([str(BIN / "python"), "-m", "pipelines.package"], workspace, env)
    return proc.stderr


def champion_cli(workspace: Path, env: dict[str, str], *args: str) -> str:
    """What `make rollback` / `make promote` run: pipelines.champion, then package."""
    out = run([str(BIN / "python"), "-m", "pipelines.champion", *args], workspace, env).stdout
    return out + package(workspace, env)


def pin_broken(env: dict[str, str], how: str, version: str, source: str) -> str:
    """Put a broken copy of the Bento model `source` at `:latest` ("unloadable": its Keras file
    is garbage; "wrong": it loads, but its probe says it should answer otherwise); returns its
    Bento tag."""
    folder = Path(env["BENTOML_HOME"], "models", *source.split(":"))
    if how == "unloadable":
        files = {MODEL_FILE: b"not a keras file"}
    else:  # loads fine, but its answers are not the packaged model's
        with np.load(folder / PROBE_FILE) as probe:
            images, probs = probe["images"], probe["probabilities"]
        out = io.BytesIO()
        np.savez_compressed(out, images=images, probabilities=np.roll(probs, 1, axis=1))
        files = {PROBE_FILE: out.getvalue()}
    home = Path(env["BENTOML_HOME"])
    return copy_model(home, source, version, tag_version=f"{how}-{version}", files=files)


def copy_stores(env: dict[str, str], root: Path) -> dict[str, str]:
    """`env` with copies of its MLflow database and BentoML home under `root` (the models' files
    stay where they are, read only), so a test can move aliases without touching the original."""
    db = Path(env["MLFLOW_TRACKING_URI"].removeprefix("sqlite:///"))
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy2(db, root / "mlflow.db")
    shutil.copytree(
        env["BENTOML_HOME"],
        root / "bentoml",
        ignore=shutil.ignore_patterns("prometheus_multiproc_dir"),
    )
    return {
        **env,
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "BENTOML_HOME": str(root / "bentoml"),
    }
