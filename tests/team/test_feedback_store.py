"""The feedback loop on the team's real PostgreSQL: `python -m stores env` names the database, the
service's store works on it (shared secret, limits, the queue) and the pipeline's feedback stage
exports from it, byte-identical for the same rows."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest

from common.feedback_store import Duplicate, FeedbackStore, NewFeedback, RateLimited
from pipelines import layout
from tests.helpers import BIN, REPO, run
from tests.team.conftest import stores_cmd

LIMITS = {"max_rows": 1000, "per_client": 3, "window_s": 60.0}


@pytest.fixture(scope="module")
def feedback_url(stores) -> str:
    out = run(stores_cmd("env"), REPO, stores["env"]).stdout
    found = re.search(r"^export DIGIT_FEEDBACK_DB=(\S+)$", out, re.M)
    assert found, out
    assert found[1].startswith("postgresql") and found[1].endswith("/feedback"), found[1]
    return found[1]


def row(key: str, digit: int, label: int | None, confidence: float, client: str) -> NewFeedback:
    seen = np.zeros((28, 28), np.uint8)
    seen[4:24, 10 + digit] = 200 + digit  # a different picture per row, its pixels checkable
    return NewFeedback(
        key=key,
        predicted_at=1_700_000_000,
        client=client,
        seen=seen,
        answered=digit,
        confidence=confidence,
        label=label,
        model_version="3",
    )


def workspace(folder) -> None:
    """A folder the stage takes for its workspace: the project's dvc.yaml and params.yaml."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy2(REPO / name, folder / name)


def export_stage(tmp_path, env: dict, url: str) -> bytes:
    workspace(tmp_path)
    run(
        [str(BIN / "python"), "-m", "pipelines.feedback"],
        tmp_path,
        {**env, "DIGIT_FEEDBACK_DB": url},
    )
    return (tmp_path / layout.FEEDBACK).read_bytes()


def test_the_store_on_postgres_signs_limits_queues_and_exports(stores, feedback_url, tmp_path):
    one, two = FeedbackStore(feedback_url), FeedbackStore(feedback_url)
    try:
        assert one.secret() == two.secret() and len(one.secret()) >= 32  # every worker agrees
        before = one.count()
        sure = one.add(row("a" * 64, 7, 1, 0.97, "c1"), **LIMITS)
        unsure = two.add(row("b" * 64, 4, None, 0.55, "c1"), **LIMITS)
        assert unsure > sure and one.count() == before + 2
        with pytest.raises(Duplicate):  # a replay: the key is unique in PostgreSQL too
            two.add(row("a" * 64, 7, 1, 0.97, "c2"), **LIMITS)
        one.add(row("c" * 64, 2, 2, 0.99, "c1"), **LIMITS)
        with pytest.raises(RateLimited):  # c1's fourth row within the window
            one.add(row("d" * 64, 5, 5, 0.99, "c1"), **LIMITS)
        queued = [q.id for q in one.queue(0.9, 10)]
        assert unsure in queued and sure not in queued
        two.review(unsure, 9, 0.9)
        assert unsure not in [q.id for q in one.queue(0.9, 10)]
    finally:
        one.close()
        two.close()

    first = export_stage(tmp_path / "ws1", stores["env"], feedback_url)
    second = export_stage(tmp_path / "ws2", stores["env"], feedback_url)
    assert first == second  # the same rows, the same bytes: DVC sees no change
    with np.load(tmp_path / "ws1" / layout.FEEDBACK) as data:
        keys = data["key"].tolist()
        assert {"a" * 64, "b" * 64, "c" * 64} <= set(keys) and "d" * 64 not in keys
        i = keys.index("b" * 64)  # not sure, then a helper said 9
        assert data["y"][i] == 9 and data["reviewed"][i] and data["answered"][i] == 4
        j = keys.index("a" * 64)
        assert data["y"][j] == 1 and data["answered"][j] == 7 and data["x"][j][10, 17] == 207
        assert set(data["model_version"].tolist()) == {"3"}


def test_the_password_stays_out_of_what_the_stage_prints(stores, feedback_url, tmp_path):
    password = re.search(r"//[^:]+:([^@]+)@", feedback_url)[1]
    workspace(tmp_path)
    proc = run(
        [str(BIN / "python"), "-m", "pipelines.feedback"],
        tmp_path,
        {**stores["env"], "DIGIT_FEEDBACK_DB": feedback_url},
    )
    assert "labelled rows from postgresql" in proc.stderr, proc.stderr
    assert password not in proc.stdout + proc.stderr
