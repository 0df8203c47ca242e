"""The files in examples/ run as they are, against the served fixture model, and say what the
service says: they are documentation (docs/cli.md), so a broken one is a broken doc.

Each runs as a subprocess in the `served` fixture's environment (its BentoML home, MLflow store
and, for the client, DIGIT_URL); every expected answer comes from the running service itself."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from tests.helpers import BIN, REPO, probability_bound, run

pytestmark = pytest.mark.e2e
EXAMPLES = REPO / "examples"
PIXELS = json.loads((EXAMPLES / "digit-7.json").read_text())["image"]


def example(served: dict, cwd: Path, *argv: str) -> str:
    env = {**served["env"], "DIGIT_URL": served["url"]}
    return run(list(argv), cwd, env, timeout=300).stdout


def answer(output: str, label: str) -> tuple[int, float]:
    match = re.search(rf"^{label}: digit (\d), confidence ([\d.]+)", output, re.MULTILINE)
    assert match, output
    return int(match[1]), float(match[2])


@pytest.fixture(scope="module")
def predicted(served) -> dict:
    return requests.post(f"{served['url']}/predict", json={"image": PIXELS}, timeout=30).json()


def picture_answer(served: dict, side: int) -> dict:
    """/predict_image of the picture the examples draw: the 7 dark on white, side×side."""
    buffer = io.BytesIO()
    Image.fromarray(255 - np.array(PIXELS, np.uint8)).resize((side, side)).save(buffer, "PNG")
    files = {"image": ("digit.png", buffer.getvalue())}
    return requests.post(f"{served['url']}/predict_image", files=files, timeout=30).json()


def test_predict_in_process(served, tmp_path, predicted):
    out = example(served, tmp_path, str(BIN / "python"), str(EXAMPLES / "predict_in_process.py"))
    assert f"(registry version {predicted['model_version']})" in out
    digit, confidence = answer(out, "array")
    assert digit == predicted["digit"]
    assert confidence == pytest.approx(predicted["confidence"], abs=1e-6)
    picture = picture_answer(served, 280)
    for label in ("PIL image", "file"):
        digit, confidence = answer(out, label)
        assert digit == picture["digit"]
        assert confidence == pytest.approx(picture["confidence"], abs=1e-6)
    drawn = out.split("ink as #:\n")[1].splitlines()[:20]
    seen = np.array(picture["seen"])[4:24, 4:24]
    assert drawn == ["  " + "".join("#" if v > 127 else "." for v in row) for row in seen]


def test_predict_mlflow(served, tmp_path, predicted):
    out = example(served, tmp_path, str(BIN / "python"), str(EXAMPLES / "predict_mlflow.py"))
    assert "Tensor('uint8', (-1, 28, 28, 1))" in out  # the logged signature
    digit, confidence = answer(out, "mlflow")
    assert digit == predicted["digit"]
    # MLflow runs the Keras model: eager vs traced, and the served runtime's precision
    bound = probability_bound(served["url"])
    assert confidence == pytest.approx(predicted["confidence"], abs=bound)


def test_client(served, tmp_path, predicted):
    out = example(served, tmp_path, str(BIN / "python"), str(EXAMPLES / "client.py"))
    digit, confidence = answer(out, "predict")
    assert (digit, confidence) == (predicted["digit"], round(predicted["confidence"], 6))
    twice = f"digits [{digit}, {digit}]"
    assert f"predict_batch: {twice}" in out and f"predict_npy: {twice}" in out
    picture = picture_answer(served, 140)
    assert answer(out, "predict_image") == (picture["digit"], round(picture["confidence"], 6))
    assert f"predict_canvas: digit {picture['digit']}" in out
    assert f"explain: digit {digit}, Grad-CAM 28x28" in out
    assert "refused: 400 wrong_shape" in out
    served_model = requests.get(f"{served['url']}/model", timeout=30).json()
    assert f"model: {served_model['name']} version {served_model['version']} (" in out


def test_score_folder(served, tmp_path):
    out = example(served, tmp_path, str(EXAMPLES / "score_folder.sh"))
    with (tmp_path / "predictions.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 100 and len(list((tmp_path / "seen").rglob("*.png"))) == 100
    right = sum(row["correct"] == "true" for row in rows)
    assert right == sum(row["digit"] == row["label"] for row in rows)
    assert f"accuracy {right / 100:.2%} ({right} of 100 labelled images)" in out
    assert out.count(": label ") == min(5, 100 - right)  # --worst 5
