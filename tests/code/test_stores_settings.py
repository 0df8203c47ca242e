"""The team stores' settings: a wrong value stops `python -m stores` with a sentence naming the
variable, never a traceback; the default lets a signed-in teammate log into a shared experiment."""

from __future__ import annotations

import pytest

from stores.settings import Settings


@pytest.mark.parametrize(
    ("name", "value"),
    [("STORES_PG_PORT", "abc"), ("STORES_MLFLOW_PORT", "70000"), ("STORES_MLFLOW_WORKERS", "0")],
)
def test_a_bad_number_names_the_variable(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit, match=f"{name}='{value}' is not a port or count"):
        Settings.from_env()


def test_permissions_are_mlflows_and_edit_by_default(monkeypatch):
    assert Settings.from_env().default_permission == "EDIT"
    monkeypatch.setenv("STORES_DEFAULT_PERMISSION", "read")
    assert Settings.from_env().default_permission == "READ"
    monkeypatch.setenv("STORES_DEFAULT_PERMISSION", "everything")
    with pytest.raises(SystemExit, match="give one of READ, EDIT, MANAGE, NO_PERMISSIONS"):
        Settings.from_env()


def test_ports_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("STORES_PG_PORT", "25432")
    monkeypatch.setenv("STORES_MLFLOW_PORT", "25001")
    s = Settings.from_env()
    assert (s.pg_port, s.mlflow_port, s.tracking_uri) == (25432, 25001, "http://127.0.0.1:25001")
