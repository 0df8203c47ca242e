"""Many experiments at once against the team's tracking server: `dvc queue start -j 2` runs two
queued experiments side by side, and two registers racing through the server (over HTTP, where
no client can lock the database) always leave the better champion."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator

import pytest
from mlflow.tracking import MlflowClient

from tests.helpers import (
    ALWAYS_RUN,
    BIN,
    clean_env,
    commit,
    make_workspace,
    only_always_run,
    run,
    set_params,
)
from tests.race import race
from tests.team.conftest import ADMIN_PASSWORD, leftovers

pytestmark = pytest.mark.e2e
EXPERIMENT, MODEL = "queued", "queued-cnn"
QUEUED = {"lr-3e-3": "0.003", "lr-1e-3": "0.001"}


@pytest.fixture
def admin(stores, monkeypatch) -> MlflowClient:
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN_PASSWORD)
    return MlflowClient(tracking_uri=stores["uri"])


def queue_status(ws, env) -> dict[str, str]:
    """{experiment name: Queued | Running | Success | Failed} from `dvc queue status`."""
    out = run([str(BIN / "dvc"), "queue", "status"], ws, env).stdout
    found = {}
    for line in out.splitlines():
        parts = line.split()
        if parts and parts[-1] in {"Queued", "Running", "Success", "Failed"}:
            found[parts[1]] = parts[-1]
    return found


@pytest.fixture(scope="module")
def queued(stores, tmp_path_factory) -> Iterator[dict]:
    """A clone with a git remote and the DVC remote; two experiments queued, run with -j 2."""
    root = tmp_path_factory.mktemp("queue")
    env = clean_env(
        MLFLOW_TRACKING_URI=stores["uri"],
        MLFLOW_TRACKING_USERNAME="admin",
        MLFLOW_TRACKING_PASSWORD=ADMIN_PASSWORD,
        BENTOML_HOME=str(root / "bentoml"),
    )
    ws = make_workspace(root / "ws", env)
    set_params(ws, {"mlflow": {"experiment": EXPERIMENT}, "register": {"model_name": MODEL}})
    run([str(BIN / "dvc"), "remote", "add", "-d", "team", str(root / "dvc-remote")], ws, env)
    run(["git", "init", "-q", "--bare", str(root / "origin.git")], root, env)
    run(["git", "remote", "add", "origin", str(root / "origin.git")], ws, env)
    commit(ws, env, "queued experiments")
    run(["git", "push", "-q", "origin", "HEAD:main"], ws, env)
    for name, lr in QUEUED.items():
        run([str(BIN / "dvc"), "exp", "run", "--queue", "-n", name,
             "-S", f"train.learning_rate={lr}"], ws, env)  # fmt: skip
    run([str(BIN / "dvc"), "queue", "start", "-j", "2"], ws, env)
    deadline = time.monotonic() + 600
    while (status := queue_status(ws, env)) and set(status.values()) & {"Queued", "Running"}:
        assert time.monotonic() < deadline, status
        time.sleep(2)
    logs = {n: run([str(BIN / "dvc"), "queue", "logs", n], ws, env, check=False) for n in QUEUED}
    yield {"root": root, "ws": ws, "env": env, "status": status, "logs": logs}
    # DVC's queue workers stop by themselves once the queue is empty: none may stay behind.
    deadline = time.monotonic() + 60
    while (left := leftovers(root)) and time.monotonic() < deadline:
        time.sleep(1)
    assert not left, f"left running: {[p.info for p in left]}"


def test_two_queued_experiments_run_at_once_against_the_server(queued, admin):
    status, logs, ws, env = queued["status"], queued["logs"], queued["ws"], queued["env"]
    assert status == dict.fromkeys(QUEUED, "Success"), {
        n: p.stdout[-3000:] for n, p in logs.items()
    }
    for p in logs.values():
        assert "database is locked" not in p.stdout + p.stderr

    exp = admin.get_experiment_by_name(EXPERIMENT)
    runs = admin.search_runs([exp.experiment_id])
    by_name = {r.data.tags.get("dvc_experiment"): r for r in runs}
    assert set(by_name) == set(QUEUED), [r.data.tags for r in runs]
    for name, r in by_name.items():
        assert r.info.status == "FINISHED"
        assert r.data.params["train.learning_rate"] == QUEUED[name]
        epochs = int(r.data.params["train.epochs"])
        for key in ("loss", "val_accuracy"):  # no lost metric
            steps = sorted(m.step for m in admin.get_metric_history(r.info.run_id, key))
            assert steps == list(range(epochs)), (name, key, steps)
        assert "test_accuracy" in r.data.metrics
    a, b = sorted(by_name.values(), key=lambda r: r.info.start_time)
    assert b.info.start_time < a.info.end_time, "the two experiments did not overlap"
    # Both registered; the champion is the better of the two (the gate raced here too).
    versions = admin.search_model_versions(f"name='{MODEL}'")
    assert {mv.run_id for mv in versions} == {r.info.run_id for r in runs}
    best = max(versions, key=lambda mv: (float(mv.tags["test_accuracy"]), int(mv.version)))
    assert admin.get_model_version_by_alias(MODEL, "champion").version == best.version
    shown = json.loads(run([str(BIN / "dvc"), "exp", "show", "--json"], ws, env).stdout)
    assert set(QUEUED) <= {e.get("name") for row in shown for e in row.get("experiments") or []}


def test_a_pushed_experiment_applies_on_another_clone_without_training(queued, admin):
    """`dvc exp push` on one clone, `dvc exp pull` + `dvc exp apply` on another: the model comes
    from the remote (persist: true does not stand in the way: apply checks out, it never
    consults the run cache), and `dvc repro` then has nothing to run."""
    root, ws, env = queued["root"], queued["ws"], queued["env"]
    name = "lr-1e-3"
    run([str(BIN / "dvc"), "exp", "push", "origin", name], ws, env)
    other = root / "other"
    run(["git", "clone", "-q", "-b", "main", str(root / "origin.git"), str(other)], root, env)
    run([str(BIN / "dvc"), "exp", "pull", "origin", name], other, env)
    runs_before = len(admin.search_runs([admin.get_experiment_by_name(EXPERIMENT).experiment_id]))
    run([str(BIN / "dvc"), "exp", "apply", name], other, env)
    status = run([str(BIN / "dvc"), "status"], other, env)
    assert only_always_run(status.stdout), status.stdout
    repro = run([str(BIN / "dvc"), "repro"], other, env)
    assert re.findall(r"Running stage '(\w+)'", repro.stdout) == ALWAYS_RUN, repro.stdout
    for out in ("models/model.keras", "models/export/model.tflite", "data/prepared/test.npz"):
        assert (other / out).stat().st_size > 0, f"{out} not restored"
    applied = json.loads((other / "models" / "logged_model.json").read_text())
    run_ = admin.get_run(applied["run_id"])
    assert run_.data.tags["dvc_experiment"] == name  # the experiment's own model, restored
    assert float(run_.data.params["train.learning_rate"]) == float(QUEUED[name])
    assert len(admin.search_runs([run_.info.experiment_id])) == runs_before  # no new run


def test_two_registers_at_once_through_the_server(stores, admin):
    """The race harness of tests/code/test_register.py, over HTTP with basic auth."""
    outcomes = race(stores["uri"], 6, seed=1)
    lost = [o for o in outcomes if o.champion != o.expected]
    assert not lost, lost
