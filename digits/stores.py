"""Where the models are: the same stores `make` uses, unless the environment says otherwise.

`make` exports BENTOML_HOME=<project>/.bentoml and MLFLOW_TRACKING_URI=sqlite:///<project>/mlflow.db
when they are unset; a user running `digit-mlops` or `import digits` outside make should find the
same models, not BentoML's `~/bentoml` or MLflow's store in whatever folder they are in. Both
libraries read these variables when first used, so this runs before either is imported.
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent


def use_project_stores() -> None:
    """Default BENTOML_HOME and MLFLOW_TRACKING_URI to the project's, where those exist."""
    if not os.environ.get("BENTOML_HOME") and (PROJECT / ".bentoml").is_dir():
        os.environ["BENTOML_HOME"] = str(PROJECT / ".bentoml")
    if not os.environ.get("MLFLOW_TRACKING_URI") and (PROJECT / "mlflow.db").is_file():
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{PROJECT / 'mlflow.db'}"
