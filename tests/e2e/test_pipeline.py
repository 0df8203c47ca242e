"""The whole path, for real: dvc repro → MLflow registry → BentoML package → HTTP.

Runs in a temp copy of the project with its own MLflow store and BentoML home, on the committed
fixture of real MNIST digits with tiny params. The tests run in order and build on each other,
the way a user's session does.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
from pathlib import Path

import numpy as np
import psutil
import pytest
import requests
import yaml
from mlflow.tracking import MlflowClient

from common import cpu
from pipelines import analysis
from pipelines import params as params_mod
from pipelines.tracking import LINEAGE_TAGS, params_hash
from pipelines.train import TRAIN_PARAMS
from tests.helpers import (
    ALWAYS_RUN,
    BIN,
    FIXTURE,
    commit,
    free_port,
    isolated_env,
    make_workspace,
    only_always_run,
    probability_bound,
    run,
    serving,
    set_params,
)

pytestmark = pytest.mark.e2e
STAGES = ["fetch", "prepare", "train", "evaluate", "register"]  # and feedback, before prepare
MODEL = "mnist-cnn"


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    env = isolated_env(root)
    workspace = make_workspace(root / "project", env)
    return {"root": root, "env": env, "dir": workspace}


def repro(ws, check: bool = True):
    return run([str(BIN / "dvc"), "repro"], ws["dir"], ws["env"], check=check)


def ran_stages(output: str) -> list[str]:
    return re.findall(r"Running stage '(\w+)'", output)


def client(ws) -> MlflowClient:
    return MlflowClient(tracking_uri=ws["env"]["MLFLOW_TRACKING_URI"])


def test_repro_builds_every_stage(ws):
    proc = repro(ws)
    out = proc.stdout + proc.stderr
    ran = ran_stages(out)
    assert sorted(ran) == sorted([*ALWAYS_RUN, *STAGES])
    assert [s for s in ran if s in STAGES] == STAGES
    assert ran.index("feedback") < ran.index("prepare")
    assert "===== stage: train =====" in out and "Epoch 4/4" in out  # banners, Keras progress
    d = ws["dir"]
    for path in [
        "data/raw/mnist.npz",
        "data/prepared/train.npz",
        "data/prepared/stats.json",
        "data/feedback/feedback.npz",
        "data/prepared/feedback_train.npz",
        "data/prepared/people.npz",
        "models/model.keras",
        "metrics/train.json",
        "metrics/eval.json",
        "plots/confusion.csv",
        "plots/reliability.csv",
        "plots/misclassified.png",
        "plots/train/history.csv",
        "models/export/model.tflite",
        "models/export/saved_model/saved_model.pb",
        "reports/register.json",
        "docs/model-card.md",
    ]:
        assert (d / path).is_file(), path
    evaluation = json.loads((d / "metrics/eval.json").read_text())
    with np.load(FIXTURE) as f:
        assert evaluation["n_test"] == len(f["y_test"])  # the fixture's test images, all of them
    assert evaluation["accuracy"] >= 0.5  # the gate of TINY_PARAMS (chance is 0.1)
    assert set(evaluation["per_class"]) == {str(i) for i in range(10)}
    train = json.loads((d / "metrics/train.json").read_text())
    assert train["epochs"] == 4 and train["wall_time_s"] > 0
    # Every timing names the CPU it ran on: its model and the vector extensions that set its speed.
    assert train["cpu"] == cpu.model() and train["cpu_vector_extensions"].split() == (
        cpu.vector_extensions()
    )
    lock = (d / "dvc.lock").read_text()
    assert all(f"  {s}:" in lock for s in [*ALWAYS_RUN, *STAGES])
    # No feedback database: an empty export, nothing trained on it, no people metric
    with np.load(d / "data/feedback/feedback.npz") as f:
        assert len(f["y"]) == 0 and f["x"].shape == (0, 28, 28)
    assert evaluation["people"] == {"images": 0}
    assert json.loads((d / "metrics/train.json").read_text())["feedback_images"] == 0
    shown = run([str(BIN / "dvc"), "metrics", "show", "--json"], d, ws["env"]).stdout
    assert "accuracy" in shown
    run([str(BIN / "dvc"), "plots", "show", "-o", "plots_html"], d, ws["env"])
    html = (d / "plots_html" / "index.html").read_text()
    assert "Confusion matrix" in html and "Training curves" in html
    assert "Reliability (official test set)" in html
    assert list((d / "plots_html" / "static").glob("*misclassified.png"))  # the image plot
    # Record the starting point for the later tests.
    commit(d, ws["env"], "first model")
    ws["first_eval"] = evaluation
    ws["first_train"] = train
    ws["first_card"] = (d / "docs/model-card.md").read_bytes()


def test_evaluate_reports_slices_calibration_and_exports(ws):
    """Every number in eval.json, recomputed here from the stage's own per-image outputs: the test
    split, and plots/confusion.csv's (actual, predicted) per image and plots/reliability.csv's
    count, mean confidence and accuracy per bin."""
    d = ws["dir"]
    evaluation = json.loads((d / "metrics/eval.json").read_text())
    with np.load(d / "data/prepared/test.npz") as f:
        x_test, y_test = f["x"], f["y"]
    pairs = np.loadtxt(d / "plots/confusion.csv", delimiter=",", skiprows=1, dtype=np.int64)
    assert pairs[:, 0].tolist() == y_test.tolist()  # one row per test image, in order
    y_pred = pairs[:, 1]
    assert evaluation["accuracy"] == pytest.approx(np.mean(y_pred == y_test), abs=1e-12)
    slices, thresholds = analysis.slice_accuracy(x_test, y_test, y_pred)
    assert evaluation["slices"] == slices  # (JSON keeps floats exactly)
    assert evaluation["slice_thresholds"] == thresholds
    for digit in range(10):  # recall: right answers among the images of that digit
        recall = evaluation["per_class"][str(digit)]["recall"]
        assert recall == pytest.approx(np.mean(y_pred[y_test == digit] == digit), abs=1e-6)

    rows = (d / "plots/reliability.csv").read_text().splitlines()
    assert rows[0] == "bin,lower,upper,count,confidence,accuracy"
    table = np.array([[float(v) for v in r.split(",")] for r in rows[1:]])
    count, confidence, accuracy = table[:, 3], table[:, 4], table[:, 5]
    assert count.sum() == evaluation["n_test"]
    assert accuracy @ count == pytest.approx(np.sum(y_pred == y_test), abs=1e-3)
    ece = float(count @ np.abs(accuracy - confidence)) / count.sum()
    assert evaluation["ece"] == pytest.approx(ece, abs=1e-5)  # the csv keeps 6 decimals
    # The exports answer like the Keras model: the SavedModel exactly, TFLite's float32 kernels
    # may flip a near-tie on a barely trained model.
    assert evaluation["export_agreement"]["saved_model"] == 1.0
    assert evaluation["export_agreement"]["tflite"] >= 0.99
    assert (d / "plots/misclassified.png").read_bytes()[:4] == b"\x89PNG"

    c = client(ws)
    run_id = json.loads((d / "models/mlflow_run.json").read_text())["run_id"]
    metrics = c.get_run(run_id).data.metrics
    assert metrics["test_ece"] == pytest.approx(evaluation["ece"])
    for name, s in evaluation["slices"].items():
        assert metrics[f"test_slice_{name}_accuracy"] == pytest.approx(s["accuracy"])
    plots = {a.path for a in c.list_artifacts(run_id, "plots")}
    assert {"plots/reliability_diagram.png", "plots/misclassified.png"} <= plots
    assert "metrics/slices.json" in {a.path for a in c.list_artifacts(run_id, "metrics")}
    exported = {a.path for a in c.list_artifacts(run_id, "export")}
    assert {"export/model.tflite", "export/saved_model"} <= exported
    saved = {a.path for a in c.list_artifacts(run_id, "export/saved_model")}
    assert "export/saved_model/saved_model.pb" in saved
    for digit, scores in evaluation["per_class"].items():  # what package gives the service
        assert metrics[f"test_recall_digit_{digit}"] == scores["recall"]


def test_evaluate_builds_and_judges_the_openvino_runtimes(ws):
    """fp32 and int8 IRs under models/export/openvino, each rescored here from the saved files
    on the test split: the figures and verdicts in eval.json are what they compute, the rule is
    the one in common/runtimes.py, and IRs, verdicts and metrics are on the MLflow run."""
    from common import runtimes

    d = ws["dir"]
    evaluation = json.loads((d / "metrics/eval.json").read_text())
    checks = evaluation["runtimes"]
    assert set(checks) == set(runtimes.RUNTIMES)
    assert checks["keras"]["accuracy"] == evaluation["accuracy"]
    folder = d / "models/export/openvino"
    assert json.loads((folder / runtimes.RUNTIMES_FILE).read_text()) == checks
    with np.load(d / "data/prepared/test.npz") as f:
        x_test, y_test = f["x"], f["y"]
    keras_digits = np.loadtxt(d / "plots/confusion.csv", delimiter=",", skiprows=1)[:, 1]
    measured = [r for r in (runtimes.FP32, runtimes.BF16, runtimes.INT8) if "accuracy" in checks[r]]
    assert runtimes.FP32 in measured  # fp32 is always built and scored
    for name in measured:
        forward = runtimes.openvino_forward(folder / runtimes.IR[name], name, chunk=64)
        digits = forward(x_test).argmax(axis=1)
        assert checks[name]["accuracy"] == pytest.approx(np.mean(digits == y_test), abs=1e-12)
        assert checks[name]["agreement"] == pytest.approx(np.mean(digits == keras_digits))
        rule = runtimes.verdict(
            checks[name]["accuracy"], checks[name]["agreement"], evaluation["accuracy"]
        )
        assert (checks[name]["eligible"], checks[name]["why"]) == rule
    assert checks[runtimes.FP32]["agreement"] >= 0.999  # the same arithmetic as Keras
    # bf16 is measured exactly where the CPU has it (AVX-512 BF16; none on Zen 3)
    has_bf16 = "BF16" in runtimes.cpu_capabilities()
    assert (runtimes.BF16 in measured) == has_bf16
    # int8: every conv and dense layer named, and where any layer is int8 its IR holds int8
    # weights; the layers kept in fp32 were chosen on the validation split, never by name
    layers = checks[runtimes.INT8]["layers"]
    assert len(layers) == 4 and set(layers.values()) <= {"int8", "fp32"}  # TINY: 2 conv + 2 dense
    if "int8" in layers.values():
        assert runtimes.INT8 in measured
        assert (folder / "int8/model.bin").stat().st_size < (
            folder / "fp32/model.bin"
        ).stat().st_size
    else:
        assert not checks[runtimes.INT8]["eligible"] and not (folder / "int8").exists()

    c = client(ws)
    run_id = json.loads((d / "models/mlflow_run.json").read_text())["run_id"]
    logged = {a.path for a in c.list_artifacts(run_id, "export/openvino")}
    assert {"export/openvino/fp32", "export/openvino/runtimes.json"} <= logged
    metrics = c.get_run(run_id).data.metrics
    for name in measured:
        key = name.replace("-", "_")
        assert metrics[f"runtime_{key}_agreement"] == pytest.approx(checks[name]["agreement"])
        assert metrics[f"runtime_{key}_eligible"] == int(checks[name]["eligible"])
    card = (d / "docs/model-card.md").read_text()
    assert "### Runtimes" in card
    assert f"| openvino-fp32 | {100 * checks['openvino-fp32']['accuracy']:.2f}% |" in card


def test_evaluate_renders_the_model_card_from_its_metrics(ws):
    """docs/model-card.md, generated: the numbers of eval.json and the run's lineage tags, the
    net's own summary, and the same text logged on the run."""
    import keras

    from pipelines.architecture import summary

    d = ws["dir"]
    card = (d / "docs/model-card.md").read_text()
    evaluation = json.loads((d / "metrics/eval.json").read_text())
    assert card.splitlines()[0].endswith(
        f"{100 * evaluation['accuracy']:.2f}% on the MNIST test set"
    )
    errors = evaluation["n_test"] - round(evaluation["accuracy"] * evaluation["n_test"])
    assert f"| {100 * evaluation['accuracy']:.2f}% | {errors} | {evaluation['loss']:.4f} |" in card
    for digit, c in evaluation["per_class"].items():
        assert f"| {digit} | {100 * c['precision']:.2f}% | {100 * c['recall']:.2f}% |" in card
    for name, s in evaluation["slices"].items():
        assert f"| {s['n']:,} | {100 * s['accuracy']:.2f}% |" in card, name
    net = keras.saving.load_model(d / "models/model.keras")
    arch = summary(net)
    assert f"{len(arch.layers)} layers, {net.count_params():,} parameters" in card
    assert all(f"| {layer.name} | {layer.kind} |" in card for layer in arch.layers)
    run_id = json.loads((d / "models/mlflow_run.json").read_text())["run_id"]
    tags = client(ws).get_run(run_id).data.tags
    assert f"`{tags['data_hash']}`" in card and f"`{tags['params_hash']}`" in card
    for path, md5 in json.loads(tags["data_md5"]).items():
        assert f"| `{path}` | `{md5}` |" in card
    assert "## Known limitations" in card and "## How it was validated" in card
    assert tags["git_commit"] not in card  # the commit changes with every commit: not in it
    logged = Path(client(ws).download_artifacts(run_id, "model_card.md", str(ws["root"])))
    assert logged.read_text() == card


def test_registry_holds_champion_with_lineage(ws):
    c = client(ws)
    champion = c.get_model_version_by_alias(MODEL, "champion")
    challenger = c.get_model_version_by_alias(MODEL, "challenger")
    assert str(champion.version) == str(challenger.version) == "1"
    head = run(["git", "rev-parse", "HEAD~0"], ws["dir"], ws["env"]).stdout.strip()
    # The pipeline ran on the first commit of the workspace, before "first model" was committed.
    first = run(["git", "rev-list", "--max-parents=0", "HEAD"], ws["dir"], ws["env"]).stdout.strip()
    assert champion.tags["git_commit"] in {first, head}
    assert re.fullmatch(r"[0-9a-f]{64}", champion.tags["data_hash"])
    evaluation = json.loads((ws["dir"] / "metrics/eval.json").read_text())
    assert float(champion.tags["test_accuracy"]) == pytest.approx(evaluation["accuracy"])

    # DVC's own hash of each prepared file, as dvc.lock recorded it; the params' hash; which
    # tracked files were dirty (none: the workspace was committed before the run)
    lock = yaml.safe_load((ws["dir"] / "dvc.lock").read_text())
    recorded = {o["path"]: o["md5"] for o in lock["stages"]["prepare"]["outs"]}
    md5 = json.loads(champion.tags["data_md5"])
    # ... the feedback files too, empty here: a model names the (lack of) feedback it saw
    splits = ("train", "val", "test", "feedback_train", "people")
    assert set(md5) == {f"data/prepared/{s}.npz" for s in splits}
    assert json.loads(champion.tags["feedback_rows"]) == {"people": 0, "train": 0}
    assert all(recorded[path] == value for path, value in md5.items())
    used = params_mod.load(ws["dir"] / "params.yaml").model_dump(include=TRAIN_PARAMS)
    assert champion.tags["params_hash"] == params_hash(used)
    assert json.loads(champion.tags["git_dirty_files"]) == []

    run_ = c.get_run(champion.run_id)
    assert run_.data.tags["dvc_stage"] == "train"
    for tag in LINEAGE_TAGS:
        assert run_.data.tags[tag] == champion.tags[tag]
    assert run_.data.params["train.epochs"] == "4"
    assert run_.data.params["register.model_name"] == MODEL
    assert len(c.get_metric_history(run_.info.run_id, "val_accuracy")) == 4  # per epoch
    assert run_.data.metrics["test_accuracy"] == pytest.approx(evaluation["accuracy"])
    artifacts = {a.path for a in c.list_artifacts(run_.info.run_id, "plots")}
    assert "plots/confusion_matrix.png" in artifacts

    import mlflow

    mlflow.set_tracking_uri(ws["env"]["MLFLOW_TRACKING_URI"])
    info = mlflow.models.get_model_info(f"models:/{MODEL}@champion")
    spec = info.signature.inputs.inputs[0]
    assert (str(spec.type), spec.shape) == ("uint8", (-1, 28, 28, 1))
    assert info.saved_input_example_info["type"] == "ndarray"


def test_second_repro_runs_nothing(ws):
    proc = repro(ws)
    assert ran_stages(proc.stdout + proc.stderr) == ALWAYS_RUN  # the export: the same bytes
    status = run([str(BIN / "dvc"), "status"], ws["dir"], ws["env"]).stdout
    assert only_always_run(status), status


def test_worse_model_becomes_challenger_not_champion(ws):
    # A learning rate this small leaves the net near chance: the gate must keep v1 in service.
    set_params(ws["dir"], {"train": {"learning_rate": 1.0e-7}, "register": {"min_accuracy": 0.0}})
    proc = repro(ws)
    assert ran_stages(proc.stdout + proc.stderr) == [*ALWAYS_RUN, "train", "evaluate", "register"]
    c = client(ws)
    assert str(c.get_model_version_by_alias(MODEL, "challenger").version) == "2"
    assert str(c.get_model_version_by_alias(MODEL, "champion").version) == "1"
    receipt = json.loads((ws["dir"] / "reports/register.json").read_text())
    assert receipt["version"] == 2 and receipt["champion_version"] == 1
    assert "worse than champion v1" in receipt["reason"]


def test_bad_data_fails_prepare_and_keeps_outputs_and_registry(ws):
    d = ws["dir"]
    with np.load(FIXTURE) as f:
        arrays = {k: f[k].copy() for k in f.files}
    arrays["y_train"][:5] = 11
    np.savez_compressed(d / "bad.npz", **arrays)
    before = (d / "data/prepared/train.npz").read_bytes()
    versions = len(client(ws).search_model_versions(f"name='{MODEL}'"))
    set_params(d, {"data": {"path": "bad.npz"}})
    proc = repro(ws, check=False)
    assert proc.returncode != 0
    assert "labels must lie in 0-9, found [11]" in proc.stdout + proc.stderr
    assert (d / "data/prepared/train.npz").read_bytes() == before
    assert len(client(ws).search_model_versions(f"name='{MODEL}'")) == versions
    set_params(d, {"data": {"path": "tests/fixtures/mnist-sample.npz"}})


def test_package_is_idempotent(ws):
    env, d = ws["env"], ws["dir"]
    first = run([str(BIN / "python"), "-m", "pipelines.package"], d, env)
    tags = {v: f"{MODEL}:v{v}-{client(ws).get_model_version(MODEL, v).run_id[:8]}" for v in "12"}
    assert "imported mnist-cnn v1" in first.stderr
    assert f"challenger is {tags['2']}" in first.stderr  # the worse v2, for shadow and canary
    again = run([str(BIN / "python"), "-m", "pipelines.package"], d, env)
    assert "already the latest" in again.stderr and "challenger is" not in again.stderr
    listed = json.loads(run([str(BIN / "bentoml"), "models", "list", "-o", "json"], d, env).stdout)
    assert sorted(m["tag"] for m in listed) == [tags["1"], tags["2"]]
    pointer = Path(env["BENTOML_HOME"]) / "models" / MODEL / "challenger"
    assert pointer.read_text() == tags["2"].split(":")[1]


@pytest.fixture(scope="module")
def server(ws):
    port = free_port()
    cmd = [
        str(BIN / "bentoml"),
        "serve",
        "service.service:DigitClassifier",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    with serving(cmd, ws["dir"], ws["env"], port, ws["root"] / "server.log") as url:
        yield url


def test_predict_answers_with_the_champion(ws, server):
    with np.load(FIXTURE) as f:
        x, y = f["x_test"][:40], f["y_test"][:40]
    import keras

    # Expected answers from the packaged model itself, in this process.
    model_path = Path(ws["env"]["BENTOML_HOME"]) / "models" / MODEL
    keras_file = model_path / (model_path / "latest").read_text().strip() / "model.keras"
    expected = keras.saving.load_model(keras_file, compile=False).predict(x[..., None], verbose=0)
    bound = probability_bound(server)  # Keras' own numbers, or int8's within the rule
    correct = 0
    for i in range(len(x)):
        r = requests.post(f"{server}/predict", json={"image": x[i].tolist()}, timeout=30)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model_version"] == "1" and r.headers["X-Model-Version"] == "1"
        assert len(body["probabilities"]) == 10
        assert sum(body["probabilities"]) == pytest.approx(1.0, abs=1e-4)
        assert body["digit"] == int(expected[i].argmax())
        assert body["confidence"] == pytest.approx(float(expected[i].max()), abs=bound)
        correct += body["digit"] == int(y[i])
    assert correct / len(x) >= 0.5


def test_docs_metrics_and_health_are_served(server):
    assert requests.get(f"{server}/livez", timeout=10).status_code == 200
    assert requests.get(f"{server}/", timeout=10).status_code == 200  # Swagger UI
    spec = requests.get(f"{server}/docs.json", timeout=10).json()
    assert "/predict" in spec["paths"]
    requests.post(f"{server}/predict", json={"image": [[0] * 28] * 28}, timeout=30)
    metrics = requests.get(f"{server}/metrics", timeout=10).text
    assert re.search(
        r'bentoml_service_request_total\{endpoint="/predict",'
        r'http_response_code="200"[^}]*\} [1-9]',
        metrics,
    )


def test_same_params_give_identical_metrics(ws, tmp_path):
    """A second, independent workspace with the same params trains the very same model."""
    env = isolated_env(tmp_path)
    again = make_workspace(tmp_path / "project", env)
    run([str(BIN / "dvc"), "repro", "evaluate"], again, env)
    evaluation = json.loads((again / "metrics/eval.json").read_text())
    train = json.loads((again / "metrics/train.json").read_text())
    for key in ("accuracy", "loss", "per_class", "ece", "slices"):
        assert evaluation[key] == ws["first_eval"][key], key
    for key in ("train_loss", "val_accuracy", "val_loss_last_epoch", "train_compute_macs"):
        assert train[key] == ws["first_train"][key], key
    # the model card too, byte for byte: nothing in it changes from run to run
    assert (again / "docs/model-card.md").read_bytes() == ws["first_card"]


def test_interrupted_training_resumes_bit_identical(ws, tmp_path):
    """The training process killed (SIGKILL: no handler runs, the hardest crash) during epoch 3
    of 4, then `dvc repro`: training continues after the last completed epoch (never from epoch
    1), in the same MLflow run, and every per-epoch number and the final metrics equal the
    uninterrupted first run's exactly (docs/pipeline.md: bit-identical). Ctrl-C takes the same
    path, but Keras may swallow a SIGINT that lands inside TensorFlow, so the test kills."""
    env = isolated_env(tmp_path)
    again = make_workspace(tmp_path / "project", env)
    proc = subprocess.Popen(
        [str(BIN / "dvc"), "repro", "train"],
        cwd=again,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("Epoch 3/4"):  # epoch 2's end-of-epoch callbacks have all run
            for child in psutil.Process(proc.pid).children(recursive=True):  # the stage's python
                child.kill()
            break
    seen.append(proc.communicate(timeout=120)[0])
    assert proc.returncode != 0, "".join(seen)[-2000:]
    assert not (again / "models/model.keras").exists()
    (backup,) = (again / ".resume").glob("train-*")
    meta = json.loads((backup / "meta.json").read_text())
    assert meta["epoch"] in (2, 3)

    proc = run([str(BIN / "dvc"), "repro", "train"], again, env)
    out = proc.stdout + proc.stderr
    assert f"resuming after epoch {meta['epoch']}" in out
    assert "Epoch 1/4" not in out and "Epoch 2/4" not in out and "Epoch 4/4" in out
    assert not (again / ".resume").exists()  # removed once the stage succeeded

    train = json.loads((again / "metrics/train.json").read_text())
    for key in ("epochs", "train_accuracy", "train_loss", "val_accuracy", "val_loss_last_epoch"):
        assert train[key] == ws["first_train"][key], key
    # Per epoch, the history equals what the uninterrupted run logged to MLflow, to the bit.
    first_run = client(ws).get_model_version(MODEL, "1").run_id
    rows = (again / "plots/train/history.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert [int(r.split(",")[0]) for r in rows[1:]] == [0, 1, 2, 3]
    for metric in ("loss", "accuracy", "val_loss", "val_accuracy"):
        column = [float(r.split(",")[header.index(metric)]) for r in rows[1:]]
        logged = client(ws).get_metric_history(first_run, metric)
        assert column == [m.value for m in sorted(logged, key=lambda m: m.step)], metric
    resumed_run = json.loads((again / "models/mlflow_run.json").read_text())["run_id"]
    assert resumed_run == meta["run_id"]  # the same MLflow run, continued
    mlflow_store = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    steps = [m.step for m in mlflow_store.get_metric_history(resumed_run, "val_loss")]
    assert sorted(steps) == [0, 1, 2, 3]


def _latest_tag(ws) -> str:
    """What `mnist-cnn:latest`, the tag the service loads, resolves to in the BentoML store."""
    cmd = [str(BIN / "bentoml"), "models", "get", f"{MODEL}:latest", "-o", "json"]
    shown = json.loads(run(cmd, ws["dir"], ws["env"]).stdout)
    return f"{shown['name']}:{shown['version']}"


@contextlib.contextmanager
def _artifacts_unreachable(ws, version: str):
    """The registry version's files moved away (a store that lost them, a network down)."""
    c = client(ws)
    source = c.get_model_version(MODEL, version).source  # models:/m-<logged model id>
    logged = c.get_logged_model(source.removeprefix("models:/"))
    where = Path(logged.artifact_location.removeprefix("file://"))
    aside = where.with_name(f"{where.name}.away")
    where.rename(aside)
    try:
        yield
    finally:
        aside.rename(where)


def test_package_keeps_latest_on_a_complete_champion(ws):
    """`:latest` moves only to a fully imported champion: a failing import leaves the store as it
    was, and a rollback moves `:latest` back to the copy in the store without re-importing it
    (the old code deleted that copy first, so a failed download left `:latest` on v2)."""
    c, env, d = client(ws), ws["env"], ws["dir"]

    def tag(v: str) -> str:
        return f"{MODEL}:v{v}-{c.get_model_version(MODEL, v).run_id[:8]}"

    package = [str(BIN / "python"), "-m", "pipelines.package"]
    assert _latest_tag(ws) == tag("1")
    # v2, the challenger, came into the store beside v1: out with it, so a promotion must import
    run([str(BIN / "bentoml"), "models", "delete", tag("2"), "-y"], d, env)
    c.set_registered_model_alias(MODEL, "champion", "2")  # a teammate promotes v2
    with _artifacts_unreachable(ws, "2"):
        failed = run(package, d, env, check=False)
    assert failed.returncode != 0
    assert _latest_tag(ws) == tag("1")  # untouched: no half-imported v2 anywhere
    listed = run([str(BIN / "bentoml"), "models", "list", "-o", "json"], d, env).stdout
    assert [m["tag"] for m in json.loads(listed)] == [tag("1")]
    assert not list(Path(env["BENTOML_HOME"]).glob(".package-*"))  # no staging left behind

    assert "imported mnist-cnn v2" in run(package, d, env).stderr
    assert _latest_tag(ws) == tag("2")
    c.set_registered_model_alias(MODEL, "champion", "1")  # the rollback
    with _artifacts_unreachable(ws, "1"):  # nothing to download: v1 is still in the store
        back = run(package, d, env)
    assert f"points at {tag('1')} again" in back.stderr
    assert _latest_tag(ws) == tag("1")


def test_bento_builds_offline_with_the_locked_pins(ws):
    """`bentoml build` with every network path closed: the Bento's requirements are exactly
    requirements.bento.txt's pins (the lock's), and usage tracking is off in its environment."""
    offline = {"PIP_NO_INDEX": "1", "UV_OFFLINE": "1", "HTTP_PROXY": "http://127.0.0.1:9"}
    env = {**ws["env"], **offline, "HTTPS_PROXY": "http://127.0.0.1:9"}
    run([str(BIN / "bentoml"), "build"], ws["dir"], env, timeout=300)
    (bento,) = [
        p
        for p in (Path(env["BENTOML_HOME"]) / "bentos" / "digit_classifier").iterdir()
        if p.is_dir()
    ]
    pins = [
        line
        for line in (ws["dir"] / "requirements.bento.txt").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    shipped = (bento / "env" / "python" / "requirements.txt").read_text().splitlines()
    assert set(pins) <= set(shipped), set(pins) - set(shipped)
    assert {"uvloop==0.23.0", "httptools==0.9.0"} <= set(shipped)
    manifest = yaml.safe_load((bento / "bento.yaml").read_text())
    envs = {e["name"]: e["value"] for e in manifest["envs"]}
    assert envs["BENTOML_DO_NOT_TRACK"] == "true"
