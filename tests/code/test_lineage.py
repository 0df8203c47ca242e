"""Lineage tags (pipelines/tracking.py): what ties a model to its code, params and data."""

from __future__ import annotations

import hashlib
import json
import subprocess

import numpy as np

from pipelines.tracking import LINEAGE_TAGS, lineage, params_hash
from tests.helpers import clean_env


def test_equal_params_hash_equal_whatever_the_order():
    a = {"train": {"epochs": 3, "learning_rate": 0.001}, "seed": 1}
    b = {"seed": 1, "train": {"learning_rate": 1e-3, "epochs": 3}}
    assert params_hash(a) == params_hash(b)
    assert params_hash(a) != params_hash({**a, "seed": 2})


def test_a_dirty_tree_names_its_files_and_dvc_hashes_match_md5(tmp_path, monkeypatch):
    env = clean_env()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]

    def sh(*args: str) -> None:
        subprocess.run([*git, *args], cwd=tmp_path, env=env, check=True, capture_output=True)

    sh("init", "-q")
    # what makes it the workspace; its outputs, like dvc.lock, are rewritten by the run itself
    spec = "stages:\n  s:\n    cmd: x\n    outs: [data.npz, {models/export: {persist: true}}]\n"
    (tmp_path / "dvc.yaml").write_text(spec)
    (tmp_path / "params.yaml").write_text("seed: 1\n")
    (tmp_path / "data.npz").write_bytes(b"some bytes")
    (tmp_path / "models/export").mkdir(parents=True)
    (tmp_path / "models/export/saved.pb").write_text("v1")
    (tmp_path / "dvc.lock").write_text("v1")
    sh("add", "dvc.yaml", "params.yaml", "data.npz", "models", "dvc.lock")
    sh("commit", "-q", "-m", "first")
    monkeypatch.chdir(tmp_path)
    arrays = [np.arange(4)]

    clean = lineage({"seed": 1}, arrays, ["data.npz"])
    assert set(clean) == set(LINEAGE_TAGS)
    assert "-dirty" not in clean["git_commit"]
    assert json.loads(clean["git_dirty_files"]) == []
    assert json.loads(clean["data_md5"]) == {"data.npz": hashlib.md5(b"some bytes").hexdigest()}

    (tmp_path / "dvc.lock").write_text("v2")  # what a stage before train did in this repro
    (tmp_path / "models/export/saved.pb").write_text("v2")
    assert json.loads(lineage({"seed": 1}, arrays, ["data.npz"])["git_dirty_files"]) == []

    (tmp_path / "params.yaml").write_text("seed: 2\n")
    (tmp_path / "untracked.txt").write_text("not part of the code")
    dirty = lineage({"seed": 2}, arrays, ["data.npz"])
    assert dirty["git_commit"] == clean["git_commit"] + "-dirty"
    assert json.loads(dirty["git_dirty_files"]) == ["params.yaml"]
    assert dirty["params_hash"] != clean["params_hash"]
    assert dirty["data_hash"] == clean["data_hash"]


def test_outside_git_lineage_says_unknown(tmp_path, monkeypatch):
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "f").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    tags = lineage({}, [], ["f"])
    assert (tags["git_commit"], json.loads(tags["git_dirty_files"])) == ("unknown", [])
