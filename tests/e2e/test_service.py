"""The service as users meet it: a real `bentoml serve` of a model the real pipeline trained.

The session fixture `served` (tests/conftest.py) trains the fixture model (`dvc repro`), packages
the champion and serves it with small limits (so the over-limit cases stay small); `bento_served`
serves the Bento built from it, with the /predict fast lane off. Every test that takes `server`
runs against both: every endpoint, every kind of bad input and the metrics, over HTTP; the
expected answers come from the packaged model in process, on the runtime the server chose."""

from __future__ import annotations

import http.client
import io
import json
import re
import tarfile
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests

from service.inputs.pictures import from_image_bytes
from tests.helpers import (
    BIN,
    FIXTURE,
    SERVICE_LIMITS,
    SERVICE_PARAMS,
    free_port,
    run,
    second_server_env,
    serve_cmd,
    serving,
)
from tests.uploads import STYLES, data_url, render

pytestmark = pytest.mark.e2e
MODEL = "mnist-cnn"
MAX_BATCH, MAX_BODY = SERVICE_LIMITS["DIGIT_MAX_BATCH"], SERVICE_LIMITS["DIGIT_MAX_BODY_BYTES"]


@pytest.fixture(scope="module")
def ws(served):
    return served


@pytest.fixture(scope="module", params=["source", "bento"])
def server(request) -> str:
    """The source tree's server (fast lane on), then the built Bento's (BentoML's own path)."""
    return request.getfixturevalue("served" if request.param == "source" else "bento_served")["url"]


@pytest.fixture(scope="module")
def served_model(ws):
    """The packaged model on the runtime the server picked (GET /model), computed in process:
    the server must answer exactly this (tests/e2e/test_runtimes.py compares runtimes)."""
    from common import runtimes

    models = Path(ws["env"]["BENTOML_HOME"]) / "models" / MODEL
    folder = models / (models / "latest").read_text().strip()  # what is served
    runtime = requests.get(f"{ws['url']}/model", timeout=30).json()["runtime"]
    if runtime != runtimes.KERAS:
        xml = folder / runtimes.OPENVINO_DIR / runtimes.IR[runtime]
        return runtimes.openvino_forward(xml, runtime, chunk=256)
    import keras

    net = keras.saving.load_model(folder / "model.keras", compile=False)
    return lambda x: np.asarray(net(x[..., None], training=False))


@pytest.fixture(scope="module")
def digits():
    with np.load(FIXTURE) as f:
        return f["x_test"], f["y_test"]


def expected(model, x: np.ndarray) -> np.ndarray:
    return np.asarray(model(x))


def scrape(url: str) -> dict[str, float]:
    """Every sample on /metrics as {'name{labels}': value} (labels sorted as exposed)."""
    samples = {}
    for line in requests.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            samples[key] = float(value)
    return samples


def metric(samples: dict[str, float], name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for key, value in samples.items():
        if key.split("{")[0] != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', key))
        if all(found.get(k) == v for k, v in labels.items()):
            total += value
    return total


def npy(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, x)
    return buf.getvalue()


def post_npy(url: str, x: np.ndarray) -> requests.Response:
    files = {"array": ("batch.npy", npy(x), "application/octet-stream")}
    return requests.post(f"{url}/predict_npy", files=files, timeout=60)


def post_image(url: str, data: bytes, name: str = "digit.png") -> requests.Response:
    return requests.post(f"{url}/predict_image", files={"image": (name, data)}, timeout=60)


def test_predict_takes_0_255_ints_and_0_1_floats(server, served_model, digits):
    x = digits[0][:5]
    want = expected(served_model, x)
    for i in range(len(x)):
        ints = requests.post(f"{server}/predict", json={"image": x[i].tolist()}, timeout=30)
        floats = requests.post(
            f"{server}/predict",
            json={"image": (x[i] / 255.0).tolist(), "scale": "0-1"},
            timeout=30,
        )
        for r in (ints, floats):
            assert r.status_code == 200, r.text
            body = r.json()
            assert r.headers["X-Model-Version"] == body["model_version"] == "1"
            assert body["digit"] == int(want[i].argmax())
            assert body["probabilities"] == pytest.approx(want[i].tolist(), abs=1e-5)


def test_batch_json_and_npy_answer_every_item_like_the_model(server, served_model, digits):
    x = digits[0][:MAX_BATCH]
    want = expected(served_model, x).argmax(axis=1).tolist()
    as_json = requests.post(f"{server}/predict_batch", json={"images": x.tolist()}, timeout=60)
    as_npy = post_npy(server, x)
    for r in (as_json, as_npy):
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model_version"] == "1" and r.headers["X-Model-Version"] == "1"
        assert [p["digit"] for p in body["predictions"]] == want


def test_concurrent_single_requests_are_batched_and_answered_correctly(
    server, served_model, digits
):
    """48 connections, opened first, then all sending at once: the requests that reach a worker
    together must share model calls (fewer calls than requests), and each caller must still get
    its own image's answer back."""
    x = digits[0][:48]
    want = expected(served_model, x).argmax(axis=1).tolist()
    host, port = server.removeprefix("http://").split(":")
    conns = [http.client.HTTPConnection(host, int(port), timeout=60) for _ in x]
    for conn in conns:
        conn.connect()
    go = threading.Barrier(len(x))
    before = scrape(server)

    def one(i: int) -> int:
        body = json.dumps({"image": x[i].tolist()})
        go.wait()
        conns[i].request("POST", "/predict", body, {"Content-Type": "application/json"})
        reply = conns[i].getresponse()
        assert reply.status == 200, reply.read()
        return json.loads(reply.read())["digit"]

    with ThreadPoolExecutor(len(x)) as pool:
        got = list(pool.map(one, range(len(x))))
    for conn in conns:
        conn.close()
    assert got == want
    after = scrape(server)
    calls = metric(after, "digit_batch_size_count") - metric(before, "digit_batch_size_count")
    images = metric(after, "digit_batch_size_sum") - metric(before, "digit_batch_size_sum")
    assert images == len(x)
    assert calls < len(x), f"{len(x)} concurrent requests took {calls} model calls: no batching"


@pytest.mark.parametrize("style", STYLES)
def test_uploads_in_every_format_are_read_like_mnist(server, served_model, digits, style):
    x = digits[0][:6]
    for i in range(len(x)):
        upload = render(x[i], style, seed=i)
        r = post_image(server, upload, name=f"digit-{style}")
        assert r.status_code == 200, (style, r.text)
        body = r.json()
        seen = np.array(body["seen"], np.uint8)
        # what it saw is exactly what service.inputs makes of the upload (tests/code/test_inputs.py
        # holds that to the digit sent), and the answer is the model's for what it saw
        assert np.array_equal(seen, from_image_bytes(upload))
        assert r.headers["X-Model-Version"] == body["model_version"] == "1"
        assert body["digit"] == int(expected(served_model, seen[None])[0].argmax())


def test_canvas_data_url_goes_the_same_way_as_an_upload(server, digits):
    png = render(digits[0][0], "transparent_png")
    canvas = requests.post(f"{server}/predict_canvas", json={"data_url": data_url(png)}, timeout=30)
    upload = post_image(server, png)
    assert canvas.status_code == upload.status_code == 200, canvas.text
    # each answer is signed for feedback with its own time (tests/e2e/test_feedback.py)
    drawn, uploaded = canvas.json(), upload.json()
    ids = [drawn.pop("prediction_id"), uploaded.pop("prediction_id")]
    assert all(isinstance(i, str) and len(i.split(".")[2]) == 64 for i in ids), ids
    assert drawn == uploaded


@pytest.mark.parametrize("style", STYLES)
def test_uploaded_pictures_score_within_half_a_point_of_raw_digits(served_model, digits, style):
    """The bar for people's pictures (docs/api.md), for every upload style: the fixture's 200 test
    digits uploaded that way and made MNIST-like by service.inputs (exactly what the server does,
    test_uploads_in_every_format_are_read_like_mnist) score at most 0.5 points below the raw
    28×28s, with the served fixture model. In process: the HTTP side is the test above."""
    x, y = digits
    raw = np.mean(expected(served_model, x).argmax(axis=1) == y)
    seen = np.stack([from_image_bytes(render(x[i], style, seed=i)) for i in range(len(x))])
    acc = np.mean(expected(served_model, seen).argmax(axis=1) == y)
    assert acc >= raw - 0.005, (style, acc, raw)


def test_model_info_says_what_is_served(ws, server):
    from datetime import UTC, datetime

    import keras
    from mlflow.tracking import MlflowClient

    from pipelines.model import forward_macs

    info = requests.get(f"{server}/model", timeout=10)
    assert info.status_code == 200, info.text
    body = info.json()
    c = MlflowClient(tracking_uri=ws["env"]["MLFLOW_TRACKING_URI"])
    mv = c.get_model_version(MODEL, "1")
    assert body["name"] == MODEL and body["version"] == "1" and body["run_id"] == mv.run_id
    assert body["test_accuracy"] == pytest.approx(float(mv.tags["test_accuracy"]))
    assert body["train_wall_time_s"] > 0 and body["train_compute_macs"] > 0
    assert body["params"]["train.epochs"] == str(SERVICE_PARAMS["train"]["epochs"])
    assert body["bento_tag"].startswith(f"{MODEL}:v1-")
    # the lineage, as the registry version's tags hold it
    assert body["git_commit"] == mv.tags["git_commit"]
    assert body["git_dirty_files"] == json.loads(mv.tags["git_dirty_files"])
    assert (body["params_hash"], body["data_hash"]) == (
        mv.tags["params_hash"],
        mv.tags["data_hash"],
    )
    assert body["data_md5"] == json.loads(mv.tags["data_md5"]) and len(body["data_md5"]) == 5
    started = datetime.fromtimestamp(c.get_run(mv.run_id).info.start_time // 1000, UTC)
    assert datetime.fromisoformat(body["trained_at"]) == started
    # per-digit recall as evaluate measured it; the architecture as the served Keras model has it
    evaluation = json.loads((ws["dir"] / "metrics/eval.json").read_text())
    assert body["per_class_recall"] == {d: s["recall"] for d, s in evaluation["per_class"].items()}
    arch = body["architecture"]
    models = Path(ws["env"]["BENTOML_HOME"]) / "models" / MODEL
    folder = models / (models / "latest").read_text().strip()
    net = keras.saving.load_model(folder / "model.keras", compile=False)
    assert arch["parameters"] == net.count_params() > 0
    assert sum(layer["parameters"] for layer in arch["layers"]) == arch["parameters"]
    assert arch["multiply_adds"] == forward_macs(net)
    assert [layer["name"] for layer in arch["layers"]] == [x.name for x in net.layers[1:]]
    # what computes the answers, and evaluate's verdicts (tests/e2e/test_runtimes.py: which)
    assert body["runtime"] in evaluation["runtimes"] and body["runtimes"]
    # the Markdown model card evaluate rendered, served as is
    assert body["model_card"] == "/model/card"
    card = requests.get(f"{server}{body['model_card']}", timeout=10)
    assert card.status_code == 200 and card.headers["content-type"].startswith("text/markdown")
    assert card.text == (ws["dir"] / "docs/model-card.md").read_text()


def test_metrics_count_exactly_what_was_sent(server, served_model, digits):
    x = digits[0][:7]
    want = expected(served_model, x).argmax(axis=1)
    before = scrape(server)
    for i in range(len(x)):
        assert requests.post(f"{server}/predict", json={"image": x[i].tolist()}, timeout=30).ok
    assert post_npy(server, x).ok
    after = scrape(server)

    def delta(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    for digit in range(10):
        n = int(np.sum(want == digit))
        assert delta("digit_predictions_total", digit=str(digit), endpoint="predict") == n
        assert delta("digit_predictions_total", digit=str(digit), endpoint="predict_npy") == n
    assert delta("digit_prediction_confidence_count", model_version="1") == 2 * len(x)
    assert delta("digit_input_ink_mean_count") == 2 * len(x)
    assert delta("digit_input_ink_box_pixels_count") == 2 * len(x)
    assert delta("digit_inference_seconds_count") >= 1
    assert metric(after, "digit_model_info", model_version="1", model_name=MODEL) == 1
    assert delta("digit_rejections_total") == 0


def png_declaring(width: int, height: int) -> bytes:
    """A tiny valid PNG whose header claims width × height pixels (a decompression bomb)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (8, 8)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    data[ihdr + 17 : ihdr + 21] = zlib.crc32(bytes(data[ihdr : ihdr + 17])).to_bytes(4, "big")
    return bytes(data)


def digit_png() -> bytes:
    with np.load(FIXTURE) as f:
        return render(f["x_test"][0], "canvas_png")


def blank_png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (280, 280), "white").save(buf, "PNG")
    return buf.getvalue()


GRID = [[0] * 28] * 28
BAD = {
    "malformed-json": ("predict", {"data": "{not json"}, 400, "malformed_json", "JSON"),
    "empty-body": ("predict", {"data": ""}, 400, "empty_body", "empty"),
    "missing-field": ("predict", {"json": {"picture": GRID}}, 400, "missing_field", "image"),
    "not-numbers": ("predict", {"json": {"image": "seven"}}, 400, "invalid_field", "image"),
    "27-rows": ("predict", {"json": {"image": GRID[:27]}}, 400, "wrong_shape", "28"),
    "27-columns": ("predict", {"json": {"image": [[0] * 27] * 28}}, 400, "wrong_shape", "28"),
    "nan": (
        "predict",
        {"data": '{"image": [' + ",".join(["[" + ",".join(["NaN"] * 28) + "]"] * 28) + "]}"},
        400,
        "not_finite",
        "NaN",
    ),
    "above-255": ("predict", {"json": {"image": [[300] * 28] * 28}}, 400, "out_of_range", "255"),
    "negative": ("predict", {"json": {"image": [[-1] * 28] * 28}}, 400, "out_of_range", "255"),
    "above-1-in-0-1": (
        "predict",
        {"json": {"image": [[2] * 28] * 28, "scale": "0-1"}},
        400,
        "out_of_range",
        "0-1",
    ),
    "unknown-scale": (
        "predict",
        {"json": {"image": GRID, "scale": "0-65535"}},
        400,
        "bad_scale",
        "scale",
    ),
    "batch-over-limit": (
        "predict_batch",
        {"json": {"images": [GRID] * (MAX_BATCH + 1)}},
        413,
        "batch_too_large",
        str(MAX_BATCH),
    ),
    "body-over-limit": (
        "predict_image",
        {"files": {"image": ("big.png", b"\0" * (MAX_BODY + 1))}},
        413,
        "too_large",
        "at most",
    ),
    "not-an-image": (
        "predict_image",
        {"files": {"image": ("hello.png", b"hello, I am not a picture")}},
        400,
        "not_an_image",
        "PNG",
    ),
    "truncated-png": (
        "predict_image",
        {"files": {"image": ("cut.png", digit_png()[:400])}},
        400,
        "truncated_image",
        "ends early",
    ),
    "decompression-bomb": (
        "predict_image",
        {"files": {"image": ("bomb.png", png_declaring(30000, 30000))}},
        413,
        "too_many_pixels",
        "pixels",
    ),
    "blank-picture": (
        "predict_image",
        {"files": {"image": ("blank.png", blank_png())}},
        422,
        "blank_image",
        "blank",
    ),
    "not-a-data-url": (
        "predict_canvas",
        {"json": {"data_url": "https://example.com/digit.png"}},
        400,
        "bad_data_url",
        "data:",
    ),
    "npy-not-npy": (
        "predict_npy",
        {"files": {"array": ("x.npy", b"not numpy")}},
        400,
        "not_npy",
        "npy",
    ),
    "npy-float": (
        "predict_npy",
        {"files": {"array": ("x.npy", npy(np.zeros((2, 28, 28), np.float32)))}},
        400,
        "wrong_dtype",
        "uint8",
    ),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_input_gets_a_clear_4xx_counted_by_reason(server, case):
    endpoint, kwargs, status, reason, fragment = BAD[case]
    if "data" in kwargs:
        kwargs = {**kwargs, "headers": {"Content-Type": "application/json"}}
    before = scrape(server)
    r = requests.post(f"{server}/{endpoint}", timeout=30, **kwargs)
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert body["reason"] == reason, body
    assert fragment.lower() in body["error"].lower(), body["error"]
    assert "Send" in body["error"]  # ... and how to send it right
    after = scrape(server)
    counted = metric(after, "digit_rejections_total", reason=reason, endpoint=endpoint)
    assert counted - metric(before, "digit_rejections_total", reason=reason, endpoint=endpoint) == 1
    ok = requests.post(f"{server}/predict", json={"image": GRID}, timeout=30)
    assert ok.status_code == 200  # the same worker keeps serving


def test_a_worker_closes_a_keep_alive_connection_every_hundred_responses(server):
    """DIGIT_KEEPALIVE_REQUESTS (100): so connections opened in a burst spread over the workers."""
    host, port = server.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    closed_at = None
    for n in range(1, 102):  # one connection reaches one worker; every 100th of its replies
        conn.request("GET", "/model")
        reply = conn.getresponse()
        reply.read()
        assert reply.status == 200
        if reply.getheader("Connection") == "close":
            closed_at = n
            break
    assert closed_at is not None and closed_at <= 100, closed_at
    assert conn.sock is None  # http.client saw the close and dropped the socket
    conn.request("GET", "/model")  # ... and the next request simply reconnects
    assert conn.getresponse().status == 200
    conn.close()


def test_docs_list_every_endpoint_with_typed_inputs(server):
    spec = requests.get(f"{server}/docs.json", timeout=10).json()
    for path in ("/predict", "/predict_batch", "/predict_npy", "/predict_image", "/predict_canvas"):
        assert path in spec["paths"], path
    assert requests.get(f"{server}/livez", timeout=10).status_code == 200


def test_overload_answers_503_with_retry_after(ws):
    """With no room to queue (DIGIT_MAX_QUEUE=0) every prediction is refused the way overload is."""
    env = {**second_server_env(ws["env"], ws["root"] / "home-overload"), "DIGIT_MAX_QUEUE": "0"}
    port = free_port()
    cmd = serve_cmd("service.service:DigitClassifier", port)
    with serving(cmd, ws["dir"], env, port, ws["root"] / "overload.log") as url:
        r = requests.post(f"{url}/predict", json={"image": GRID}, timeout=30)
        assert r.status_code == 503, r.text
        assert r.headers["Retry-After"] == "1"
        assert r.json()["reason"] == "overloaded"
        assert metric(scrape(url), "digit_rejections_total", reason="overloaded") == 1


def test_the_fast_lane_answers_byte_for_byte_what_the_api_would(served, bento_served, digits):
    """/predict and /predict_batch through the fast lane (the source tree's server) and through
    BentoML's own request path (the Bento, DIGIT_FAST_LANE=0): the same bytes and headers."""
    for image in digits[0][:3]:
        for scale, values in (("0-255", image.tolist()), ("0-1", (image / 255).tolist())):
            body = {"image": values, "scale": scale}
            lane = requests.post(f"{served['url']}/predict", json=body, timeout=60)
            api = requests.post(f"{bento_served['url']}/predict", json=body, timeout=60)
            assert api.status_code == lane.status_code == 200, api.text
            assert lane.content == api.content
            for header in ("Content-Type", "X-Model-Version"):
                assert lane.headers[header] == api.headers[header], header
    body = {"images": digits[0][:5].tolist()}  # /predict_batch takes the lane too
    lane = requests.post(f"{served['url']}/predict_batch", json=body, timeout=60)
    api = requests.post(f"{bento_served['url']}/predict_batch", json=body, timeout=60)
    assert api.status_code == lane.status_code == 200, api.text
    assert lane.content == api.content
    assert lane.headers["X-Model-Version"] == api.headers["X-Model-Version"]


def test_the_bento_holds_the_service_and_the_champion_but_no_training_code(ws, bento_served):
    archive = ws["root"] / "digit_classifier.bento"
    cmd = [str(BIN / "bentoml"), "export", "digit_classifier:latest", str(archive)]
    run(cmd, ws["dir"], bento_served["env"])
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
    bento_model = requests.get(f"{bento_served['url']}/model", timeout=10).json()["bento_tag"]
    assert f"./models/{MODEL}/{bento_model.split(':')[1]}/model.keras" in names
    for source in ("service/service.py", "service/inputs/pictures.py", "common/card.py"):
        assert f"./src/{source}" in names, source
    assert not [n for n in names if n.startswith("./src/pipelines")]
    assert "./src/params.yaml" not in names
