"""Two replicas behind a real HAProxy on loopback, replaced one after the other under load, by a
new champion: not one request may go unanswered or come back non-2xx.

The replicas serve a copy of the `served` fixture's BentoML home (its own store is never touched)
with one worker each, both pinned to the fixture's model (version "1"). A new champion, the same
Keras model under a new tag whose card says version "2" (bench/rollout.copy_model), goes into
the copy; then, while 8 keep-alive clients post a digit 30 ms after each reply, replica 1 and
then replica 2 are replaced by ones pinned to it, with deploy/replicas.py's own procedure. Every
reply must be a 200 from "1" or "2", only "2" once the second replacement has drained, and some
must have been answered during each replacement. The figures go to
tests/artifacts/replicas/rolling.json (docs/replicas.md quotes them).
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from bench.closed_loop import Load, Reply
from bench.rollout import copy_model
from deploy.replicas import Replacement, Replicas
from tests.helpers import FIXTURE, REPO, free_port, second_server_env

pytestmark = pytest.mark.e2e
MODEL = "mnist-cnn"
CONNECTIONS = 8
PAUSE_S = 0.03  # per client between a reply and its next request: ~200 requests/s at most
WARM_S, COOL_S = 2.0, 2.0  # load before the first and after the last replacement
ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS") or REPO / "tests" / "artifacts") / "replicas"


def served_version(home: Path, tag: str) -> str:
    """The registry version in the Bento model's card (model.yaml's metadata)."""
    meta = yaml.safe_load((home / "models" / tag.replace(":", "/") / "model.yaml").read_text())
    return str(meta["metadata"]["mlflow_version"])


def digit_body() -> bytes:
    with np.load(FIXTURE) as f:
        return json.dumps({"image": f["x_test"][0].tolist()}).encode()


def during(replies: list[Reply], step: Replacement) -> list[Reply]:
    """Replies that came back while `step` ran (from its start to the old process's exit)."""
    return [r for r in replies if step.started <= r.ended <= step.stopped]


def figures(replies: list[Reply], steps: list[Replacement], wall_s: float) -> dict:
    latencies = [r.seconds for r in replies]
    return {
        "connections": CONNECTIONS,
        "pause_ms": 1000 * PAUSE_S,
        "requests": len(replies),
        "load_s": round(wall_s, 1),
        "requests_per_s": round(len(replies) / wall_s, 1),
        "median_ms": round(1000 * statistics.median(latencies), 1),
        "p99_ms": round(1000 * float(np.percentile(latencies, 99)), 1),
        "longest_ms": round(1000 * max(latencies), 1),
        "replacements": [
            {
                "old": s.old,
                "new": s.new,
                "seconds": round(s.seconds, 1),
                "start_to_ready_s": round(s.ready - s.started, 1),
                "ready_to_up_s": round(s.up - s.ready, 1),
                "up_to_drained_s": round(s.drained - s.up, 2),
                "drained_to_stopped_s": round(s.stopped - s.drained, 1),
                "requests_answered": len(during(replies, s)),
                "longest_ms": round(
                    1000 * max((r.seconds for r in during(replies, s)), default=0), 1
                ),
            }
            for s in steps
        ],
    }


def test_rolling_replacement_drops_nothing(served, tmp_path):
    env = second_server_env(served["env"], tmp_path / "home")  # a copy: the fixture's stays as is
    home = Path(env["BENTOML_HOME"])
    old_tag = f"{MODEL}:" + (home / "models" / MODEL / "latest").read_text().strip()
    old = served_version(home, old_tag)
    new = str(int(old) + 1)
    new_tag = copy_model(home, old_tag, new)  # the next version, same weights: the probe passes
    base = {**env, "DIGIT_WORKERS": "1", "DIGIT_TF_THREADS": "1", "DIGIT_MODEL_TAG": old_tag}
    to_new = {"DIGIT_MODEL_TAG": new_tag}
    with Replicas(2, free_port(), env=base, run_dir=tmp_path / "run", cwd=served["dir"]) as reps:
        began = time.monotonic()
        with Load(reps.url, digit_body(), connections=CONNECTIONS, pause_s=PAUSE_S) as load:
            time.sleep(WARM_S)
            steps = [reps.replace(0, to_new), reps.replace(1, to_new)]
            time.sleep(COOL_S)
        wall_s = time.monotonic() - began
    replies = load.replies
    measured = figures(replies, steps, wall_s)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "rolling.json").write_text(json.dumps(measured, indent=2) + "\n")
    print(json.dumps(measured, indent=2))

    failed = [r for r in replies if r.status == 0]
    assert not failed, f"{len(failed)} requests without a reply, first: {failed[0].error}"
    non2xx = [r.status for r in replies if not 200 <= r.status < 300]
    assert not non2xx, f"{len(non2xx)} non-2xx replies: {sorted(set(non2xx))}"
    assert {r.version for r in replies} <= {old, new}
    assert {r.version for r in replies if r.ended < steps[0].ready} == {old}
    after = [r for r in replies if r.started > steps[1].drained]
    assert after and {r.version for r in after} == {new}, "an old replica answered after both"
    for step in steps:
        assert during(replies, step), f"nothing answered while {step.old} was replaced"
