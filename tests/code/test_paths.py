"""Stores are anchored at the real repository root, also inside DVC's temp experiments."""

from __future__ import annotations

from pipelines import paths


def test_repo_root_is_the_folder_with_dvc_yaml(tmp_path):
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "pipelines").mkdir()
    assert paths.repo_root(tmp_path / "pipelines") == tmp_path


def test_temp_experiments_use_the_owning_repo(tmp_path):
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    exp = tmp_path / ".dvc" / "tmp" / "exps" / "tmpabc123"
    exp.mkdir(parents=True)
    (exp / "dvc.yaml").write_text("stages: {}\n")
    assert paths.repo_root(exp) == tmp_path


def test_tracking_uri_defaults_to_sqlite_at_the_root(monkeypatch, tmp_path):
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    assert paths.tracking_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert paths.artifact_root() == (tmp_path / "mlartifacts").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    assert paths.tracking_uri() == "http://mlflow.internal:5000"
    # A tracking server keeps the artifacts itself (proxied), not a folder on this machine.
    monkeypatch.delenv("MLFLOW_ARTIFACT_ROOT", raising=False)
    assert paths.artifact_root() is None


def test_dvc_root_names_the_store_but_not_the_workspace(monkeypatch, tmp_path):
    # What `dvc exp run --temp` does: run in a copy, with DVC_ROOT pointing at the real repo.
    real, copy = tmp_path / "repo", tmp_path / "repo" / ".dvc" / "tmp" / "exps" / "tmpxyz"
    copy.mkdir(parents=True)
    for d in (real, copy):
        (d / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.chdir(copy)
    monkeypatch.setenv("DVC_ROOT", str(real))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert paths.workspace() == copy  # params, data and outputs: the experiment's own
    assert paths.repo_root() == real  # the MLflow store: the one the user browses
    assert paths.tracking_uri() == f"sqlite:///{real / 'mlflow.db'}"
