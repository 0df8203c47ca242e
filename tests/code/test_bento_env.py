"""The Bento's environment is the tested one: requirements.lock's pins, resolved offline."""

from __future__ import annotations

import yaml

from pipelines import bento_requirements as br
from tests.helpers import REPO

BENTOFILE = yaml.safe_load((REPO / "bentofile.yaml").read_text())


def _pins() -> dict[str, str]:
    return br.lock_pins(REPO / "requirements.bento.txt")


def test_bentofile_takes_the_pinned_file_and_resolves_nothing():
    python = BENTOFILE["python"]
    assert python["requirements_txt"] == "./requirements.bento.txt"
    assert python["lock_packages"] is False  # a resolver at build time needs the network
    assert "packages" not in python  # no second, looser list beside the file


def test_every_pin_is_the_lock_pin():
    lock = br.lock_pins()
    pins = _pins()
    assert pins and {name: lock.get(name) for name in pins} == pins
    assert all("==" in pin for pin in pins.values())


def test_the_file_is_what_the_service_needs_now():
    """What service/ and common/ import, uvloop and httptools, and their dependencies: a new
    import or a new lock without regenerating fails here."""
    assert (REPO / "requirements.bento.txt").read_text() == br.render(), (
        "requirements.bento.txt is stale: run `python -m pipelines.bento_requirements`"
    )
    pins = _pins()
    assert {"uvloop", "httptools", "tensorflow", "keras", "bentoml", "pillow"} <= set(pins)
    assert not {"mlflow", "dvc", "pytest", "ruff"} & set(pins)  # training and dev tools stay out


def test_usage_tracking_is_off_in_the_bento():
    assert {"name": "BENTOML_DO_NOT_TRACK", "value": "true"} in BENTOFILE["envs"]
