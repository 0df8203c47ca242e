"""The feedback loop in-process (service/feedback.py): prediction ids sign exactly one answer and
every alteration, expiry, future stamp or malformed id is refused; the bodies' checks; a worker's
loop on a real SQLite database (and on one that cannot be opened). Over HTTP:
tests/e2e/test_feedback.py."""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import pytest

from common.feedback_store import FeedbackStore
from service import feedback as fb
from service.http.bodies import endpoint_bodies, read_json
from service.inputs.limits import Limits
from service.refusals import REASONS, Rejected
from service.settings import Settings

SECRET = b"s" * 32
NOW = 1_750_000_000
SEEN = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
BODIES = endpoint_bodies(max_batch=64, limits=Limits(), max_body=1_000_000)


def refused(fn, *args, **kwargs) -> Rejected:
    with pytest.raises(Rejected) as caught:
        fn(*args, **kwargs)
    return caught.value


def signed(ts: int = NOW, confidence: float = 0.8765432, digit: int = 7, version: str = "3"):
    return fb.sign(SECRET, SEEN, digit, version, ts, confidence)


def check(pid: object, seen=SEEN, digit=7, version="3", now=NOW, max_age_s=3600.0):
    return fb.verify(SECRET, pid, seen, digit, version, now, max_age_s)


# --- ids -----------------------------------------------------------------------------------------


def test_an_id_verifies_for_exactly_what_it_signed():
    pid = signed()
    ts, ppm, mac = pid.split(".")
    assert (int(ts), int(ppm), len(mac)) == (NOW, 876543, 64)
    assert check(pid) == fb.Verified(key=mac, ts=NOW, confidence=0.876543)
    assert signed() == pid  # no per-request state: the same answer, the same id
    assert fb.sign(b"t" * 32, SEEN, 7, "3", NOW, 0.8765432) != pid


def test_the_mac_is_the_documented_hmac():
    import hashlib
    import hmac

    message = b"digit-feedback/1|" + SEEN.tobytes() + f"|7|3|{NOW}|876543".encode()
    assert signed().split(".")[2] == hmac.new(SECRET, message, hashlib.sha256).hexdigest()


def altered_pixel() -> np.ndarray:
    seen = SEEN.copy()
    seen[13, 17] ^= 1
    return seen


@pytest.mark.parametrize(
    "change",
    [
        {"seen": altered_pixel()},
        {"seen": SEEN.T},  # the same pixels, another picture
        {"digit": 1},
        {"version": "4"},
        {"version": "3 "},
    ],
    ids=["pixel", "transposed", "digit", "version", "version-space"],
)
def test_an_altered_answer_is_refused(change):
    assert refused(check, signed(), **change).reason == "bad_prediction_id"


def test_an_altered_time_or_confidence_is_refused():
    ts, ppm, mac = signed().split(".")
    for pid in (f"{int(ts) - 1}.{ppm}.{mac}", f"{ts}.{int(ppm) + 1}.{mac}", f"{ts}.1000000.{mac}"):
        assert refused(check, pid).reason == "bad_prediction_id", pid
    other = fb.sign(b"o" * 32, SEEN, 7, "3", NOW, 0.8765432)  # a well-formed id of another secret
    assert refused(check, other).reason == "bad_prediction_id"


def test_an_old_id_expires_and_a_future_one_is_forged():
    pid = signed()
    assert check(pid, now=NOW + 3600).ts == NOW  # exactly the max age: still taken
    expired = refused(check, pid, now=NOW + 3601)
    assert (expired.reason, expired.status) == ("expired_prediction", 410)
    assert "DIGIT_FEEDBACK_MAX_AGE_S" in expired.message
    assert check(signed(ts=NOW + 60)).ts == NOW + 60  # clock skew within a minute
    future = refused(check, signed(ts=NOW + 61))
    assert (future.reason, future.status) == ("bad_prediction_id", 400)


MAC = "a" * 64


@pytest.mark.parametrize(
    "pid",
    [
        "",
        "abc",
        "1.2",
        f"{NOW}.5",
        f"{NOW}.5.{MAC}.1",
        f"{NOW}.5.{MAC[:63]}",
        f"{NOW}.5.{MAC}a",
        f"{NOW}.5.{MAC.upper()}",
        f"0{NOW}.5.{MAC}",  # not canonical
        f"{NOW}.05.{MAC}",
        f"-{NOW}.5.{MAC}",
        f"+{NOW}.5.{MAC}",
        f"{NOW}.-5.{MAC}",
        f"{NOW}.1000001.{MAC}",
        f"{NOW}.5.{MAC}\n",
        f" {NOW}.5.{MAC}",
        f"{NOW}.5.{'g' * 64}",
        "١٧٥٠٠٠٠٠٠٠.5." + MAC,  # Arabic-Indic digits: int() would take them
        f"{NOW}.5,{MAC}",
        f"1{'0' * 12}.5.{MAC}",  # 13 digits of time
        f"{NOW}.5.{MAC}" * 2,
        "1" * 1_000_000,
        "." * 100_000,
        f"{NOW}.5." + "a" * 1_000_000,
        None,
        7,
        1.5,
        True,
        [f"{NOW}.5.{MAC}"],
        {"id": f"{NOW}.5.{MAC}"},
    ],
    ids=lambda p: repr(p)[:30],
)
def test_a_malformed_id_is_refused_quickly(pid):
    started = time.perf_counter()
    exc = refused(check, pid)
    assert time.perf_counter() - started < 0.05
    assert (exc.reason, exc.status) == ("bad_prediction_id", 400)
    assert len(exc.message) < 200  # never echoes what was sent


def test_the_client_hash_is_keyed_and_short():
    h = fb.client_hash(SECRET, "127.0.0.1")
    assert len(h) == 32 and int(h, 16) >= 0
    assert h == fb.client_hash(SECRET, "127.0.0.1")
    assert h != fb.client_hash(SECRET, "127.0.0.2")
    assert h != fb.client_hash(b"o" * 32, "127.0.0.1")


# --- bodies (what the Guard lets through) --------------------------------------------------------


def body(**change) -> bytes:
    fields = {
        "seen": SEEN.tolist(),
        "answered": 7,
        "label": 7,
        "model_version": "3",
        "prediction_id": signed(),
    }
    fields.update(change)
    return json.dumps({k: v for k, v in fields.items() if v is not ...}).encode()


def test_a_good_feedback_body_passes_the_guard():
    assert read_json(BODIES["/feedback"], body()) is None
    assert read_json(BODIES["/feedback"], body(label=None)) is None
    assert read_json(BODIES["/feedback/review"], b'{"id": 1, "label": 0}') is None
    assert BODIES["/feedback"].max_bytes == 64 * 1024


@pytest.mark.parametrize("label", [True, False, "7", 10, -1, 3.5, 7.0, [7], {"7": 7}, "null"])
def test_a_bad_label_is_refused(label):
    exc = refused(read_json, BODIES["/feedback"], body(label=label))
    assert (exc.reason, exc.status) == ("bad_label", 400)
    review = json.dumps({"id": 1, "label": label}).encode()
    assert refused(read_json, BODIES["/feedback/review"], review).reason == "bad_label"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"seen": ...}, "missing_field"),
        ({"answered": ...}, "missing_field"),
        ({"label": ...}, "missing_field"),  # "not sure" is an explicit null
        ({"model_version": ...}, "missing_field"),
        ({"prediction_id": ...}, "missing_field"),
        ({"seen": SEEN[:27].tolist()}, "wrong_shape"),
        ({"seen": (SEEN / 2).tolist()}, "invalid_field"),  # fractions: not a reply's seen
        ({"seen": [[True] * 28] * 28}, "not_numbers"),
        ({"seen": [[256] * 28] * 28}, "out_of_range"),
        ({"seen": "a picture"}, "invalid_field"),
        ({"answered": True}, "invalid_field"),
        ({"answered": "7"}, "invalid_field"),
        ({"answered": 10}, "invalid_field"),
        ({"model_version": 3}, "invalid_field"),
        ({"model_version": ""}, "invalid_field"),
        ({"model_version": "v" * 65}, "invalid_field"),
        ({"prediction_id": "forged"}, "bad_prediction_id"),
        ({"prediction_id": 12}, "bad_prediction_id"),
    ],
)
def test_a_bad_feedback_body_is_refused_with_its_reason(change, reason):
    assert refused(read_json, BODIES["/feedback"], body(**change)).reason == reason


@pytest.mark.parametrize(
    ("review", "reason"),
    [
        ({"label": 1}, "missing_field"),
        ({"id": 1}, "missing_field"),
        ({"id": 0, "label": 1}, "invalid_field"),
        ({"id": True, "label": 1}, "invalid_field"),
        ({"id": "1", "label": 1}, "invalid_field"),
        ({"id": 1.0, "label": 1}, "invalid_field"),
        ({"id": 2**63, "label": 1}, "invalid_field"),  # more than a database integer holds
        ({"id": 1, "label": None}, "bad_label"),  # a helper labels; "not sure" is no review
    ],
)
def test_a_bad_review_body_is_refused_with_its_reason(review, reason):
    exc = refused(read_json, BODIES["/feedback/review"], json.dumps(review).encode())
    assert exc.reason == reason


@pytest.mark.parametrize(("raw", "limit"), [(None, 12), ("", 12), ("1", 1), ("50", 50), ("007", 7)])
def test_the_queue_limit(raw, limit):
    assert fb.queue_limit(raw) == limit


@pytest.mark.parametrize("raw", ["0", "51", "-1", "1.5", "x", "1e3", "٣", "9" * 5000])
def test_a_bad_queue_limit_is_refused(raw):
    assert refused(fb.queue_limit, raw).reason == "invalid_field"


def test_every_feedback_reason_is_in_the_table():
    wanted = {
        "bad_label": 400,
        "bad_prediction_id": 400,
        "expired_prediction": 410,
        "duplicate_feedback": 409,
        "not_queued": 404,
        "rate_limited": 429,
        "feedback_full": 507,
        "feedback_unavailable": 503,
        "feedback_off": 404,
    }
    assert {r: REASONS[r].status for r in wanted} == wanted


# --- the per-worker window for reviews -----------------------------------------------------------


def test_the_window_allows_its_limit_then_says_how_long_to_wait():
    w = fb.Window(limit=2, window_s=10)
    assert w.retry_after("a", now=0) is None
    w.add("a", now=0)
    w.add("a", now=4)
    assert w.retry_after("a", now=5) == pytest.approx(5)
    assert w.retry_after("b", now=5) is None  # per client
    assert w.retry_after("a", now=10.5) is None  # the first one left the window


def test_the_window_remembers_a_bounded_number_of_clients():
    w = fb.Window(limit=1, window_s=100, max_keys=3)
    for i in range(10):
        w.add(f"c{i}", now=i)
    assert len(w._events) == 3
    assert w.retry_after("c9", now=10) is not None  # the latest are kept
    assert w.retry_after("c0", now=10) is None


# --- a worker's loop on a real database ----------------------------------------------------------


def settings(tmp_path, **extra) -> Settings:
    return Settings(feedback_db=f"sqlite:///{tmp_path / 'feedback.db'}", **extra)


def run(coroutine):
    return asyncio.run(coroutine)


@pytest.fixture
def loop(tmp_path):
    loop = fb.Loop(settings(tmp_path, feedback_per_client=3, feedback_max_rows=4))
    assert loop.wait_open(30)
    yield loop
    loop.close()


def test_the_loop_stores_what_it_signed_once(loop, tmp_path):
    pid = loop.sign(SEEN, 7, "3", 0.5)
    stored = run(loop.add(SEEN, 7, 2, "3", pid, "127.0.0.1"))
    assert stored == {"stored": True, "id": 1, "label": 2, "correct": False, "model_version": "3"}
    assert refused_async(loop.add(SEEN, 7, 2, "3", pid, "127.0.0.1")).reason == "duplicate_feedback"
    store = FeedbackStore(f"sqlite:///{tmp_path / 'feedback.db'}")
    assert store.secret() == loop.secret  # the database's secret signs: every worker shares it
    assert store.count() == 1
    exported = store.export()
    assert np.array_equal(exported["x"][0], SEEN) and exported["y"].tolist() == [2]
    assert exported["confidence"][0] == pytest.approx(0.5)


def refused_async(coroutine) -> Rejected:
    with pytest.raises(Rejected) as caught:
        run(coroutine)
    return caught.value


def test_not_sure_is_only_for_unsure_answers_and_queues_them(loop):
    sure = loop.sign(SEEN, 7, "3", 0.95)
    exc = refused_async(loop.add(SEEN, 7, None, "3", sure, "127.0.0.1"))
    assert exc.reason == "bad_label" and "DIGIT_FEEDBACK_QUEUE_BELOW" in exc.message
    unsure = loop.sign(SEEN, 7, "3", 0.4)
    row = run(loop.add(SEEN, 7, None, "3", unsure, "127.0.0.1"))
    assert (row["label"], row["correct"]) == (None, None)
    (item,) = run(loop.queue(12))
    assert (item.id, item.answered, item.label) == (row["id"], 7, None)
    run(loop.review(row["id"], 1, "127.0.0.1"))
    assert run(loop.queue(12)) == []
    again = refused_async(loop.review(row["id"], 1, "127.0.0.1"))
    assert (again.reason, again.status) == ("not_queued", 404)
    assert refused_async(loop.review(999, 1, "127.0.0.1")).reason == "not_queued"


def test_rate_limit_and_full_table(loop):
    def one(i: int, client: str) -> dict:
        pid = loop.sign(np.full((28, 28), i, np.uint8), 7, "3", 0.5)
        return run(loop.add(np.full((28, 28), i, np.uint8), 7, 7, "3", pid, client))

    for i in range(3):
        one(i, "10.0.0.1")
    limited = refused_async(loop.add(SEEN, 7, 7, "3", loop.sign(SEEN, 7, "3", 0.5), "10.0.0.1"))
    assert (limited.reason, limited.status, limited.retry_after) == ("rate_limited", 429, 60)
    one(3, "10.0.0.2")  # another client: its own budget; the table holds 4 now
    full = refused_async(loop.add(SEEN, 7, 7, "3", loop.sign(SEEN, 7, "3", 0.5), "10.0.0.3"))
    assert (full.reason, full.status) == ("feedback_full", 507)


def test_reviews_are_rate_limited_per_client_in_the_worker(tmp_path):
    loop = fb.Loop(settings(tmp_path, feedback_per_client=1, feedback_queue_below=0.99))
    try:
        assert loop.wait_open(30)
        rows = []
        for i in range(2):
            seen = np.full((28, 28), i, np.uint8)
            pid = loop.sign(seen, 7, "3", 0.5)
            rows.append(run(loop.add(seen, 7, None, "3", pid, f"10.0.0.{i}"))["id"])
        run(loop.review(rows[0], 1, "10.0.0.9"))
        limited = refused_async(loop.review(rows[1], 1, "10.0.0.9"))
        assert (limited.reason, limited.status) == ("rate_limited", 429)
        assert 1 <= limited.retry_after <= 60
        run(loop.review(rows[1], 1, "10.0.0.8"))
    finally:
        loop.close()


def test_a_database_that_cannot_be_opened_is_a_503_and_predictions_go_on(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    url = f"sqlite:///{blocker / 'feedback.db'}"  # its folder cannot be made
    loop = fb.Loop(Settings(feedback_db=url))
    try:
        assert not loop.wait_open(30)
        assert loop.sign(SEEN, 7, "3", 0.5) is None  # no secret known: no id
        exc = refused_async(loop.add(SEEN, 7, 7, "3", f"{NOW}.5.{MAC}", "127.0.0.1"))
        assert (exc.reason, exc.status, exc.retry_after) == ("feedback_unavailable", 503, 10)
    finally:
        loop.close()
    keyed = fb.Loop(Settings(feedback_db=url, feedback_secret="k" * 16))
    try:
        assert not keyed.wait_open(30)
        pid = keyed.sign(SEEN, 7, "3", 0.5)  # the configured secret signs without the database
        assert pid is not None
        exc = refused_async(keyed.add(SEEN, 7, 7, "3", pid, "127.0.0.1"))
        assert exc.reason == "feedback_unavailable"
        forged = refused_async(keyed.add(SEEN, 7, 7, "3", f"{NOW}.5.{MAC}", "127.0.0.1"))
        assert forged.reason == "bad_prediction_id"  # checked before the database is needed
    finally:
        keyed.close()


def test_a_bad_url_is_logged_without_its_password(tmp_path, caplog):
    url = "postgresql+psycopg2://digit:hunter2hunter2@127.0.0.1:1/feedback"
    loop = fb.Loop(Settings(feedback_db=url))
    try:
        assert not loop.wait_open(60)
    finally:
        loop.close()
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "cannot be opened" in logged and "hunter2" not in logged


# --- who may send it, and the off switch (ASGI layers with hand-made messages) -------------------


async def behind(scope, receive, send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


def asgi(layer, method: str, path: str, server=("127.0.0.1", 3000)) -> tuple[int, dict]:
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "server": server}
    scope["headers"] = [(b"host", b"127.0.0.1:3000")]
    asyncio.run(layer(scope, receive, send))
    return sent[0]["status"], json.loads(sent[1]["body"])


def exposure(settings: Settings):
    from service.http.exposure import Exposure

    return Exposure(behind, guarded=fb.GUARDED, settings=settings, open_reads=fb.OPEN_READS)


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/feedback"), ("POST", "/feedback/review"), ("GET", "/feedback/queue")],
)
def test_feedback_that_stores_or_shows_drawings_is_guarded_like_predictions(method, path):
    outside = ("192.0.2.2", 3000)
    status, reply = asgi(exposure(Settings()), method, path, server=outside)
    assert (status, reply["reason"]) == (403, "key_required")
    assert asgi(exposure(Settings()), method, path)[0] == 200  # loopback, no key
    status, reply = asgi(exposure(Settings(api_key="k" * 16)), method, path)
    assert (status, reply["reason"]) == (401, "unauthorized")
    assert asgi(exposure(Settings()), method, path + "/", server=outside)[0] == 403


def test_get_feedback_is_open_like_the_page():
    for settings in (Settings(), Settings(api_key="k" * 16)):
        assert asgi(exposure(settings), "GET", "/feedback", server=("192.0.2.2", 3000))[0] == 200


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/feedback"),
        ("POST", "/feedback/review"),
        ("GET", "/feedback/queue"),
        ("GET", "/feedback/queue/"),
        ("POST", "//feedback"),
    ],
)
def test_switched_off_the_feedback_paths_answer_404(method, path):
    status, reply = asgi(fb.FeedbackOff(behind), method, path)
    assert (status, reply["reason"]) == (404, "feedback_off")
    assert "DIGIT_FEEDBACK=0" in reply["error"]


def test_switched_off_get_feedback_and_everything_else_go_on():
    for method, path in (("GET", "/feedback"), ("POST", "/predict"), ("GET", "/feedbacks")):
        assert asgi(fb.FeedbackOff(behind), method, path)[0] == 200


def test_switched_off_the_settings_say_so_and_replies_have_no_id_by_default():
    from service.schemas import seen_prediction

    assert Settings.from_env({"DIGIT_FEEDBACK": "0"}).feedback is False
    probs = np.eye(10)[[3]]
    assert seen_prediction(probs, "1", SEEN[None]).prediction_id is None
