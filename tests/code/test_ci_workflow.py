"""The hosted-CI workflow (.github/workflows/ci.yml) is never run here, so at least it must parse
and run the verbs it promises, each a real Makefile target, with what `make report` needs."""

from __future__ import annotations

import re

import yaml

from tests.helpers import REPO

WORKFLOW = REPO / ".github" / "workflows" / "ci.yml"


def load() -> dict:
    doc = yaml.safe_load(WORKFLOW.read_text())
    doc["on"] = doc.pop(True, doc.get("on"))  # YAML 1.1 reads the key `on` as true
    return doc


def steps() -> list[dict]:
    (job,) = load()["jobs"].values()
    return job["steps"]


def step_running(verb: str) -> dict:
    (step,) = [s for s in steps() if re.search(rf"^make {verb}\b", s.get("run", ""), re.M)]
    return step


def test_it_runs_on_push_and_pull_request_on_ubuntu_with_python_311():
    doc = load()
    assert {"push", "pull_request"} <= set(doc["on"])
    (job,) = doc["jobs"].values()
    assert job["runs-on"].startswith("ubuntu")
    setup = [s for s in steps() if s.get("uses", "").startswith("actions/setup-python@")]
    assert [s["with"]["python-version"] for s in setup] == ["3.11"]
    checkout = [s for s in steps() if s.get("uses", "").startswith("actions/checkout@")]
    assert [s["with"]["fetch-depth"] for s in checkout] == [0]  # make report needs the history


def test_it_runs_the_four_verbs_in_order_and_each_is_a_makefile_target():
    targets = set(re.findall(r"^([a-z][a-z-]*):", (REPO / "Makefile").read_text(), flags=re.M))
    ran = [m for s in steps() for m in re.findall(r"^make ([a-z-]+)", s.get("run", ""), re.M)]
    assert ran == ["doctor", "lint", "test", "report"]
    assert set(ran) <= targets
    assert step_running("test")["timeout-minutes"] == 90


def test_the_report_runs_on_pull_requests_against_the_base_and_becomes_the_summary():
    step = step_running("report")
    assert step["if"] == "github.event_name == 'pull_request'"
    assert "${{ github.base_ref }}" in step["env"].values()
    assert 'REV="origin/$BASE_REF"' in step["run"]
    assert 'cat reports/change.md >> "$GITHUB_STEP_SUMMARY"' in step["run"]


def test_the_venv_cache_is_keyed_on_the_lock():
    (cache,) = [s for s in steps() if s.get("uses", "").startswith("actions/cache@")]
    assert cache["with"]["path"] == ".venv"
    assert "hashFiles('requirements.lock'" in cache["with"]["key"]
