"""MLflow plumbing shared by the stages: the store, the experiment, and lineage tags.

Every run and registered version carries the git commit, the DVC stage and a hash of the prepared
data, so a served model can be traced back to the code and data that made it.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException

from pipelines.paths import artifact_root, tracking_uri, workspace
from pipelines.redact import redact


def connect(experiment: str) -> str:
    """Point MLflow at the project's store and make sure the experiment exists; return its id."""
    mlflow.set_tracking_uri(tracking_uri())
    found = mlflow.get_experiment_by_name(experiment)
    if found is not None:
        exp_id = found.experiment_id
    else:
        try:
            exp_id = mlflow.create_experiment(experiment, artifact_location=artifact_root())
        except MlflowException as err:  # a queued experiment beside this one created it first
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            exp_id = mlflow.get_experiment_by_name(experiment).experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def git_commit() -> str:
    """The commit the code came from, with '-dirty' when uncommitted changes were in play."""
    root = workspace()
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


def data_hash(arrays: Iterable[np.ndarray]) -> str:
    """sha256 over the array contents (not the file bytes), so re-saving does not change it."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'train': {'epochs': 3}} → {'train.epochs': 3}, the shape MLflow params want; any URL
    password in a value is redacted (MLflow shows params to everyone who can see the run)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = redact(v) if isinstance(v, str) else v
    return out


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())
