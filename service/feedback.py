"""The feedback loop's service side: signed prediction ids, the checks of a feedback body, and the
one object per worker that owns the feedback database (common/feedback_store.py).

A `/predict_canvas` or `/predict_image` reply carries `prediction_id` = `"<ts>.<conf_ppm>.<mac>"`:
the answer's unix time, its confidence in millionths, and the hex HMAC-SHA256 (the secret of
DIGIT_FEEDBACK_SECRET, else the one kept in the database) of the 28×28 seen, the digit, the
registry version, the time and the confidence. `POST /feedback` sends the seen, digit and version
back with the id and a label; `verify` recomputes the mac, so a person can label only what this
service answered, as it answered it, once (the mac is the row's unique key), without any state
kept per request. The rate limit's client is a keyed hash of the peer address (behind a proxy:
the proxy's). Database calls block: they run in one thread per worker, a bounded number waiting.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import math
import re
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import numpy as np
import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from common.feedback_store import (
    FEEDBACK,
    MAX_VERSION,
    Duplicate,
    FeedbackStore,
    NewFeedback,
    NotFound,
    Queued,
    RateLimited,
    StoreFull,
    default_url,
    shown,
)
from common.image import SHAPE
from service import metrics
from service.batcher import Overloaded
from service.http.asgi import App, Receive, Scope, Send, error_response, send_response
from service.http.exposure import normal_path
from service.inputs.arrays import json_image
from service.refusals import Rejected
from service.sandbox import Slots
from service.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")

DOMAIN = b"digit-feedback/1|"  # what the mac signs starts with this: a mac for nothing else
CLIENT_DOMAIN = b"digit-feedback-client/1|"
FUTURE_S = 60  # an id stamped further ahead than this (clock skew between replicas) is forged
MAX_ID_CHARS = 96  # "<12 digits>.<7 digits>.<64 hex>" is at most 85
ID_PATTERN = re.compile(r"(0|[1-9][0-9]{0,11})\.(0|[1-9][0-9]{0,6})\.([0-9a-f]{64})")
PPM = 1_000_000
MAX_ROW_ID = 2**63 - 1  # the largest id a database integer column holds
REOPEN_S = 10  # a database that could not be opened is tried again at most this often
START_TRIES = 3  # opening at start (two workers creating the tables at once can collide)
QUEUE_LIMIT, MAX_QUEUE_LIMIT = 12, 50


# --- prediction ids ------------------------------------------------------------------------------


class Verified(NamedTuple):
    key: str  # the mac (64 hex): the row's unique key
    ts: int  # when the answer was given (unix s)
    confidence: float  # the answer's confidence, as signed (to the millionth)


def _mac(secret: bytes, seen: np.ndarray, digit: int, version: str, ts: int, ppm: int) -> str:
    pixels = np.ascontiguousarray(seen, dtype=np.uint8)
    if pixels.shape != SHAPE:
        raise ValueError(f"seen must be {SHAPE}, not {pixels.shape}")
    message = DOMAIN + pixels.tobytes() + f"|{digit}|{version}|{ts}|{ppm}".encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def sign(
    secret: bytes, seen: np.ndarray, digit: int, version: str, ts: int, confidence: float
) -> str:
    """The prediction id of one answer: `"<ts>.<conf_ppm>.<mac>"`."""
    ppm = min(PPM, max(0, round(confidence * PPM)))
    return f"{int(ts)}.{ppm}.{_mac(secret, seen, int(digit), version, int(ts), ppm)}"


def parse_id(prediction_id: object) -> tuple[int, int, str]:
    """(ts, conf_ppm, mac) of a well-formed id (canonical numbers, lowercase hex), or
    Rejected("bad_prediction_id")."""
    if not isinstance(prediction_id, str):
        raise Rejected(
            "bad_prediction_id",
            "'prediction_id' must be the string a /predict_canvas or /predict_image reply gave",
        )
    found = ID_PATTERN.fullmatch(prediction_id) if len(prediction_id) <= MAX_ID_CHARS else None
    if found is None or int(found[2]) > PPM:
        raise Rejected(
            "bad_prediction_id",
            "'prediction_id' is malformed; send it exactly as the prediction reply gave it",
        )
    return int(found[1]), int(found[2]), found[3]


def verify(
    secret: bytes,
    prediction_id: object,
    seen: np.ndarray,
    digit: int,
    version: str,
    now: float,
    max_age_s: float,
) -> Verified:
    """The key, time and confidence `prediction_id` signs for exactly this seen, digit and
    version; Rejected("bad_prediction_id") when it is malformed, forged, altered or from the
    future, Rejected("expired_prediction") when it is older than `max_age_s`."""
    ts, ppm, mac = parse_id(prediction_id)
    if not hmac.compare_digest(mac, _mac(secret, seen, int(digit), version, ts, ppm)):
        raise Rejected(
            "bad_prediction_id",
            "this 'prediction_id' does not sign these seen pixels, answered digit and "
            "model_version: send them unchanged, as the prediction reply gave them",
        )
    if ts > now + FUTURE_S:
        raise Rejected(
            "bad_prediction_id",
            f"this 'prediction_id' is stamped {ts - now:,.0f} s in the future; predict again",
        )
    if now - ts > max_age_s:
        raise Rejected(
            "expired_prediction",
            f"this prediction is {now - ts:,.0f} s old; feedback is taken for "
            f"{max_age_s:,g} s (DIGIT_FEEDBACK_MAX_AGE_S): predict again and send that",
        )
    return Verified(mac, ts, ppm / PPM)


def client_hash(secret: bytes, address: str) -> str:
    """The rate limit's client: a keyed hash of the peer address (32 hex), nothing reversible."""
    return hmac.new(secret, CLIENT_DOMAIN + address.encode(), hashlib.sha256).hexdigest()[:32]


# --- the bodies (checked by the Guard before BentoML parses them: service/http/bodies.py) --------


def check_label(value: object, field: str = "label", allow_none: bool = True) -> int | None:
    """A label: a JSON integer 0-9 (or null, "not sure", where allowed)."""
    if value is None and allow_none:
        return None
    if type(value) is not int or not 0 <= value <= 9:
        what = "a whole number 0-9, or null when not sure" if allow_none else "a whole number 0-9"
        got = repr(value) if len(repr(value)) <= 40 else f"a {type(value).__name__}"
        raise Rejected("bad_label", f"'{field}' must be {what} (got {got})")
    return value


def check_feedback(fields: dict) -> None:
    """The body of POST /feedback: the types and ranges of every field (the first problem is
    reported); whether the id signs them is the handler's to check."""
    seen = fields["seen"]
    json_image(seen)  # 28 lists of 28 JSON numbers in 0-255
    if any(type(v) is not int for row in seen for v in row):
        raise Rejected(
            "invalid_field", "'seen' must hold whole numbers 0-255, as the prediction reply did"
        )
    answered = fields["answered"]
    if type(answered) is not int or not 0 <= answered <= 9:
        raise Rejected("invalid_field", "'answered' must be the reply's digit, a whole number 0-9")
    check_label(fields["label"])
    version = fields["model_version"]
    if not isinstance(version, str) or not 0 < len(version) <= MAX_VERSION:
        raise Rejected(
            "invalid_field",
            f"'model_version' must be the reply's model_version (a string of 1-{MAX_VERSION} "
            "characters)",
        )
    parse_id(fields["prediction_id"])


def check_review(fields: dict) -> None:
    """The body of POST /feedback/review."""
    row = fields["id"]
    if type(row) is not int or not 1 <= row <= MAX_ROW_ID:
        raise Rejected("invalid_field", "'id' must be a queue item's id, a whole number ≥ 1")
    check_label(fields["label"], allow_none=False)


def queue_limit(raw: str | None) -> int:
    """GET /feedback/queue's `limit`: 1-50, 12 when not given."""
    if raw is None or raw == "":
        return QUEUE_LIMIT
    if not re.fullmatch(r"[0-9]{1,3}", raw) or not 1 <= int(raw) <= MAX_QUEUE_LIMIT:
        raise Rejected(
            "invalid_field",
            f"'limit' must be a whole number 1-{MAX_QUEUE_LIMIT} (got {raw[:20]!r})",
        )
    return int(raw)


# --- rate limiting what the database does not count ----------------------------------------------


class Window:
    """At most `limit` events per key within `window_s` seconds, in this process (a sliding
    window; at most `max_keys` keys remembered, the stalest forgotten first)."""

    def __init__(self, limit: int, window_s: float, max_keys: int = 10_000) -> None:
        self.limit, self.window_s, self.max_keys = limit, window_s, max_keys
        self._events: dict[str, deque[float]] = {}

    def retry_after(self, key: str, now: float | None = None) -> float | None:
        """Seconds until `key` may have one more event; None: it may now."""
        now = time.monotonic() if now is None else now
        events = self._events.get(key)
        if events is None:
            return None
        while events and events[0] <= now - self.window_s:
            events.popleft()
        if len(events) < self.limit:
            return None
        return events[0] + self.window_s - now

    def add(self, key: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if key not in self._events and len(self._events) >= self.max_keys:
            self._forget(now)
        events = self._events.pop(key, None) or deque()
        events.append(now)
        self._events[key] = events  # re-inserted: the dict's order is the keys' last use

    def _forget(self, now: float) -> None:
        stale = [k for k, e in self._events.items() if not e or e[-1] <= now - self.window_s]
        for key in stale:
            del self._events[key]
        while len(self._events) >= self.max_keys:
            del self._events[next(iter(self._events))]


# --- the switch ----------------------------------------------------------------------------------

OFF_PATHS = frozenset({"/feedback", "/feedback/review", "/feedback/queue"})
# Exposure (service/http/exposure.py): these want the key (or loopback) like predictions, as they
# store or show people's drawings; but GET /feedback, which only says whether the loop is on.
GUARDED = tuple(sorted(OFF_PATHS))
OPEN_READS = ("/feedback",)


class FeedbackOff:
    """Installed only with DIGIT_FEEDBACK=0: every feedback path answers 404 `feedback_off`, but
    GET /feedback, which tells the page the loop is off."""

    def __init__(self, app: App) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = normal_path(scope.get("path", "")) if scope["type"] == "http" else ""
        if path not in OFF_PATHS or (path == "/feedback" and scope.get("method") != "POST"):
            await self.app(scope, receive, send)
            return
        metrics.reject("feedback_off", path.strip("/"))
        headers, body = error_response(
            Rejected(
                "feedback_off",
                "this service takes no feedback: its operator switched the loop off "
                "(DIGIT_FEEDBACK=0)",
            )
        )
        await send_response(send, 404, headers, body)


# --- one worker's feedback loop ------------------------------------------------------------------


def _unavailable() -> Rejected:
    return Rejected(
        "feedback_unavailable",
        f"the feedback database cannot be reached now; try again in {REOPEN_S} s",
        retry_after=REOPEN_S,
    )


class Loop:
    """One worker's feedback: it opens the store at start (in its own thread, while the model
    loads), signs answers, and stores and reviews feedback, every database call in that one
    thread with at most `max_waiting` more waiting. A database that cannot be opened is logged,
    tried again at most every REOPEN_S, and meanwhile answered 503 `feedback_unavailable`;
    predictions carry a prediction_id whenever a secret is known."""

    def __init__(self, settings: Settings, cwd: Path | None = None) -> None:
        self.settings = settings
        self.url = settings.feedback_db or default_url(cwd or Path.cwd())
        self.secret: bytes | None = settings.signing_secret
        self.store: FeedbackStore | None = None
        self.reviews = Window(settings.feedback_per_client, settings.feedback_window_s)
        self.slots = Slots(1, settings.max_waiting, "feedback database calls")
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="feedback-db")
        self._next_try = 0.0
        metrics.feedback_table(None, settings.feedback_max_rows)
        self._opening = self._thread.submit(self._open, START_TRIES)

    def wait_open(self, timeout_s: float) -> bool:
        """Wait for the first try at opening the store (at most `timeout_s`); whether it is open."""
        try:
            self._opening.result(timeout_s)
        except TimeoutError:
            log.warning("the feedback database %s is still opening", shown(self.url))
        return self.store is not None

    def close(self) -> None:
        self._thread.shutdown(wait=False, cancel_futures=True)
        if self.store is not None:
            self.store.close()

    # -- answers --

    def sign(self, seen: np.ndarray, digit: int, version: str, confidence: float) -> str | None:
        """A prediction id for this answer, now; None while no secret is known."""
        secret = self.secret
        if secret is None:
            return None
        return sign(secret, seen, digit, version, int(time.time()), confidence)

    def info(self) -> dict[str, Any]:
        s = self.settings
        return {
            "enabled": True,
            "queue_below": s.feedback_queue_below,
            "max_age_s": s.feedback_max_age_s,
        }

    # -- requests --

    async def add(
        self,
        seen: np.ndarray,
        answered: int,
        label: int | None,
        version: str,
        prediction_id: str,
        address: str,
    ) -> dict[str, Any]:
        """Store one person's feedback: the reply of POST /feedback, or Rejected."""
        secret = self.secret or await self._call(self._secret)
        s = self.settings
        signed = verify(
            secret, prediction_id, seen, answered, version, time.time(), s.feedback_max_age_s
        )
        if label is None and signed.confidence >= s.feedback_queue_below:
            raise Rejected(
                "bad_label",
                f"'label' null (not sure) is for answers less than {s.feedback_queue_below:.0%} "
                f"confident (DIGIT_FEEDBACK_QUEUE_BELOW); this one was {signed.confidence:.1%}: "
                "send the digit it shows",
            )
        row = NewFeedback(
            key=signed.key,
            predicted_at=signed.ts,
            client=client_hash(secret, address),
            seen=seen,
            answered=answered,
            confidence=signed.confidence,
            label=label,
            model_version=version,
        )
        row_id, rows = await self._call(self._with_store, self._insert, row)
        metrics.feedback_stored(answered, label, version, rows)
        return {
            "stored": True,
            "id": row_id,
            "label": label,
            "correct": None if label is None else label == answered,
            "model_version": version,
        }

    async def queue(self, limit: int) -> list[Queued]:
        below = self.settings.feedback_queue_below
        return await self._call(self._with_store, lambda store: store.queue(below, limit))

    async def review(self, row_id: int, label: int, address: str) -> None:
        """A helper's label for a queued row; counted per client in this worker's Window."""
        secret = self.secret or await self._call(self._secret)
        client = client_hash(secret, address)
        wait = self.reviews.retry_after(client)
        if wait is not None:
            raise self._rate_limited(wait, "reviews")
        version = await self._call(self._with_store, self._review, row_id, label)
        self.reviews.add(client)
        metrics.feedback_reviewed(label, version)

    # -- in the database thread --

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """fn(*args) in the database thread; Overloaded as a 503 when too many wait already."""
        try:
            await self.slots.acquire()
        except Overloaded as exc:
            raise Rejected("overloaded", f"{exc}; try again in a second") from None
        running = asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

        def done(future: asyncio.Future) -> None:
            # only once the thread is done: a request cancelled meanwhile must not let one more
            # in while its call still holds the thread
            self.slots.release()
            if not future.cancelled():
                future.exception()  # retrieved: a cancelled caller no longer awaits it

        running.add_done_callback(done)
        return await asyncio.shield(running)

    def _open(self, tries: int = 1) -> FeedbackStore | None:
        if self.store is not None or time.monotonic() < self._next_try:
            return self.store
        for attempt in range(tries):
            try:
                store = FeedbackStore(self.url)
                secret = self.secret or store.secret()
                rows = store.count()
            except Exception as exc:  # a bad URL, a missing driver, a database down
                problem = f"{type(exc).__name__}: {exc}".replace(self.url, shown(self.url))
                if attempt + 1 < tries:
                    time.sleep(0.2 * (attempt + 1))
                    continue
                self._next_try = time.monotonic() + REOPEN_S
                log.error(
                    "the feedback database %s cannot be opened (%s); /feedback answers 503 "
                    "feedback_unavailable until it can (tried again every %d s at most)",
                    shown(self.url),
                    problem[:500],
                    REOPEN_S,
                )
                return None
            self.secret = secret  # before the store: whoever sees the store sees the secret
            self.store = store
            metrics.feedback_table(rows, self.settings.feedback_max_rows)
            log.info("feedback database %s: %d rows", shown(self.url), rows)
            return store
        return None

    def _secret(self) -> bytes:
        self._with_store(lambda store: None)
        assert self.secret is not None
        return self.secret

    def _with_store(self, fn: Callable[..., T], *args: Any) -> T:
        store = self._open()
        if store is None:
            raise _unavailable()
        try:
            return fn(store, *args)
        except SQLAlchemyError as exc:
            log.error("the feedback database %s failed: %s", shown(self.url), str(exc)[:500])
            raise _unavailable() from None

    def _insert(self, store: FeedbackStore, row: NewFeedback) -> tuple[int, int]:
        s = self.settings
        try:
            row_id = store.add(
                row,
                max_rows=s.feedback_max_rows,
                per_client=s.feedback_per_client,
                window_s=s.feedback_window_s,
            )
        except StoreFull:
            raise Rejected(
                "feedback_full",
                f"the feedback table holds its {s.feedback_max_rows:,} rows "
                "(DIGIT_FEEDBACK_MAX_ROWS): nothing more is stored until the operator makes room",
            ) from None
        except RateLimited:
            raise self._rate_limited(s.feedback_window_s, "rows") from None
        except Duplicate:
            raise Rejected(
                "duplicate_feedback", "feedback for this prediction is stored already"
            ) from None
        return row_id, store.count()

    def _review(self, store: FeedbackStore, row_id: int, label: int) -> str:
        below = self.settings.feedback_queue_below
        try:
            store.review(row_id, label, below)
        except NotFound:
            raise Rejected(
                "not_queued",
                f"row {row_id} is not in the help-label queue: unknown, confident, or labelled "
                "by a helper already",
            ) from None
        with store.engine.connect() as conn:
            query = sa.select(FEEDBACK.c.model_version).where(FEEDBACK.c.id == row_id)
            return str(conn.execute(query).scalar_one())

    def _rate_limited(self, wait_s: float, what: str) -> Rejected:
        s = self.settings
        retry = max(1, math.ceil(wait_s))
        return Rejected(
            "rate_limited",
            f"this client sent {s.feedback_per_client} {what} within {s.feedback_window_s:g} s "
            f"(DIGIT_FEEDBACK_PER_CLIENT, DIGIT_FEEDBACK_WINDOW_S); try again in {retry} s",
            retry_after=retry,
        )
