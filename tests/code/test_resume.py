"""The training backup's key and lifecycle (the e2e test interrupts a real `dvc repro`)."""

from __future__ import annotations

import json

import pipelines.train  # noqa: F401  (loads the training code, as the stage does)
from pipelines import resume
from tests.helpers import REPO


def _saved(backup: resume.Backup, epoch: int = 2) -> None:
    backup.start()
    meta = {"epoch": epoch, "run_id": "r", "wall_time_s": 1.0, "stopped": False}
    (backup.folder / resume.META).write_text(json.dumps(meta | {"early_stopping": None}))


def test_a_backup_is_resumed_only_under_its_own_key(tmp_path):
    _saved(resume.Backup(tmp_path, "a" * 64))
    saved = resume.Backup(tmp_path, "a" * 64).load()
    assert saved is not None and saved.epoch == 2 and saved.run_id == "r"
    # Other params, data or code: a new key. The old backup is deleted, never resumed.
    assert resume.Backup(tmp_path, "b" * 64).load() is None
    assert not (tmp_path / resume.BACKUP_ROOT / f"train-{'a' * 24}").exists()
    assert resume.Backup(tmp_path, "a" * 64).load() is None


def test_a_half_written_backup_is_not_resumed(tmp_path):
    backup = resume.Backup(tmp_path, "c" * 64)
    backup.start()  # killed before the first epoch ended: no meta.json
    assert backup.load() is None and not (tmp_path / resume.BACKUP_ROOT).exists()


def test_the_key_covers_params_data_code_and_versions():
    base = {"params": {"seed": 42, "train": {"epochs": 40}}, "data": "d", "code": "c"}
    k = resume.key(**base)
    assert resume.key(**base) == k
    assert resume.key(**{**base, "params": {"seed": 42, "train": {"epochs": 41}}}) != k
    assert resume.key(**{**base, "data": "e"}) != k
    assert resume.key(**{**base, "code": "x"}) != k


def test_the_code_fingerprint_covers_every_module_training_runs():
    names = {f"{p.parent.name}/{p.name}" for p in resume.loaded_sources()}
    for module in ("train", "model", "resume", "params", "data", "tracking", "atomic"):
        assert f"pipelines/{module}.py" in names
    assert "common/image.py" in names
    assert all(str(p).startswith(str(REPO)) for p in resume.loaded_sources())
