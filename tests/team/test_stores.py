"""Team mode with real servers: a private PostgreSQL, the MLflow tracking server on it with basic
auth and proxied artifacts, and a DVC remote, all in a temp folder on free loopback ports.

One clone trains the fixture pipeline against them and publishes; a second clone pulls, packages
and serves the champion without training anything.
"""

from __future__ import annotations

import re

import pytest
import requests
from mlflow.tracking import MlflowClient

from tests.helpers import (
    ALWAYS_RUN,
    BIN,
    REPO,
    clean_env,
    commit,
    free_port,
    make_workspace,
    only_always_run,
    run,
    serve_cmd,
    serving,
)
from tests.team.conftest import (
    ADMIN_PASSWORD,
    ALICE,
    ALICE_PASSWORD,
    SECRETS,
    leftovers,
    stores_cmd,
)

pytestmark = pytest.mark.e2e


def test_unauthenticated_writes_are_refused(stores):
    url = f"{stores['uri']}/api/2.0/mlflow/experiments/create"
    assert requests.post(url, json={"name": "anon"}, timeout=30).status_code == 401
    wrong = requests.post(url, json={"name": "anon"}, auth=("admin", "nope"), timeout=30)
    assert wrong.status_code == 401
    ok = requests.post(url, json={"name": "by-admin"}, auth=("admin", ADMIN_PASSWORD), timeout=30)
    assert ok.status_code == 200, ok.text
    # A user the admin creates can write too.
    created = requests.post(
        f"{stores['uri']}/api/2.0/mlflow/users/create",
        json={"username": ALICE, "password": ALICE_PASSWORD},
        auth=("admin", ADMIN_PASSWORD),
        timeout=30,
    )
    assert created.status_code == 200, created.text
    mine = requests.post(url, json={"name": "by-alice"}, auth=(ALICE, ALICE_PASSWORD), timeout=30)
    assert mine.status_code == 200, mine.text
    # A teammate may log runs into her experiment (STORES_DEFAULT_PERMISSION=EDIT) but not
    # delete it: that is hers and the admin's.
    bob = ("bob", "b0b-Test-pw-9Wq")
    requests.post(
        f"{stores['uri']}/api/2.0/mlflow/users/create",
        json={"username": bob[0], "password": bob[1]},
        auth=("admin", ADMIN_PASSWORD),
        timeout=30,
    ).raise_for_status()
    exp_id = mine.json()["experiment_id"]
    api = f"{stores['uri']}/api/2.0/mlflow"
    logged = requests.post(
        f"{api}/runs/create", json={"experiment_id": exp_id}, auth=bob, timeout=30
    )
    assert logged.status_code == 200, logged.text
    gone = requests.post(
        f"{api}/experiments/delete", json={"experiment_id": exp_id}, auth=bob, timeout=30
    )
    assert gone.status_code == 403, gone.text


def test_users_live_in_postgres_and_secrets_in_no_file(stores):
    state = stores["state"]
    assert not list(state.rglob("*.db")), "a stray SQLite file"
    ini = (state / "basic_auth.ini").read_text()
    assert "postgresql+psycopg2://" in ini and "@127.0.0.1:" in ini
    readable = [p for p in state.rglob("*") if p.is_file() and "postgres" not in p.parts]
    for path in readable:
        text = path.read_bytes()
        for secret in SECRETS:
            assert secret.encode() not in text, f"{secret!r} written to {path}"
    assert all(s not in stores["up"] for s in SECRETS)
    pw = state / "secrets" / "postgres-password"
    assert pw.stat().st_mode & 0o077 == 0  # the database password: its owner's alone


@pytest.fixture(scope="module")
def published(stores, tmp_path_factory) -> dict:
    """Clone one: the fixture pipeline against the stores as alice, then `dvc push` + commit."""
    requests.post(  # idempotent: the auth test may have made her already
        f"{stores['uri']}/api/2.0/mlflow/users/create",
        json={"username": ALICE, "password": ALICE_PASSWORD},
        auth=("admin", ADMIN_PASSWORD),
        timeout=30,
    )
    root = tmp_path_factory.mktemp("team")
    env = clean_env(
        MLFLOW_TRACKING_URI=stores["uri"],
        MLFLOW_TRACKING_USERNAME=ALICE,
        MLFLOW_TRACKING_PASSWORD=ALICE_PASSWORD,
        BENTOML_HOME=str(root / "bentoml-one"),
    )
    one = make_workspace(root / "one", env)
    remote = root / "dvc-remote"
    run([str(BIN / "dvc"), "remote", "add", "-d", "team", str(remote)], one, env)
    repro = run([str(BIN / "dvc"), "repro"], one, env)
    push = run([str(BIN / "dvc"), "push"], one, env)
    commit(one, env, "trained")
    log = repro.stdout + repro.stderr + push.stdout + push.stderr
    return {"root": root, "env": env, "one": one, "remote": remote, "log": log}


@pytest.fixture
def alice(stores, monkeypatch) -> MlflowClient:
    """An MLflow client in this process, logged in as alice (MLflow reads the env per request)."""
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ALICE)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", ALICE_PASSWORD)
    return MlflowClient(tracking_uri=stores["uri"])


def all_runs(client: MlflowClient) -> list:
    exp = client.get_experiment_by_name("digit-mlops")
    return client.search_runs([exp.experiment_id]) if exp else []


def test_runs_and_champion_land_in_the_shared_server(stores, published, alice):
    (run_,) = all_runs(alice)
    assert run_.data.metrics["test_accuracy"] > 0.5
    champion = alice.get_model_version_by_alias("mnist-cnn", "champion")
    assert champion.run_id == run_.info.run_id
    assert list(published["remote"].rglob("*")), "dvc push put nothing in the remote"
    artifacts = stores["state"] / "artifacts"
    assert list(artifacts.rglob("*.keras")), "the model was not uploaded to the server"


def test_second_clone_pulls_packages_and_serves_without_training(published, alice):
    root = published["root"]
    env = {**published["env"], "BENTOML_HOME": str(root / "bentoml-two")}
    two = root / "two"
    run(["git", "clone", "-q", str(published["one"]), str(two)], root, env)
    run([str(BIN / "dvc"), "pull"], two, env)
    status = run([str(BIN / "dvc"), "status"], two, env)
    assert only_always_run(status.stdout), status.stdout
    before = len(all_runs(alice))
    repro = run([str(BIN / "dvc"), "repro"], two, env)
    assert re.findall(r"Running stage '(\w+)'", repro.stdout) == ALWAYS_RUN, repro.stdout
    assert len(all_runs(alice)) == before  # no new training run in the shared server
    run([str(BIN / "python"), "-m", "pipelines.package"], two, env, timeout=300)
    port = free_port()
    cmd = serve_cmd("service.service:DigitClassifier", port)
    body = (REPO / "examples" / "digit-7.json").read_text()
    with serving(cmd, two, env, port, root / "server-two.log") as url:
        r = requests.post(
            f"{url}/predict", data=body, timeout=30, headers={"Content-Type": "application/json"}
        )
    assert r.status_code == 200, r.text
    assert r.json()["model_version"] == "1"


def test_credentials_stay_out_of_logs_params_and_lock(published, alice):
    one = published["one"]
    texts = {
        "dvc output": published["log"],
        "dvc.lock": (one / "dvc.lock").read_text(),
        "params.yaml": (one / "params.yaml").read_text(),
        "the receipt": (one / "reports" / "register.json").read_text(),
    }
    for r in all_runs(alice):
        texts[f"run {r.info.run_id}"] = repr(r.data.params) + repr(r.data.tags)
    for where, text in texts.items():
        for secret in SECRETS:
            assert secret not in text, f"a password in {where}"


def test_stop_leaves_nothing_running_and_data_survives(stores, published, alice):
    before = [r.info.run_id for r in all_runs(alice)]
    run(stores_cmd("down"), REPO, stores["env"], timeout=120)
    assert not leftovers(stores["state"])
    assert run(stores_cmd("status"), REPO, stores["env"], check=False).returncode == 3
    run(stores_cmd("up"), REPO, stores["env"], timeout=300)
    assert [r.info.run_id for r in all_runs(alice)] == before
    assert alice.get_model_version_by_alias("mnist-cnn", "champion").version == "1"
