"""`mlflow models serve` of the registry's champion answers a digit as our service does.

The registered model carries its signature (uint8 (n, 28, 28, 1), the scaling inside the model),
so MLflow's own server can serve it with no code of ours; this keeps that true, and keeps the
benchmark's comparison (`make bench`, which starts it the same way) one of equal answers. The
server is started and stopped by the benchmark's own runner (bench/servers.py).
"""

from __future__ import annotations

import numpy as np
import pytest
import requests

from bench import payloads, servers
from bench.run import check_mlflow
from tests.helpers import BIN, free_port, probability_bound

pytestmark = pytest.mark.e2e


def test_mlflow_models_serve_gives_our_answer(served, tmp_path):
    image, _ = payloads.single()  # the 7 of examples/digit-7.json
    ours = requests.post(f"{served['url']}/predict", json={"image": image.tolist()}, timeout=30)
    ours = ours.json()
    name = requests.get(f"{served['url']}/model", timeout=30).json()["name"]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    argv = [str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{name}@champion"]
    argv += ["--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)]
    log = tmp_path / "mlflow.log"
    with servers.running(
        "mlflow models serve", argv, f"{base}/ping", cwd=tmp_path, log=log, env=served["env"]
    ):
        reply = requests.post(
            f"{base}/invocations",
            data=payloads.mlflow_json(image),  # {"inputs": uint8 (1, 28, 28, 1)}
            headers={"Content-Type": "application/json"},
            timeout=60,
        )
    assert reply.status_code == 200, reply.text[:500]
    assert check_mlflow(ours["digit"])(reply.content) is None  # the bench's check: same digit
    theirs = reply.json()["predictions"][0]
    # Keras' eager call there, our runtime here: float rounding apart (common/rollout.py) for
    # Keras and OpenVINO fp32, int8's or bf16's precision otherwise (common/runtimes.py)
    bound = probability_bound(served["url"])
    np.testing.assert_allclose(theirs, ours["probabilities"], rtol=0, atol=bound)
