"""The feedback loop over real HTTP, on the real SQLite database the fixture's server writes (its
DIGIT_FEEDBACK_DB, read here with `FeedbackStore`): a prediction's id and its `seen` store one row,
exactly; every forged, altered, replayed or malformed body is refused with its reason, counted,
and stores nothing; "not sure" goes to the help-label queue and a helper's review takes it out.
One more server (one worker, a database of its own) is started twice: with small limits for the
rate limit (429) and the full table (507), then with DIGIT_FEEDBACK=0. The pieces, in-process:
tests/code/test_feedback_ids.py."""

from __future__ import annotations

import contextlib
import http.client
import json
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import requests

from common.feedback_store import FeedbackStore
from tests.helpers import FIXTURE, free_port, second_server_env, serve_cmd, serving
from tests.hostile.probe import metric
from tests.uploads import data_url, render

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    with np.load(FIXTURE) as f:
        return f["x_test"]


@pytest.fixture(scope="module")
def store(served) -> Iterator[FeedbackStore]:
    store = FeedbackStore(served["env"]["DIGIT_FEEDBACK_DB"])
    yield store
    store.close()


def predict_canvas(url: str, x28: np.ndarray) -> dict:
    png = render(x28, "canvas_png")
    reply = requests.post(f"{url}/predict_canvas", json={"data_url": data_url(png)}, timeout=60)
    assert reply.status_code == 200, reply.text
    return reply.json()


def predict_image(url: str, x28: np.ndarray) -> dict:
    files = {"image": ("digit.jpg", render(x28, "jpeg75"))}
    reply = requests.post(f"{url}/predict_image", files=files, timeout=60)
    assert reply.status_code == 200, reply.text
    return reply.json()


def feedback_of(reply: dict, label: int | None) -> dict:
    return {
        "seen": reply["seen"],
        "answered": reply["digit"],
        "label": label,
        "model_version": reply["model_version"],
        "prediction_id": reply["prediction_id"],
    }


def send(url: str, body: dict, path: str = "/feedback") -> requests.Response:
    return requests.post(f"{url}{path}", json=body, timeout=60)


def row_of(store: FeedbackStore, key: str) -> dict:
    """The labelled row stored under `key`, as the pipeline's export gives it."""
    exported = store.export()
    (index,) = np.flatnonzero(exported["key"] == key)
    return {name: values[index] for name, values in exported.items()}


def unsure(url: str, digits: np.ndarray, below: float = 0.9) -> dict:
    """A reply the model is less than `below` sure of: a drawing of two digits at once."""
    for i in range(40):
        a, b = digits[i], digits[i + 40]
        mixed = np.maximum(a, b) if i % 2 else ((a.astype(int) + b) // 2).astype(np.uint8)
        reply = predict_canvas(url, mixed)
        if reply["confidence"] < below - 0.02:  # off the boundary, whatever the rounding
            return reply
    pytest.fail(f"no blend of two digits left the fixture model under {below:.0%} sure")


def test_an_answer_and_its_seen_store_one_row_exactly(served, store, digits):
    url = served["url"]
    info = requests.get(f"{url}/feedback", timeout=10)
    assert info.status_code == 200
    assert info.json() == {"enabled": True, "queue_below": 0.9, "max_age_s": 3600.0}
    before_rows = store.count()
    stored_rows = metric(url, "digit_feedback_total")
    canvas, picture = predict_canvas(url, digits[0]), predict_image(url, digits[1])
    for reply, label in ((canvas, canvas["digit"]), (picture, (picture["digit"] + 1) % 10)):
        version = reply["model_version"]
        labels = {"answered": str(reply["digit"]), "label": str(label), "model_version": version}
        counted = metric(url, "digit_feedback_total", **labels)
        r = send(url, feedback_of(reply, label))
        assert r.status_code == 201, r.text
        body = r.json()
        correct = label == reply["digit"]
        assert body == {
            "stored": True,
            "id": body["id"],
            "label": label,
            "correct": correct,
            "model_version": version,
        }
        ts, ppm, mac = reply["prediction_id"].split(".")
        row = row_of(store, mac)
        assert np.array_equal(row["x"], np.array(reply["seen"], np.uint8))
        assert (int(row["y"]), int(row["answered"])) == (label, reply["digit"])
        assert str(row["model_version"]) == version and not row["reviewed"]
        assert row["confidence"] == pytest.approx(int(ppm) / 1e6)
        assert row["confidence"] == pytest.approx(reply["confidence"], abs=1e-6)
        assert row["created_at"] >= int(ts)
        yes = "yes" if correct else "no"
        assert metric(url, "digit_feedback_total", **labels, correct=yes) == counted + 1
    assert store.count() == before_rows + 2
    assert metric(url, "digit_feedback_total") == stored_rows + 2
    assert metric(url, "digit_feedback_rows") >= before_rows + 2
    assert metric(url, "digit_feedback_max_rows") == 100_000
    accuracy = requests.get(f"{url}/model", timeout=10).json()["test_accuracy"]
    assert metric(url, "digit_model_test_accuracy", model_version="1") == pytest.approx(accuracy)


def test_a_replay_is_a_409_and_stores_nothing(served, store, digits):
    url = served["url"]
    body = feedback_of(predict_canvas(url, digits[2]), 3)
    assert send(url, body).status_code == 201
    rows = store.count()
    replay = send(url, body)
    assert replay.status_code == 409, replay.text
    assert replay.json()["reason"] == "duplicate_feedback"
    assert send(url, {**body, "label": 4}).status_code == 409  # not relabelled either
    assert store.count() == rows


def forged(body: dict) -> dict:
    ts, ppm, _ = body["prediction_id"].split(".")
    return {**body, "prediction_id": f"{ts}.{ppm}.{'0' * 64}"}


def altered_pixel(body: dict) -> dict:
    seen = [row[:] for row in body["seen"]]
    seen[14][14] = (seen[14][14] + 1) % 256
    return {**body, "seen": seen}


def without(name: str) -> Callable[[dict], dict]:
    return lambda body: {k: v for k, v in body.items() if k != name}


def changed(**fields: object) -> Callable[[dict], dict]:
    return lambda body: {**body, **fields}


def other_digit(body: dict) -> dict:
    return {**body, "answered": (body["answered"] + 1) % 10}


def halved(body: dict) -> dict:
    return {**body, "seen": (np.array(body["seen"]) / 2).tolist()}


def older_than(body: dict, seconds: int) -> dict:
    ts, ppm, mac = body["prediction_id"].split(".")
    return {**body, "prediction_id": f"{int(ts) - seconds}.{ppm}.{mac}"}


# A refused body: (how it is made from a good one, status, reason).
REFUSED = {
    "forged id": (forged, 400, "bad_prediction_id"),
    "malformed id": (changed(prediction_id="1.2.3"), 400, "bad_prediction_id"),
    "huge id": (changed(prediction_id="7" * 50_000), 400, "bad_prediction_id"),
    "altered pixel": (altered_pixel, 400, "bad_prediction_id"),
    "altered digit": (other_digit, 400, "bad_prediction_id"),
    "altered version": (changed(model_version="2"), 400, "bad_prediction_id"),
    "altered time": (lambda b: older_than(b, 1), 400, "bad_prediction_id"),
    "label true": (changed(label=True), 400, "bad_label"),
    'label "7"': (changed(label="7"), 400, "bad_label"),
    "label 10": (changed(label=10), 400, "bad_label"),
    "label -1": (changed(label=-1), 400, "bad_label"),
    "label 3.5": (changed(label=3.5), 400, "bad_label"),
    "no seen": (without("seen"), 400, "missing_field"),
    "no label": (without("label"), 400, "missing_field"),
    "no prediction_id": (without("prediction_id"), 400, "missing_field"),
    "no answered": (without("answered"), 400, "missing_field"),
    "no model_version": (without("model_version"), 400, "missing_field"),
    "seen of fractions": (halved, 400, "invalid_field"),
    "seen of 27 rows": (lambda b: {**b, "seen": b["seen"][:27]}, 400, "wrong_shape"),
    "oversized body": (changed(pad="x" * 70_000), 413, "too_large"),
}


def test_every_bad_body_is_refused_counted_and_stores_nothing(served, store, digits):
    url = served["url"]
    good = feedback_of(predict_canvas(url, digits[3]), 5)
    rows = store.count()
    for case, (change, status, reason) in REFUSED.items():
        counted = metric(url, "digit_rejections_total", reason=reason, endpoint="feedback")
        r = send(url, change(good))
        assert (r.status_code, r.json()["reason"]) == (status, reason), (case, r.text[:300])
        assert r.headers["X-Reject-Reason"] == reason
        assert "Send JSON" in r.json()["error"], case  # the endpoint's usage hint
        after = metric(url, "digit_rejections_total", reason=reason, endpoint="feedback")
        assert after == counted + 1, case
        assert store.count() == rows, case
    for content_type in ("text/plain", "application/x-www-form-urlencoded"):
        r = requests.post(
            f"{url}/feedback", data=json.dumps(good), headers={"Content-Type": content_type}
        )
        assert (r.status_code, r.json()["reason"]) == (415, "unsupported_media"), r.text
    r = requests.post(f"{url}/feedback", files={"seen": ("x.png", b"png")}, timeout=30)
    assert (r.status_code, r.json()["reason"]) == (415, "unsupported_media")
    assert store.count() == rows
    # none of that used the answer up: sent as it is, it is stored
    assert send(url, good).status_code == 201
    assert store.count() == rows + 1


def test_an_expired_id_is_a_410(served, store, digits):
    """An id older than DIGIT_FEEDBACK_MAX_AGE_S, signed by the server itself: a reply from a
    server an hour ago is not at hand, so the test signs one with the database's secret."""
    from service.feedback import sign

    url = served["url"]
    reply = predict_canvas(url, digits[4])
    seen = np.array(reply["seen"], np.uint8)
    ts = int(reply["prediction_id"].split(".")[0])

    def signed_at(when: int) -> str:
        args = (seen, reply["digit"], reply["model_version"], when, reply["confidence"])
        return sign(store.secret(), *args)

    assert signed_at(ts) == reply["prediction_id"]  # the server signs as documented
    rows = store.count()
    r = send(url, {**feedback_of(reply, 1), "prediction_id": signed_at(ts - 3601)})
    assert (r.status_code, r.json()["reason"]) == (410, "expired_prediction"), r.text
    assert "DIGIT_FEEDBACK_MAX_AGE_S" in r.json()["error"]
    r = send(url, {**feedback_of(reply, 1), "prediction_id": signed_at(ts + 300)})  # the future
    assert (r.status_code, r.json()["reason"]) == (400, "bad_prediction_id"), r.text
    assert store.count() == rows


def test_not_sure_is_queued_and_a_helper_labels_it(served, store, digits):
    url = served["url"]
    sure = next(
        r for r in (predict_canvas(url, digits[i]) for i in range(5, 40)) if r["confidence"] >= 0.9
    )
    rows = store.count()
    r = send(url, feedback_of(sure, None))
    assert (r.status_code, r.json()["reason"]) == (400, "bad_label"), r.text
    assert "DIGIT_FEEDBACK_QUEUE_BELOW" in r.json()["error"]
    assert store.count() == rows
    reply = unsure(url, digits)
    version = reply["model_version"]
    nones = metric(url, "digit_feedback_total", label="none", correct="unknown")
    r = send(url, feedback_of(reply, None))
    assert r.status_code == 201, r.text
    row_id = r.json()["id"]
    assert r.json() == {
        "stored": True,
        "id": row_id,
        "label": None,
        "correct": None,
        "model_version": version,
    }
    assert metric(url, "digit_feedback_total", label="none", correct="unknown") == nones + 1
    queue = requests.get(f"{url}/feedback/queue", params={"limit": 50}, timeout=30)
    assert queue.status_code == 200, queue.text
    assert queue.json()["below"] == 0.9
    items = {item["id"]: item for item in queue.json()["items"]}
    assert row_id in items, "a row sent as not sure is in the help-label queue"
    item = items[row_id]
    assert (item["seen"], item["answered"], item["label"]) == (reply["seen"], reply["digit"], None)
    assert item["confidence"] == pytest.approx(reply["confidence"], abs=1e-6)
    assert item["model_version"] == version
    assert len(requests.get(f"{url}/feedback/queue?limit=1", timeout=30).json()["items"]) == 1
    bad = requests.get(f"{url}/feedback/queue?limit=51", timeout=30)
    assert (bad.status_code, bad.json()["reason"]) == (400, "invalid_field")

    reviews = metric(url, "digit_feedback_reviews_total", label="4", model_version=version)
    review = send(url, {"id": row_id, "label": 4}, "/feedback/review")
    assert review.status_code == 200, review.text
    assert review.json() == {"reviewed": row_id, "label": 4}
    assert metric(url, "digit_feedback_reviews_total", label="4", model_version=version) == (
        reviews + 1
    )
    labelled = row_of(store, reply["prediction_id"].split(".")[2])
    assert (int(labelled["y"]), bool(labelled["reviewed"])) == (4, True)
    left = requests.get(f"{url}/feedback/queue?limit=50", timeout=30).json()["items"]
    assert row_id not in {item["id"] for item in left}
    for body, reason in (
        ({"id": row_id, "label": 5}, "not_queued"),  # reviewed already: the first label wins
        ({"id": 10**12, "label": 5}, "not_queued"),
        ({"id": row_id, "label": None}, "bad_label"),
        ({"id": 0, "label": 5}, "invalid_field"),
    ):
        counted = metric(url, "digit_rejections_total", reason=reason, endpoint="feedback/review")
        r = send(url, body, "/feedback/review")
        assert r.json()["reason"] == reason, (body, r.text)
        assert r.status_code == {"not_queued": 404, "bad_label": 400, "invalid_field": 400}[reason]
        after = metric(url, "digit_rejections_total", reason=reason, endpoint="feedback/review")
        assert after == counted + 1
    assert int(row_of(store, labelled["key"])["y"]) == 4


# --- small limits, on a server of their own ----------------------------------------------------


@contextlib.contextmanager
def another_server(served: dict, name: str, **settings: str) -> Iterator[str]:
    """The fixture's model served once more (one worker, ~10 s to start) with `settings`, on a
    feedback database of its own (the fixture's holds the other tests' rows)."""
    root = served["root"]
    env = {
        **second_server_env(served["env"], root / f"home-{name}"),
        "DIGIT_FEEDBACK_DB": f"sqlite:///{root / f'{name}.db'}",
        "DIGIT_WORKERS": "1",
        **settings,
    }
    port = free_port()
    cmd = serve_cmd("service.service:DigitClassifier", port)
    with serving(cmd, served["dir"], env, port, root / f"{name}.log") as url:
        yield url


@pytest.fixture
def limited(served) -> Iterator[str]:
    """With DIGIT_FEEDBACK_PER_CLIENT=3 and DIGIT_FEEDBACK_MAX_ROWS=5."""
    limits = {"DIGIT_FEEDBACK_PER_CLIENT": "3", "DIGIT_FEEDBACK_MAX_ROWS": "5"}
    with another_server(served, "feedback-limits", **limits) as url:
        yield url


def post_from(url: str, source: str, body: dict) -> tuple[int, dict, http.client.HTTPMessage]:
    """POST /feedback from the loopback address `source` (127.0.0.x): another client."""
    port = int(url.rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60, source_address=(source, 0))
    try:
        data = json.dumps(body)
        conn.request("POST", "/feedback", data, {"Content-Type": "application/json"})
        reply = conn.getresponse()
        return reply.status, json.loads(reply.read()), reply.headers  # (case-insensitive)
    finally:
        conn.close()


def test_a_client_past_its_share_gets_429_and_a_full_table_507(limited, digits):
    replies = [predict_canvas(limited, digits[100 + i]) for i in range(7)]
    bodies = [feedback_of(r, r["digit"]) for r in replies]
    for body in bodies[:3]:
        status, reply, _ = post_from(limited, "127.0.0.1", body)
        assert status == 201, reply
    status, reply, headers = post_from(limited, "127.0.0.1", bodies[3])
    assert (status, reply["reason"]) == (429, "rate_limited"), reply
    assert headers["Retry-After"] == "60"
    assert "DIGIT_FEEDBACK_PER_CLIENT" in reply["error"]
    for body in bodies[3:5]:  # another address is another client: the table reaches 5 rows
        status, reply, _ = post_from(limited, "127.0.0.2", body)
        assert status == 201, reply
    status, reply, _ = post_from(limited, "127.0.0.3", bodies[5])
    assert (status, reply["reason"]) == (507, "feedback_full"), reply
    assert metric(limited, "digit_rejections_total", reason="rate_limited") == 1
    assert metric(limited, "digit_rejections_total", reason="feedback_full") == 1
    assert metric(limited, "digit_feedback_rows") == 5
    assert metric(limited, "digit_feedback_max_rows") == 5
    assert metric(limited, "digit_feedback_total") == 5


def test_switched_off_no_database_no_ids_and_404s(served, digits):
    """The same extra server again, with DIGIT_FEEDBACK=0 (it starts in ~10 s)."""
    with another_server(served, "feedback-off", DIGIT_FEEDBACK="0") as url:
        reply = predict_canvas(url, digits[0])
        assert reply["prediction_id"] is None and len(reply["seen"]) == 28
        assert predict_image(url, digits[1])["prediction_id"] is None
        info = requests.get(f"{url}/feedback", timeout=10)
        assert (info.status_code, info.json()["enabled"]) == (200, False)
        body = {**feedback_of(reply, 1), "prediction_id": f"1.2.{'0' * 64}"}
        for method, path, kwargs in (
            ("POST", "/feedback", {"json": body}),
            ("POST", "/feedback/review", {"json": {"id": 1, "label": 1}}),
            ("GET", "/feedback/queue", {}),
        ):
            r = requests.request(method, f"{url}{path}", timeout=30, **kwargs)
            assert (r.status_code, r.json()["reason"]) == (404, "feedback_off"), path
        assert metric(url, "digit_rejections_total", reason="feedback_off") == 3
        assert metric(url, "digit_feedback_max_rows") == 0  # never set: the loop is off
    assert not (served["root"] / "feedback-off.db").exists()  # no database was opened
