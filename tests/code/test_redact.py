"""Secrets never printed: one redaction function, and the places that print URLs use it."""

from __future__ import annotations

import re
import subprocess

import pytest

from pipelines.redact import redact
from pipelines.tracking import flatten
from tests.helpers import BIN, REPO, clean_env, run

SECRET_URI = "http://bob:s3cret@127.0.0.1:9"


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("http://user:pass@host/simple", "http://user:***@host/simple"),
        ("postgresql://me:p%40ss@db:5432/mlflow", "postgresql://me:***@db:5432/mlflow"),
        ("https://u:p@ss@host/a@b", "https://u:***@host/a@b"),  # an unescaped @ in the password
        ("https://ghp_token@github.com/x", "https://***@github.com/x"),  # a bare token
        ("at http://a:b@h and https://c:d@e/", "at http://a:***@h and https://c:***@e/"),
        ("sqlite:////tmp/mlflow.db", "sqlite:////tmp/mlflow.db"),
        ("file:///data/a@b.npz", "file:///data/a@b.npz"),  # an @ in a path is no credential
        ("https://pypi.org/simple", "https://pypi.org/simple"),
    ],
)
def test_redact(text, shown):
    assert redact(text) == shown


def test_mlflow_params_are_redacted():
    assert flatten({"data": {"index_url": "https://u:pw@idx/simple", "n": 3}}) == {
        "data.index_url": "https://u:***@idx/simple",
        "data.n": 3,
    }


def test_package_never_prints_the_tracking_password(tmp_path):
    """An unreachable tracking server with credentials in its URI: the error says where, masked."""
    for name in ("params.yaml", "dvc.yaml"):
        (tmp_path / name).write_text((REPO / name).read_text())
    env = clean_env(
        MLFLOW_TRACKING_URI=SECRET_URI,
        MLFLOW_HTTP_REQUEST_MAX_RETRIES="0",
        MLFLOW_HTTP_REQUEST_TIMEOUT="5",
        BENTOML_HOME=str(tmp_path / "bentoml"),
        PYTHONPATH=str(REPO),
    )
    proc = run([str(BIN / "python"), "-m", "pipelines.package"], tmp_path, env, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "s3cret" not in out
    assert "cannot read the registry at http://bob:***@127.0.0.1:9" in out


def test_make_mlflow_ui_echoes_the_store_redacted():
    """`make -n` shows every recipe line as make would run it (echo lines too): the secret is in
    none; the banner line, run by the shell, prints the URI masked."""
    env = clean_env(MLFLOW_TRACKING_URI=SECRET_URI)
    lines = run(["make", "-n", "mlflow-ui"], REPO, env).stdout
    assert "s3cret" not in lines
    (banner,) = [line for line in lines.splitlines() if re.match(r'echo "==> MLflow UI', line)]
    shown = subprocess.run(
        ["bash", "-c", banner], cwd=REPO, env=env, capture_output=True, text=True, check=True
    ).stdout
    assert "(store: http://bob:***@127.0.0.1:9)" in shown and "s3cret" not in shown


def test_a_stage_traceback_is_redacted(tmp_path):
    """An uncaught MlflowException quotes the full request URL: the stage prints it masked."""
    for name in ("params.yaml", "dvc.yaml"):
        (tmp_path / name).write_text((REPO / name).read_text())
    (tmp_path / "models").mkdir()
    (tmp_path / "metrics").mkdir()
    (tmp_path / "models/logged_model.json").write_text(
        '{"run_id": "r", "model_uri": "models:/m-1"}'
    )
    (tmp_path / "metrics/eval.json").write_text('{"accuracy": 0.99}')
    env = clean_env(
        MLFLOW_TRACKING_URI=SECRET_URI,
        MLFLOW_HTTP_REQUEST_MAX_RETRIES="0",
        MLFLOW_HTTP_REQUEST_TIMEOUT="5",
        PYTHONPATH=str(REPO),
    )
    proc = run([str(BIN / "python"), "-m", "pipelines.register"], tmp_path, env, check=False)
    assert proc.returncode != 0 and "Traceback" in proc.stderr
    assert "http://bob:***@127.0.0.1:9" in proc.stderr and "s3cret" not in proc.stderr
