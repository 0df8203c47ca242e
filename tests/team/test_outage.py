"""A training run survives its tracking server going away: the fixture pipeline's train stage
against a real `mlflow server`, killed (SIGKILL, a crash) after the first epoch and restarted a
while later on the same store. Training never stops, no metric is lost, the run ends FINISHED."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from contextlib import ExitStack

import pytest
from mlflow.tracking import MlflowClient

from tests.helpers import BIN, clean_env, free_port, make_workspace, run, running, set_params

pytestmark = pytest.mark.e2e
EPOCHS, OUTAGE_S = 40, 10  # about 6 s of training after the first epoch


def test_training_survives_a_tracking_server_outage(tmp_path):
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = [
        str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
        "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
        "--artifacts-destination", str(tmp_path / "artifacts"), "--workers", "1",
    ]  # fmt: skip
    env = clean_env(MLFLOW_TRACKING_URI=uri)
    ws = make_workspace(tmp_path / "ws", env)
    set_params(ws, {"train": {"epochs": EPOCHS}})
    run([str(BIN / "dvc"), "repro", "prepare"], ws, env)
    client = MlflowClient(uri)
    log = tmp_path / "train.log"
    with ExitStack() as stack:
        first = stack.enter_context(
            running("mlflow", server, f"{uri}/health", cwd=tmp_path, log=tmp_path / "s1.log")
        )
        with log.open("w") as out:
            train = subprocess.Popen(
                [str(BIN / "python"), "-m", "pipelines.train"],
                cwd=ws, env=env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        stack.callback(lambda: train.poll() is None and train.kill())
        run_id, deadline = None, time.monotonic() + 300
        while run_id is None or not client.get_metric_history(run_id, "loss"):
            assert train.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "no epoch ended within 5 minutes"
            exp = client.get_experiment_by_name("digit-mlops")
            runs = client.search_runs([exp.experiment_id]) if exp else []
            run_id = runs[0].info.run_id if runs else None
            time.sleep(0.2)
        os.killpg(first.pid, signal.SIGKILL)  # the server crashes mid-training
        down = time.time() * 1000
        time.sleep(OUTAGE_S)
        assert train.poll() is None, "training stopped with the server:\n" + log.read_text()
        back = time.time() * 1000  # the store answers from here on (8 s to start, counted in)
        stack.enter_context(
            running("mlflow", server, f"{uri}/health", cwd=tmp_path, log=tmp_path / "s2.log")
        )
        assert train.wait(timeout=600) == 0, log.read_text()[-3000:]
        done = client.get_run(run_id)
        assert done.info.status == "FINISHED" and done.info.end_time
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            steps = sorted(m.step for m in client.get_metric_history(run_id, key))
            assert steps == list(range(EPOCHS)), (key, steps)  # every epoch, each once
        # Training went on while the server was away: epochs ended inside the outage, and got in.
        during = [m for m in client.get_metric_history(run_id, "loss") if down < m.timestamp < back]
        assert len(during) >= 2, (down, back, log.read_text()[-2000:])
        assert "final_val_accuracy" in done.data.metrics
