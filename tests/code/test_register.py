"""The champion gate's rules, as a pure function (the e2e test checks them against MLflow), and
the stage's idempotence against a real MLflow store: a retry reuses the version it registered."""

from __future__ import annotations

import shutil
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from pipelines import layout, register
from pipelines.atomic import write_json
from pipelines.register import decide
from pipelines.tracking import read_json
from tests.helpers import REPO


def test_first_model_passing_the_gate_is_promoted():
    assert decide(0.991, 0.99, None)[0] is True


def test_below_the_gate_is_never_promoted():
    promote, reason = decide(0.98, 0.99, None)
    assert promote is False and "below register.min_accuracy" in reason


def test_worse_than_champion_is_kept_out():
    promote, reason = decide(0.992, 0.99, ("3", 0.995))
    assert promote is False and "worse than champion v3" in reason


def test_equal_or_better_than_champion_is_promoted():
    assert decide(0.995, 0.99, ("3", 0.995))[0] is True
    assert decide(0.996, 0.99, ("3", 0.995))[0] is True


# --- idempotence, against a real MLflow store ------------------------------------------------


class _Echo(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input: list[int]) -> list[int]:  # never served here
        return model_input


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> dict[str, str]:
    """A real SQLite store holding one run with a logged model (made once: MLflow's first start
    on a new database takes seconds); each test gets a copy of the database."""
    root = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    exp = mlflow.create_experiment("digit-mlops", artifact_location=(root / "art").as_uri())
    with mlflow.start_run(experiment_id=exp) as run:
        model_uri = mlflow.pyfunc.log_model(
            name="model", python_model=_Echo(), pip_requirements=[]
        ).model_uri
    mlflow.set_tracking_uri(f"sqlite:///{root / 'unused.db'}")  # nothing points at it after
    return {"db": str(root / "mlflow.db"), "run_id": run.info.run_id, "model_uri": model_uri}


@pytest.fixture
def logged(store, tmp_path, monkeypatch):
    """A workspace whose evaluate stage 'ran': the logged model, its logged_model.json and
    eval.json, and the repository's params.yaml."""
    for name in ("params.yaml", "dvc.yaml"):
        shutil.copy(REPO / name, tmp_path / name)
    shutil.copy(store["db"], tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    monkeypatch.chdir(tmp_path)
    logged = {"run_id": store["run_id"], "model_uri": store["model_uri"]}
    write_json(tmp_path / layout.LOGGED_MODEL, logged)
    write_json(tmp_path / layout.EVAL_METRICS, {"accuracy": 0.995})
    yield MlflowClient(uri)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'unused.db'}")


def _versions(client: MlflowClient) -> list:
    """Every version, with its aliases (search results leave them out)."""
    found = client.search_model_versions("name='mnist-cnn'")
    return [client.get_model_version("mnist-cnn", mv.version) for mv in found]


def test_a_retry_after_a_crash_reuses_the_version_it_registered(logged):
    """The crash left a registered version and no receipt (DVC reruns the stage): the retry
    must reuse it, not register a duplicate."""
    run_id = read_json(Path(layout.LOGGED_MODEL))["run_id"]
    model_uri = read_json(Path(layout.LOGGED_MODEL))["model_uri"]
    mlflow.register_model(model_uri, "mnist-cnn", tags={"run_id": run_id})  # what the crash left
    register.main()
    (mv,) = _versions(logged)
    assert set(mv.aliases) == {"challenger", "champion"}
    receipt = read_json(Path(layout.RECEIPT))
    assert receipt["version"] == int(mv.version) == 1
    register.main()  # and once more: still one version, still champion
    assert len(_versions(logged)) == 1
    assert read_json(Path(layout.RECEIPT))["decision"] == "promoted to champion"


def test_a_crash_before_the_alias_leaves_no_alias_less_version(logged, monkeypatch):
    real = MlflowClient.set_registered_model_alias

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C between registering and aliasing

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", interrupted)
    with pytest.raises(KeyboardInterrupt):
        register.main()
    assert [mv for mv in _versions(logged) if not mv.aliases] == []
    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", real)
    register.main()
    (mv,) = _versions(logged)
    assert set(mv.aliases) == {"challenger", "champion"}
