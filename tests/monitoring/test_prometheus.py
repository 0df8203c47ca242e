"""A real Prometheus with the project's config scraping the real service (the `served` fixture).

It renders monitoring/prometheus.yml with the fixture server's port and a 1 s interval, sends a
known mix of predictions and bad inputs, waits for two scrapes, and asks Prometheus' HTTP API:
the counts by digit and by rejection reason moved by exactly what was sent, a latency quantile is
there and positive, the model-version series carries the served version and its role, the drift
reference packaged with the model is exported and compared under that version, one right and one
wrong answer reported as people report them (POST /feedback) are counted and turned into live
accuracy, labelled rows and store fill under the served version, every rule evaluates without
error, and every PromQL query of the Grafana dashboard is accepted.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml

from common import drift
from common.feedback_store import FeedbackStore
from monitoring.serve import DASHBOARD, JOB, command, render
from tests import uploads
from tests.helpers import FIXTURE, SERVICE_LIMITS, clean_env, free_port, serving

pytestmark = pytest.mark.e2e
SCRAPE_S = 1.0
MAX_BATCH = SERVICE_LIMITS["DIGIT_MAX_BATCH"]
ALERT_DISTANCE = 0.25  # DigitInputDrift's threshold in monitoring/alerts.yml
N_DIGITS = 30
BAD = {  # reason → (request kwargs for /predict, how many)
    "wrong_shape": ({"json": {"image": [[0] * 28] * 27}}, 3),
    "out_of_range": ({"json": {"image": [[300] * 28] * 28}}, 2),
    "malformed_json": ({"data": "{not json", "headers": {"Content-Type": "application/json"}}, 1),
}
BY_DIGIT = 'sum by (digit) (digit_predictions_total{endpoint="predict"})'
# Series that exist only once a challenger is packaged (shadow) or a watcher found a newly
# packaged model (reloads): the `served` fixture has neither, so their panels may stay empty.
ROLLOUT_ONLY = re.compile(r"digit_shadow|digit_model_reloads")
# Every image this module sends to the model after Prometheus started, so the tests can compute
# what the live histograms hold (the request before the start is outside every window).
SENT: list[np.ndarray] = []


@contextlib.contextmanager
def prometheus(root: Path, service_url: str) -> Iterator[str]:
    """Start Prometheus on a free port with the rendered config; yield its URL; stop it."""
    config = render(root, service_url.removeprefix("http://"), interval=f"{SCRAPE_S:g}s")
    port = free_port()
    cmd = command(config, f"127.0.0.1:{port}", root / "tsdb")
    with serving(cmd, root, clean_env(), port, root / "prometheus.log", 60, "/-/ready") as url:
        yield url


def query(prom: str, expr: str) -> list[dict]:
    reply = requests.get(f"{prom}/api/v1/query", params={"query": expr}, timeout=10).json()
    assert reply["status"] == "success", f"{expr}: {reply}"
    return reply["data"]["result"]


def npy(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, x)
    return buf.getvalue()


def by(prom: str, expr: str, label: str) -> dict[str, float]:
    return {r["metric"].get(label, ""): float(r["value"][1]) for r in query(prom, expr)}


def wait_for_scrapes(prom: str, after: float, n: int = 2) -> None:
    """Until Prometheus holds a scrape that started `n` intervals after the wall time `after`."""
    deadline = time.monotonic() + 30
    while True:
        ts = by(prom, f'timestamp(up{{job="{JOB}"}} == 1)', "job")
        if ts and min(ts.values()) >= after + (n - 1) * SCRAPE_S:
            return
        assert time.monotonic() < deadline, f"no scrape after {after} (latest {ts})"
        time.sleep(SCRAPE_S / 4)


def settled(prom: str, expr: str, want: float, tolerance: float, timeout: float = 20) -> float:
    """The value of the one-series `expr` once it is within `tolerance` of `want` (recording rules
    follow new samples one evaluation later), or its last value when the time is up."""
    deadline = time.monotonic() + timeout
    while True:
        values = [float(r["value"][1]) for r in query(prom, expr)]
        if len(values) == 1 and abs(values[0] - want) <= tolerance:
            return values[0]
        if time.monotonic() > deadline:
            return values[0] if len(values) == 1 else math.nan
        time.sleep(SCRAPE_S / 2)


def finite(prom: str, expr: str, timeout: float = 20) -> float:
    """The value of the one-series `expr` once it is a number: a recording rule evaluated before
    traffic reached Prometheus holds NaN (0/0) until its next evaluation."""
    deadline = time.monotonic() + timeout
    while True:
        values = [float(r["value"][1]) for r in query(prom, expr)]
        if len(values) == 1 and math.isfinite(values[0]):
            return values[0]
        assert time.monotonic() < deadline, f"{expr}: {values}"
        time.sleep(SCRAPE_S / 2)


@pytest.fixture(scope="module")
def prom(served, tmp_path_factory) -> Iterator[str]:
    # One request first, so the /predict series exist before the scrapes the tests compare:
    # a rate needs two samples of a series, and a series appearing counts as no increase.
    assert requests.post(f"{served['url']}/predict", json={"image": [[0] * 28] * 28}).ok
    with prometheus(tmp_path_factory.mktemp("prometheus"), served["url"]) as url:
        wait_for_scrapes(url, after=time.time())
        yield url


def test_prometheus_counts_exactly_what_was_sent(served, prom):
    server = served["url"]
    wait_for_scrapes(prom, after=time.time())
    digits_before = by(prom, BY_DIGIT, "digit")
    reasons_before = by(prom, "sum by (reason) (digit_rejections_total)", "reason")

    with np.load(FIXTURE) as f:
        x = f["x_test"][:N_DIGITS]
    answered = Counter()
    for image in x:
        reply = requests.post(f"{server}/predict", json={"image": image.tolist()}, timeout=30)
        assert reply.ok, reply.text
        answered[str(reply.json()["digit"])] += 1
    SENT.append(x)
    for reason, (kwargs, times) in BAD.items():
        for _ in range(times):
            reply = requests.post(f"{server}/predict", timeout=30, **kwargs)
            assert reply.status_code == 400 and reply.json()["reason"] == reason, reply.text
    wait_for_scrapes(prom, after=time.time())

    digits_after = by(prom, BY_DIGIT, "digit")
    moved = {d: digits_after[d] - digits_before.get(d, 0.0) for d in digits_after}
    assert {d: n for d, n in moved.items() if n} == dict(answered)
    reasons_after = by(prom, "sum by (reason) (digit_rejections_total)", "reason")
    moved = {r: reasons_after[r] - reasons_before.get(r, 0.0) for r in reasons_after}
    assert {r: n for r, n in moved.items() if n} == {r: n for r, (_, n) in BAD.items()}


def test_latency_quantile_is_recorded_and_positive(prom):
    rule = 'endpoint:bentoml_service_request_duration_seconds:p95_5m{endpoint="/predict"}'
    assert finite(prom, rule) > 0
    raw = query(
        prom,
        "histogram_quantile(0.5, sum by (le) "
        '(rate(bentoml_service_request_duration_seconds_bucket{endpoint="/predict"}[1m])))',
    )
    assert raw and float(raw[0]["value"][1]) > 0


def test_model_version_series_carries_the_served_version(served, prom):
    info = requests.get(f"{served['url']}/model", timeout=10).json()
    (series,) = query(prom, "digit_model_info == 1")  # one model served, as the champion
    assert series["metric"]["role"] == "champion"
    assert series["metric"]["model_version"] == info["version"] == "1"
    assert series["metric"]["bento_tag"] == info["bento_tag"]
    assert series["metric"]["run_id"] == info["run_id"]


def ks(images: np.ndarray, histogram: drift.Histogram, statistic: int) -> float:
    """What the drift rule computes: the largest gap between the cumulative shares of `images`'
    ink statistic (0: mean, 1: box) and the reference's, over the reference's bucket edges."""
    values = drift.ink_stats(images)[statistic]
    live = np.cumsum(drift.bucket_counts(values, histogram.buckets)) / len(values)
    reference = [share for _, share in drift.cumulative_shares(histogram)]
    return float(np.max(np.abs(live - reference)))


def test_the_packaged_drift_reference_is_exported_and_compared(served, prom):
    stats = json.loads((served["dir"] / "data/prepared/stats.json").read_text())
    reference = drift.DriftReference.model_validate(stats[drift.REFERENCE_KEY])
    version = requests.get(f"{served['url']}/model", timeout=10).json()["version"]
    # every drift series is labelled with the served model's version (monitoring/rules.yml joins
    # live and reference on it)
    assert by(prom, "digit_reference_images", "model_version") == {version: reference.n_images}
    assert set(by(prom, "digit_reference_ink_mean_share", "model_version")) == {version}
    shares = by(prom, f'digit_reference_ink_mean_share{{model_version="{version}"}}', "le")
    expected = dict(drift.cumulative_shares(reference.ink_mean))
    assert {float(le): v for le, v in shares.items()} == pytest.approx(expected)

    # Real test digits (the fixture's, not trained on) through the batch endpoint, then the drift
    # distances Prometheus records must be what the images sent since it started give.
    with np.load(FIXTURE) as f:
        x = f["x_test"][N_DIGITS : N_DIGITS + 120]
    for i in range(0, len(x), MAX_BATCH):
        files = {"array": ("x.npy", npy(x[i : i + MAX_BATCH]), "application/octet-stream")}
        assert requests.post(f"{served['url']}/predict_npy", files=files, timeout=60).ok
    SENT.append(x)
    sent = np.concatenate(SENT)
    wait_for_scrapes(prom, after=time.time())
    assert set(by(prom, "digit_input_ink_mean_count", "model_version")) == {version}
    live = by(prom, f'le:digit_input_ink_mean:share_rate30m{{model_version="{version}"}}', "le")
    assert set(live) == set(shares)  # the same bucket edges, spelled the same way
    for rule, histogram, statistic in (
        ("digit:input_ink_mean_drift:ks30m", reference.ink_mean, 0),
        ("digit:input_ink_box_pixels_drift:ks30m", reference.ink_box_pixels, 1),
    ):
        want = ks(sent, histogram, statistic)
        assert set(by(prom, rule, "model_version")) == {version}  # one series, this version's
        # A share is a ratio of two rate()s over the same scrapes, so their extrapolation cancels,
        # except that rate() extrapolates less towards the window's start for a series whose
        # first sample is near zero (here every bucket already holds the blank images earlier
        # tests sent): 0.025 is a tenth of the alert threshold, room for that and no more.
        assert settled(prom, rule, want, tolerance=0.025) == pytest.approx(want, abs=0.025)
        assert want < ALERT_DISTANCE, f"{rule}: real test digits would alert ({want:.3f})"


def reported(url: str, image: np.ndarray, wrong: bool) -> dict:
    """Draw `image` on the page's canvas, then say the answer was right, or that it was the next
    digit (POST /feedback with the reply's fields, as the page sends it); the reply and label."""
    png = uploads.render(image, "canvas_png")
    reply = requests.post(
        f"{url}/predict_canvas", json={"data_url": uploads.data_url(png)}, timeout=60
    )
    assert reply.ok, reply.text
    answer = reply.json()
    label = (answer["digit"] + 1) % 10 if wrong else answer["digit"]
    body = {
        "seen": answer["seen"],
        "answered": answer["digit"],
        "label": label,
        "model_version": answer["model_version"],
        "prediction_id": answer["prediction_id"],
    }
    stored = requests.post(f"{url}/feedback", json=body, timeout=30)
    if stored.status_code == 429:  # earlier tests of this session used this client's budget
        time.sleep(float(stored.headers["Retry-After"]))
        stored = requests.post(f"{url}/feedback", json=body, timeout=30)
    assert stored.status_code == 201, stored.text
    assert stored.json()["correct"] is not wrong
    return {**answer, "label": label}


def test_feedback_is_counted_and_recorded_per_version(served, prom):
    url = served["url"]
    version = requests.get(f"{url}/model", timeout=10).json()["version"]
    raw = f'sum by (correct) (digit_feedback_total{{model_version="{version}"}})'
    wait_for_scrapes(prom, after=time.time())
    before = by(prom, raw, "correct")
    with np.load(FIXTURE) as f:
        x = f["x_test"][N_DIGITS + 120 : N_DIGITS + 122]
    right, wrong = reported(url, x[0], wrong=False), reported(url, x[1], wrong=True)
    SENT.append(np.array([right["seen"], wrong["seen"]], np.uint8))  # the model saw them too
    wait_for_scrapes(prom, after=time.time())
    after = by(prom, raw, "correct")
    moved = {c: n - before.get(c, 0.0) for c, n in after.items()}
    assert {c: n for c, n in moved.items() if n} == {"yes": 1, "no": 1}

    # Prometheus started minutes ago: nothing is there 6 h back, so every feedback series counts
    # whole in the 6-h rules (its first row included, which increase() would miss), and they
    # equal the counters: every labelled row this service stored, right or wrong.
    labelled = after["yes"] + after["no"]
    one = f'{{model_version="{version}"}}'
    rule = f"model_version:digit_feedback_labelled:increase6h{one}"
    assert settled(prom, rule, labelled, tolerance=0) == labelled
    share = after["yes"] / labelled
    rule = f"model_version:digit_feedback_accuracy:ratio_rate6h{one}"
    assert settled(prom, rule, share, tolerance=1e-9) == pytest.approx(share)
    pair = f'answered="{wrong["digit"]}",label="{wrong["label"]}",model_version="{version}"'
    count = float(query(prom, f"sum(digit_feedback_total{{{pair}}})")[0]["value"][1])
    rule = f"model_version_answered_label:digit_feedback:increase6h{{{pair}}}"
    assert count >= 1 and settled(prom, rule, count, tolerance=0) == count

    # the test accuracy the alert compares with, and the store's fill
    accuracy = requests.get(f"{url}/model", timeout=10).json()["test_accuracy"]
    tested = by(prom, "max by (model_version) (digit_model_test_accuracy)", "model_version")
    assert tested == {version: pytest.approx(accuracy)}
    store = FeedbackStore(served["env"]["DIGIT_FEEDBACK_DB"])
    try:
        rows = store.count()
    finally:
        store.close()
    assert by(prom, "max(digit_feedback_max_rows)", "") == {"": 100_000}  # the default
    fill = settled(prom, f'job:digit_feedback_store:fill_ratio{{job="{JOB}"}}', rows / 1e5, 1e-12)
    assert fill == pytest.approx(rows / 100_000)


def test_every_rule_evaluates_without_error(prom):
    groups = requests.get(f"{prom}/api/v1/rules", timeout=10).json()["data"]["groups"]
    rules = [r for g in groups for r in g["rules"]]
    in_files = [
        rule
        for name in ("rules.yml", "alerts.yml")
        for group in yaml.safe_load((DASHBOARD.parents[1] / name).read_text())["groups"]
        for rule in group["rules"]
    ]
    assert len(rules) == len(in_files)  # every rule of both files loaded
    bad = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    assert not bad


def test_every_dashboard_query_is_accepted(prom):
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert exprs
    for expr in exprs:
        query(prom, expr)  # asserts status "success"
    # Every panel has data by now, the 5xx error ratio too: BentoML exports each API's 500 series
    # at 0 from the start, so the ratio is 0, not absent. Only the rollout panels that need a
    # challenger or a reload (ROLLOUT_ONLY) may be empty: this service has neither.
    empty = {e for e in exprs if not query(prom, e)}
    assert {e for e in empty if not ROLLOUT_ONLY.search(e)} == set(), "panels without data"
