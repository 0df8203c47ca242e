"""Where things live, anchored at the real repository root.

`dvc exp run --temp` and queued experiments run stages in a copy under `.dvc/tmp/exps/`; anchoring
the MLflow store at the real root keeps every experiment in the one store the user browses.
"""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE_ROOT = Path(__file__).resolve().parent.parent


def repo_root(start: Path | None = None) -> Path:
    """The project root; inside a DVC temp experiment, the root of the repo that owns it."""
    here = (start or Path(os.environ.get("DVC_ROOT") or Path.cwd())).resolve()
    for parent in (here, *here.parents):
        if (
            parent.name == "exps"
            and parent.parent.name == "tmp"
            and parent.parent.parent.name == ".dvc"
        ):
            return parent.parent.parent.parent
    for parent in (here, *here.parents):
        if (parent / "dvc.yaml").is_file() or (parent / "params.yaml").is_file():
            return parent
    return _PACKAGE_ROOT


def workspace() -> Path:
    """The folder the stage runs in (differs from repo_root() only inside a temp experiment)."""
    here = Path(os.environ.get("DVC_ROOT") or Path.cwd()).resolve()
    for parent in (here, *here.parents):
        if (parent / "dvc.yaml").is_file():
            return parent
    return _PACKAGE_ROOT


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI if set, else a SQLite store at the repository root."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{repo_root() / 'mlflow.db'}"


def artifact_root() -> str:
    """Where a newly created experiment keeps its artifacts (beside the default SQLite store)."""
    return os.environ.get("MLFLOW_ARTIFACT_ROOT") or (repo_root() / "mlartifacts").as_uri()
