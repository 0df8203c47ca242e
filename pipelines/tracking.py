"""MLflow plumbing shared by the stages: the store, the experiment, and lineage tags.

Every run and registered version carries the lineage tags (`LINEAGE_TAGS`): the git commit and, when
it is `-dirty`, which files were; a hash of the params; the prepared data's content hash and DVC's
own hash of each prepared file (the `md5` dvc.lock records), so a served model can be traced back
to the code, params and data that made it, and `dvc.lock` of any commit compared with it.
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
import yaml
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


# What a run carries and register copies to its registry version (JSON where not a plain string).
LINEAGE_TAGS = (
    "git_commit",
    "git_dirty_files",
    "params_hash",
    "data_hash",
    "data_md5",
    "feedback_hash",
    "feedback_rows",
)
MAX_DIRTY = 50  # files named in git_dirty_files (MLflow caps a tag's value; the count is kept)


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=workspace(), capture_output=True, text=True, check=True
    ).stdout


def pipeline_outputs() -> list[str]:
    """What `dvc repro` itself rewrites while it runs: dvc.lock and the outputs dvc.yaml declares.
    A stage that ran before train in the same repro changed them, not the code: they do not make
    the commit dirty."""
    found = ["dvc.lock"]
    try:
        spec = yaml.safe_load((workspace() / "dvc.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return found
    for stage in (spec.get("stages") or {}).values():
        for key in ("outs", "metrics", "plots"):
            for entry in stage.get(key) or []:
                found.append(str(next(iter(entry)) if isinstance(entry, dict) else entry))
    return found


def git_state() -> tuple[str, list[str]]:
    """The commit the code came from ('-dirty' with uncommitted changes to tracked files other
    than the pipeline's own outputs) and which files those are; ("unknown", []) outside git."""
    try:
        sha = _git("rev-parse", "HEAD").strip()
        status = _git("status", "--porcelain", "--untracked-files=no").splitlines()
    except (OSError, subprocess.CalledProcessError):
        return "unknown", []
    outputs = pipeline_outputs()
    changed = [line[3:].split(" -> ")[-1] for line in status]
    dirty = [f for f in changed if not any(f == o or f.startswith(f"{o}/") for o in outputs)]
    return (f"{sha}-dirty" if dirty else sha), dirty


def git_commit() -> str:
    return git_state()[0]


def params_hash(params: Mapping[str, Any]) -> str:
    """sha256 of the params as canonical JSON: equal params, equal hash, whatever the YAML looks
    like (comments, key order, 1e-3 vs 0.001)."""
    canonical = json.dumps(params, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def dvc_md5(path: Path) -> str:
    """The hash DVC 3 records for a file output in dvc.lock (`hash: md5`: the md5 of its bytes)."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def lineage(
    params: Mapping[str, Any],
    data: Iterable[np.ndarray],
    files: Iterable[Path],
    feedback: Mapping[str, Mapping[str, np.ndarray]] | None = None,
) -> dict:
    """The LINEAGE_TAGS of a run trained with `params` on the arrays `data`, read from `files`
    (paths relative to the workspace, as dvc.lock names them), beside people's `feedback`
    ({share: its arrays}: the rows that trained and the held-out ones) it saw."""
    feedback = feedback or {}
    commit, dirty = git_state()
    named = dirty[:MAX_DIRTY] + (
        [f"... {len(dirty) - MAX_DIRTY} more"] if len(dirty) > MAX_DIRTY else []
    )
    ws = workspace()
    return {
        "git_commit": commit,
        "git_dirty_files": json.dumps(named),
        "params_hash": params_hash(params),
        "data_hash": data_hash(data),
        "data_md5": json.dumps({str(f): dvc_md5(ws / f) for f in files}, sort_keys=True),
        "feedback_hash": feedback_hash(feedback),
        "feedback_rows": json.dumps({k: len(v["y"]) for k, v in feedback.items()}, sort_keys=True),
    }


def feedback_hash(feedback: Mapping[str, Mapping[str, np.ndarray]]) -> str:
    """sha256 over each feedback share's images, labels and row keys (the prediction ids'
    signatures): which feedback, exactly, a run trained on and was measured on."""
    return data_hash(
        a
        for _, arrays in sorted(feedback.items())
        for a in (arrays["x"], arrays["y"], arrays["key"])
    )


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
