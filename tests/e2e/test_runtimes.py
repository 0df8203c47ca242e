"""The runtimes on a real server: the packaged model carries evaluate's IRs and verdicts, `auto`
serves the fastest eligible one on this CPU (without assuming it has VNNI or BF16) and says so in
/model and /metrics, and its replies match a Keras server's on the fixture's test digits within
the agreement rule; /explain still works (Keras loads on demand), and a worker serving OpenVINO
never imports TensorFlow until it does."""

from __future__ import annotations

import io
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from common import runtimes
from tests.helpers import BIN, REPO, free_port, second_server_env, serve_cmd, serving
from tests.hostile.probe import metric

pytestmark = pytest.mark.e2e
JSON = {"Content-Type": "application/json"}
BATCH = 64  # SERVICE_LIMITS' DIGIT_MAX_BATCH


def evaluation(served) -> dict:
    return json.loads((served["dir"] / "metrics/eval.json").read_text())


def expected_auto(checks: dict) -> str:
    """What `auto` must pick here: the fastest eligible runtime this CPU runs."""
    capabilities = runtimes.cpu_capabilities()
    return next(
        r
        for r in runtimes.FASTEST_FIRST
        if r == runtimes.KERAS or (checks[r]["eligible"] and runtimes.runs_here(r, capabilities))
    )


@pytest.fixture(scope="module")
def info(served) -> dict:
    return requests.get(f"{served['url']}/model", timeout=30).json()


@pytest.fixture(scope="module")
def keras_url(served, tmp_path_factory) -> Iterator[str]:
    """The same packaged model served on Keras (DIGIT_RUNTIME=keras), beside the auto one."""
    root = tmp_path_factory.mktemp("keras-runtime")
    env = {**second_server_env(served["env"], root / "home"), "DIGIT_RUNTIME": "keras"}
    port = free_port()
    cmd = serve_cmd("service.service:DigitClassifier", port)
    with serving(cmd, served["dir"], env, port, root / "server.log") as url:
        yield url


def test_the_packaged_model_carries_the_irs_and_evaluates_verdicts(served, info):
    checks = evaluation(served)["runtimes"]
    assert set(info["runtimes"]) == set(checks)
    for name, check in checks.items():
        for key in ("eligible", "why", "accuracy", "agreement"):
            assert info["runtimes"][name][key] == check.get(key), (name, key)
    home = Path(served["env"]["BENTOML_HOME"])
    folder = home / "models" / Path(*info["bento_tag"].split(":")) / runtimes.OPENVINO_DIR
    assert (folder / runtimes.IR[runtimes.FP32]).is_file()
    assert json.loads((folder / runtimes.RUNTIMES_FILE).read_text()) == checks


def test_auto_serves_the_fastest_eligible_runtime_and_says_so(served, info):
    checks = evaluation(served)["runtimes"]
    want = expected_auto(checks)
    assert want != runtimes.KERAS  # fp32 agrees with Keras: OpenVINO always has a runtime here
    assert info["runtime"] == want
    assert info["runtime_reason"].startswith("DIGIT_RUNTIME=auto")
    for faster in runtimes.FASTEST_FIRST[: runtimes.FASTEST_FIRST.index(want)]:
        assert faster in info["runtime_reason"]  # each faster one passed over, with why
    for slower in runtimes.FASTEST_FIRST[runtimes.FASTEST_FIRST.index(want) + 1 :]:
        assert slower not in info["runtime_reason"]  # only what was passed over is named
    url = served["url"]
    labels = {"model_version": info["version"], "role": "champion"}
    assert metric(url, "digit_model_runtime", runtime=want, **labels) == 1
    assert metric(url, "digit_model_runtime", runtime="keras", **labels) == 0


def batch_answers(url: str, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probs = []
    for i in range(0, len(images), BATCH):
        body = json.dumps({"images": images[i : i + BATCH].tolist()})
        reply = requests.post(f"{url}/predict_batch", data=body, headers=JSON, timeout=60)
        assert reply.status_code == 200, reply.text
        probs += [p["probabilities"] for p in reply.json()["predictions"]]
    probs = np.array(probs)
    return probs.argmax(axis=1), probs


def test_replies_match_a_keras_server_within_the_agreement_rule(served, info, keras_url):
    """The whole test split over HTTP from both servers: the served runtime agrees with Keras
    exactly as often as evaluate measured (the same call, so the same count), which the rule
    requires to be ≥ 99.9% (here, 200 digits: every one); fp32 also gives the same numbers."""
    with np.load(served["dir"] / "data/prepared/test.npz") as f:
        x_test = f["x"]
    served_digits, served_probs = batch_answers(served["url"], x_test)
    keras_digits, keras_probs = batch_answers(keras_url, x_test)
    recorded = np.loadtxt(served["dir"] / "plots/confusion.csv", delimiter=",", skiprows=1)
    assert keras_digits.tolist() == recorded[:, 1].astype(int).tolist()  # Keras as evaluated
    agreement = float(np.mean(served_digits == keras_digits))
    check = evaluation(served)["runtimes"][info["runtime"]]
    assert agreement == pytest.approx(check["agreement"], abs=1 / len(x_test))
    assert agreement >= runtimes.MIN_AGREEMENT
    difference = np.abs(served_probs - keras_probs)
    if info["runtime"] == runtimes.FP32:
        assert difference.max() <= 1e-4
    else:  # int8 or bf16: a near-tie's probabilities move (0.15 seen), the rest barely
        assert difference.max() <= runtimes.REDUCED_PROBE_TOLERANCE
        assert difference.mean() <= 0.01  # 0.0013 seen; a wrong model: ~0.1
    # a picture goes through the same preprocessing on both, and gets the same answer
    picture = io.BytesIO()
    Image.fromarray(255 - x_test[0]).resize((280, 280)).save(picture, format="PNG")
    replies = [
        requests.post(f"{u}/predict_image", files={"image": ("d.png", picture.getvalue())}).json()
        for u in (served["url"], keras_url)
    ]
    assert replies[0]["seen"] == replies[1]["seen"]
    assert replies[0]["digit"] == replies[1]["digit"] == keras_digits[0]
    assert requests.get(f"{keras_url}/model", timeout=30).json()["runtime"] == runtimes.KERAS


def test_explain_works_on_an_openvino_worker(served, info):
    with np.load(served["dir"] / "data/prepared/test.npz") as f:
        image = f["x"][1]
    body = json.dumps({"image": image.tolist()})
    reply = requests.post(f"{served['url']}/explain", data=body, headers=JSON, timeout=120)
    assert reply.status_code == 200, reply.text
    assert reply.headers["x-model-version"] == info["version"]
    assert len(reply.json()["gradcam"]) == 28 and reply.json()["features"]


CHILD = """
import json, sys
from service import models
served = models.load(sys.argv[1], 256, 1, 1, "auto")
before = sorted(m for m in ("tensorflow", "keras") if m in sys.modules)
served.keras()
after = sorted(m for m in ("tensorflow", "keras") if m in sys.modules)
print(json.dumps({"runtime": served.runtime, "before": before, "after": after}))
"""


def test_an_openvino_worker_loads_no_tensorflow_until_explain_needs_it(served, info):
    out = subprocess.run(
        [str(BIN / "python"), "-c", CHILD, info["bento_tag"]],
        cwd=REPO,
        env=served["env"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    seen = json.loads(out.splitlines()[-1])
    assert seen["runtime"] == info["runtime"] != runtimes.KERAS
    assert seen["before"] == [] and seen["after"] == ["keras", "tensorflow"]
