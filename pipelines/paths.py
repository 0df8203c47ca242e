"""Where things live: the stage's workspace, and the repository root that owns the stores.

The two differ inside `dvc exp run --temp` and queued experiments: DVC runs the stages in a copy
under `.dvc/tmp/exps/` (the workspace: params, data, outputs) and points DVC_ROOT at the real
repository (the root: the MLflow store). Anchoring the store at the root keeps every experiment in
the one store the user browses.
"""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE_ROOT = Path(__file__).resolve().parent.parent


def _nearest_dvc_project(start: Path) -> Path | None:
    for parent in (start, *start.parents):
        if (parent / "dvc.yaml").is_file():
            return parent
    return None


def workspace(start: Path | None = None) -> Path:
    """The folder the stage runs in: params.yaml, data/, models/ and metrics/ live here."""
    return _nearest_dvc_project((start or Path.cwd()).resolve()) or _PACKAGE_ROOT


def repo_root(start: Path | None = None) -> Path:
    """The repository that owns the stores: DVC_ROOT when DVC says so, else the workspace, except
    inside a temp experiment's folder, where it is the repository above `.dvc/tmp/exps`."""
    if start is None and os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"]).resolve()
    here = workspace(start)
    for parent in (here, *here.parents):
        if (
            parent.name == "exps"
            and parent.parent.name == "tmp"
            and parent.parent.parent.name == ".dvc"
        ):
            return parent.parent.parent.parent
    return here


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI if set, else a SQLite store at the repository root."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{repo_root() / 'mlflow.db'}"


def artifact_root() -> str | None:
    """Where a newly created experiment keeps its artifacts: MLFLOW_ARTIFACT_ROOT if set; None for
    a tracking server (its own proxied store, so a teammate's clone can download them); else
    `mlartifacts/` beside the SQLite store."""
    if os.environ.get("MLFLOW_ARTIFACT_ROOT"):
        return os.environ["MLFLOW_ARTIFACT_ROOT"]
    if tracking_uri().startswith(("http://", "https://")):
        return None
    return (repo_root() / "mlartifacts").as_uri()
