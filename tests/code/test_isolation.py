"""Tests never see the caller's stores or service settings (tests/helpers.py, tests/conftest.py)."""

from __future__ import annotations

import os

from tests.helpers import BIN, FOREIGN_PREFIXES, isolated_env


def test_a_callers_settings_never_reach_a_tests_processes(monkeypatch, tmp_path):
    leaks = {
        "MLFLOW_REGISTRY_URI": "http://team:5000",
        "MLFLOW_TRACKING_URI": "http://team:5000",
        "DVC_ROOT": "/elsewhere",
        "BENTOML_HOME": "/home/me/bentoml",
        "DIGIT_FAST_LANE": "0",
        "PYTHONPATH": "/home/me/lib",
    }
    for name, value in leaks.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("LC_ALL", "C.UTF-8")  # the locale does pass
    env = isolated_env(tmp_path)
    assert env["MLFLOW_TRACKING_URI"] == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert env["BENTOML_HOME"] == str(tmp_path / "bentoml")
    passed = {k for k in leaks if env.get(k) == leaks[k]}
    assert passed == set(), f"leaked into the test environment: {passed}"
    assert env["LC_ALL"] == "C.UTF-8"
    assert env["PATH"].split(os.pathsep)[0] == str(BIN)


def test_the_test_process_itself_holds_none_of_them():
    """conftest.py removed them before any test module was imported."""
    assert [n for n in os.environ if n.startswith(FOREIGN_PREFIXES)] == []
