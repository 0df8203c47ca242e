"""The champion gate: its rules as pure functions, and against a real SQLite store the stage's
idempotence, rollbacks that stick, and two registers racing (tests/race.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from pipelines import champion as champion_cli
from pipelines import layout, register
from pipelines.atomic import write_json
from pipelines.register import Candidate, best, reason
from pipelines.tracking import read_json
from tests.helpers import REPO
from tests.race import race


def test_best_is_the_most_accurate_and_the_newer_on_a_tie():
    assert best([]) is None
    assert best([Candidate(0.995, 3), Candidate(0.996, 2)]) == Candidate(0.996, 2)
    assert best([Candidate(0.995, 3), Candidate(0.995, 4)]) == Candidate(0.995, 4)


def test_reasons_say_why():
    assert "below register.min_accuracy" in reason(0.98, 4, 0.99, Candidate(0.995, 3))
    assert "worse than champion v3" in reason(0.992, 4, 0.99, Candidate(0.995, 3))
    assert "best eligible" in reason(0.996, 4, 0.99, Candidate(0.996, 4))


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


def _version(client: MlflowClient, acc: float) -> str:
    """A version with a logged model and a test accuracy, as the stage leaves it."""
    exp = client.get_experiment_by_name("digit-mlops").experiment_id
    model = client.create_logged_model(exp)
    v = client.create_model_version(
        "mnist-cnn",
        f"models:/{model.model_id}",
        model_id=model.model_id,
        tags={"test_accuracy": f"{acc:.6f}"},
    ).version
    return str(v)


def champion_now(client: MlflowClient) -> str:
    return str(client.get_model_version_by_alias("mnist-cnn", "champion").version)


def test_a_rollback_sticks_when_the_next_model_registers(logged, capsys):
    """Retired by `python -m pipelines.champion rollback`, a better version stays out of service
    even when a worse newcomer runs the gate; an un-retired version would be promoted back."""
    register.main()  # v1 at 0.995 (eval.json)
    v2 = _version(logged, 0.997)
    register.settle(logged, "mnist-cnn", 0.99)
    assert champion_now(logged) == v2
    champion_cli.main(["rollback", "--reason", "wrong answers on 4s"])
    assert champion_now(logged) == "1"
    assert "wrong answers on 4s" in logged.get_model_version("mnist-cnn", v2).tags["retired"]
    v3 = _version(logged, 0.996)
    register.settle(logged, "mnist-cnn", 0.99)
    assert champion_now(logged) == v3
    capsys.readouterr()
    champion_cli.main([])
    shown = capsys.readouterr().out
    assert f"champion v{v3}" in shown and f"v{v2} " not in shown  # retired: not eligible


def test_a_rollback_with_nothing_to_go_back_to_changes_nothing(logged):
    register.main()
    with pytest.raises(SystemExit, match="no other version"):
        champion_cli.main(["rollback"])
    assert "retired" not in logged.get_model_version("mnist-cnn", "1").tags


def test_two_registers_at_once_always_leave_the_better_champion(tmp_path):
    """40 rounds of two processes registering and gating at the same moment on one SQLite
    store (what `dvc queue start -j 2` does locally)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(uri).search_experiments()  # create the schema before the racers arrive
    outcomes = race(uri, 40)
    lost = [o for o in outcomes if o.champion != o.expected]
    assert not lost, lost
    # The harness really races: in some rounds both wrote the alias (the old gate's failure).
    assert any(min(o.writes) > 0 for o in outcomes), outcomes


def test_rollback_goes_back_to_the_previous_champion_and_walks_the_history(logged, capsys):
    """The history the gate writes, not the accuracy order: after a hand-picked v3 replaced the
    better v2, a rollback returns to v3's predecessor, and a second one walks further back."""
    register.main()  # v1
    v2 = _version(logged, 0.997)
    register.settle(logged, "mnist-cnn", 0.99)  # v2 champion, previous v1
    v3 = _version(logged, 0.993)
    champion_cli.main(["promote", v3, "--reason", "better on our scans"])
    assert champion_now(logged) == v3
    assert logged.get_model_version("mnist-cnn", v3).tags["previous_champion"] == v2
    champion_cli.main(["rollback", "--reason", "worse on 7s"])
    assert champion_now(logged) == v2  # back to the one it replaced, by the gate's own rule
    assert "champion_pin" not in logged.get_registered_model("mnist-cnn").tags
    champion_cli.main(["rollback", "--reason", "v2 too"])
    assert champion_now(logged) == "1"
    capsys.readouterr()
    champion_cli.main([])
    assert "champion v1" in capsys.readouterr().out


def test_a_rollback_pins_a_previous_champion_the_gate_would_not_pick(logged):
    register.main()  # v1 at 0.995
    v2 = _version(logged, 0.993)
    champion_cli.main(["promote", v2])  # pinned although worse
    v3 = _version(logged, 0.998)
    register.settle(logged, "mnist-cnn", 0.99)
    assert champion_now(logged) == v2  # a pin holds against a better newcomer
    champion_cli.main(["promote", v3])
    champion_cli.main(["rollback"])
    # back to v2, which the gate alone would not choose over v1: pinned again
    assert champion_now(logged) == v2
    assert logged.get_registered_model("mnist-cnn").tags["champion_pin"] == v2
    champion_cli.main(["unpin"])
    assert champion_now(logged) == "1"  # the gate's choice: v3 retired, v1 beats v2


def test_promote_respects_the_gate_unless_forced(logged):
    register.main()
    low = _version(logged, 0.5)
    with pytest.raises(SystemExit, match=r"does not pass the gate.*FORCE=1"):
        champion_cli.main(["promote", low])
    assert champion_now(logged) == "1"
    with pytest.raises(SystemExit, match="no version 99"):
        champion_cli.main(["promote", "99"])
    champion_cli.main(["promote", low, "--force", "--reason", "a demo"])
    assert champion_now(logged) == low
    note = logged.get_registered_model("mnist-cnn").tags["champion_pin_note"]
    assert "forced" in note and "a demo" in note
