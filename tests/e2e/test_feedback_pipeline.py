"""People's feedback through the pipeline, for real: a SQLite feedback database with a few hundred
rows → `dvc repro` → the export, prepare's split, training on the share, the people metric, the
lineage tags and the people gate in the MLflow registry.

The rows are fixture digits drawn the way people draw on the page (a thick brush on a
large canvas, off-centre), made MNIST-like again by the service's own preprocessing, and stored
through the same `FeedbackStore` the service writes with, labelled, answered right four times in
five by two model versions.
"""

from __future__ import annotations

import hashlib
import io
import json
import re

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image, ImageFilter

from common.feedback_store import FeedbackStore, NewFeedback
from pipelines.prepare import people_share
from pipelines.tracking import feedback_hash
from service.inputs.limits import Limits
from service.inputs.pictures import from_image_bytes
from tests.helpers import (
    ALWAYS_RUN,
    BIN,
    FIXTURE,
    isolated_env,
    make_workspace,
    run,
    set_params,
)

pytestmark = pytest.mark.e2e
ROWS = 300
MODEL = "mnist-cnn"


def drawn(x28: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A digit as a person draws it on the page's 280×280 pad (a thick round brush, somewhere on
    the pad, a little small or large), then through the service's preprocessing."""
    size = int(rng.integers(150, 260))
    ink = Image.fromarray(x28).resize((size, size), Image.BILINEAR).filter(ImageFilter.MaxFilter(9))
    pad = Image.new("L", (280, 280))
    pad.paste(ink, (int(rng.integers(0, 281 - size)), int(rng.integers(0, 281 - size))))
    out = io.BytesIO()
    pad.save(out, format="PNG")
    return from_image_bytes(out.getvalue(), Limits())


def synthetic_feedback(url: str) -> list[NewFeedback]:
    rng = np.random.default_rng(17)
    with np.load(FIXTURE) as f:
        # the fixture has 200 test digits: take 300 of all 1,000, redrawn
        x_all = np.concatenate([f["x_test"], f["x_train"]])
        y_all = np.concatenate([f["y_test"], f["y_train"]])
    pick = rng.choice(len(y_all), ROWS, replace=False)
    xs, ys = x_all[pick], y_all[pick]
    rows = []
    for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
        right = rng.random() < 0.8
        answered = int(y) if right else int((y + rng.integers(1, 10)) % 10)
        key = hashlib.sha256(f"row {i}".encode()).hexdigest()
        rows.append(
            NewFeedback(
                key=key,
                predicted_at=1_700_000_000 + i,
                client=f"client{i % 7}",
                seen=drawn(x, rng),
                answered=answered,
                confidence=float(rng.uniform(0.5, 1.0)),
                label=int(y),
                model_version=str(1 + i % 2),
            )
        )
    store = FeedbackStore(url)
    for i, row in enumerate(rows):
        store.add(row, max_rows=10_000, per_client=10_000, window_s=60, now=1_700_000_100 + i)
    store.close()
    return rows


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    root = tmp_path_factory.mktemp("feedback-e2e")
    env = isolated_env(root)
    workspace = make_workspace(root / "project", env)
    set_params(workspace, {"register": {"people_min_images": 20, "people_tolerance": 0.0}})
    rows = synthetic_feedback(env["DIGIT_FEEDBACK_DB"])
    return {"root": root, "env": env, "dir": workspace, "rows": rows}


def repro(ws):
    proc = run([str(BIN / "dvc"), "repro"], ws["dir"], ws["env"])
    return proc, re.findall(r"Running stage '(\w+)'", proc.stdout + proc.stderr)


def load(path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as npz:
        return dict(npz)


def client(ws) -> MlflowClient:
    return MlflowClient(tracking_uri=ws["env"]["MLFLOW_TRACKING_URI"])


def test_repro_exports_splits_trains_and_measures_on_feedback(ws):
    _, ran = repro(ws)
    assert ran[0] in ("feedback", "fetch") and set(ran) >= {"feedback", "prepare", "train"}
    d, rows = ws["dir"], ws["rows"]
    exported = load(d / "data/feedback/feedback.npz")
    assert len(exported["y"]) == ROWS
    by_key = {r.key: r for r in rows}
    assert exported["key"].tolist() == [r.key for r in rows]  # stored order: time, then key
    for i, key in enumerate(exported["key"].tolist()):
        row = by_key[key]
        assert np.array_equal(exported["x"][i], row.seen), "pixels changed on the way"
        assert (exported["y"][i], exported["answered"][i]) == (row.label, row.answered)
        assert exported["model_version"][i] == row.model_version

    trains, people = (
        load(d / "data/prepared/feedback_train.npz"),
        load(d / "data/prepared/people.npz"),
    )
    assert len(trains["y"]) + len(people["y"]) == ROWS
    assert not set(trains["key"].tolist()) & set(people["key"].tolist())
    assert 100 <= len(people["y"]) <= 200  # share 0.5 of 300, by a seeded hash
    expected_train = people_share(exported["key"], seed=42) < 0.5
    assert sorted(trains["key"].tolist()) == sorted(exported["key"][expected_train].tolist())

    train = json.loads((d / "metrics/train.json").read_text())
    assert train["feedback_images"] == len(trains["y"])
    with np.load(d / "data/prepared/train.npz") as f:
        assert train["train_images"] == len(f["y"]) + len(trains["y"])

    evaluation = json.loads((d / "metrics/eval.json").read_text())
    p = evaluation["people"]
    assert p["images"] == len(people["y"]) and 0.0 <= p["accuracy"] <= 1.0
    assert p["served_accuracy"] == pytest.approx(float(np.mean(people["answered"] == people["y"])))
    assert set(p["by_version"]) == {"1", "2"}
    assert sum(v["images"] for v in p["by_version"].values()) == p["images"]
    assert p["accuracy"] > 0.3  # trained on MNIST and a share of these: far above chance
    card = (d / "docs/model-card.md").read_text()
    assert "### On people's data" in card and f"{p['images']:,} held-out" in card

    # The run and its registry version say exactly which feedback they saw.
    run_id = json.loads((d / "models/mlflow_run.json").read_text())["run_id"]
    c = client(ws)
    tags = c.get_run(run_id).data.tags
    for_train = {k: v[..., None] if k == "x" else v for k, v in trains.items()}
    for_people = {k: v[..., None] if k == "x" else v for k, v in people.items()}
    assert tags["feedback_hash"] == feedback_hash({"train": for_train, "people": for_people})
    assert json.loads(tags["feedback_rows"]) == {"train": len(trains["y"]), "people": p["images"]}
    assert c.get_run(run_id).data.metrics["people_accuracy"] == pytest.approx(p["accuracy"])
    mv = c.get_model_version_by_alias(MODEL, "champion")
    assert mv.tags["feedback_hash"] == tags["feedback_hash"]
    assert float(mv.tags["people_accuracy"]) == pytest.approx(p["accuracy"], abs=1e-6)
    ws["first"] = {"people": p, "export": (d / "data/feedback/feedback.npz").read_bytes()}


def test_same_database_reruns_only_the_export_with_identical_bytes(ws):
    _, ran = repro(ws)
    assert ran == ALWAYS_RUN
    assert (ws["dir"] / "data/feedback/feedback.npz").read_bytes() == ws["first"]["export"]


def test_a_new_version_is_gated_on_the_champions_people_accuracy(ws):
    """A retrain with the people gate on (20 images suffice here): register loads the champion
    from the registry, scores it on the same people set and records the verdict."""
    set_params(ws["dir"], {"train": {"feedback_weight": 0.5}})
    _, ran = repro(ws)
    assert ran == [*ALWAYS_RUN, "train", "evaluate", "register"]
    receipt = json.loads((ws["dir"] / "reports/register.json").read_text())
    verdict = receipt["people_gate"]
    champion_then = ws["first"]["people"]["accuracy"]
    mine = json.loads((ws["dir"] / "metrics/eval.json").read_text())["people"]["accuracy"]
    # the champion's figure is v1's own people accuracy from its evaluate: the same images
    assert f"against the champion's {champion_then:.4f}" in verdict and f"{mine:.4f}" in verdict
    c = client(ws)
    assert c.get_model_version(MODEL, "2").tags["people_gate"] == verdict
    champion = str(c.get_model_version_by_alias(MODEL, "champion").version)
    if mine < champion_then:
        assert verdict.startswith("held back") and champion == "1"
        assert "people's data" in receipt["reason"]
    else:
        assert verdict.startswith("passed")
