"""Two small ASGI layers in front of BentoML: the /predict fast lane and connection recycling.

Driven with hand-made ASGI messages against a recording app standing in for BentoML (the real
server runs them in tests/e2e/test_service.py)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from service.http import fastlane
from service.http.fastlane import FastLane
from service.http.guard import CHECKED
from service.http.recycle import Recycle


class Behind:
    """The app behind the layer: records what reached it and answers 201 'api'."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    async def __call__(self, scope, receive, send) -> None:
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        self.bodies.append(body)
        await send({"type": "http.response.start", "status": 201, "headers": [(b"x-by", b"api")]})
        await send({"type": "http.response.body", "body": b"api"})


def call(app, path="/predict", body=b"{}", chunks=1, headers=None, method="POST", checked=None):
    """One request through `app`; returns (status, headers, body) of its reply. `checked` is what
    the Guard would have left in the scope (the images it read from the body)."""
    size = max(1, -(-len(body) // chunks))  # `chunks` pieces in order, as a client streams them
    pieces = [body[i : i + size] for i in range(0, len(body), size)] or [b""]
    queue = [
        {"type": "http.request", "body": p, "more_body": i < len(pieces) - 1}
        for i, p in enumerate(pieces)
    ]
    sent = []

    async def receive():
        return queue.pop(0) if queue else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "headers": headers if headers is not None else [(b"content-type", b"application/json")],
    }
    if checked is not None:
        scope[CHECKED] = checked
    asyncio.run(app(scope, receive, send))
    start, rest = sent[0], sent[1:]
    return start["status"], dict(start["headers"]), b"".join(m.get("body", b"") for m in rest)


MINE, BOOM = np.full((1, 28, 28), 1, np.uint8), np.full((1, 28, 28), 2, np.uint8)


@pytest.fixture
def lane():
    answered = []

    async def handler(images: np.ndarray):
        answered.append(int(images[0, 0, 0]))
        if images is MINE:
            return b'{"ok":true}', [(b"x-model-version", b"7")]
        if images is BOOM:
            raise RuntimeError("the model failed")
        return None

    fastlane.register("/test-lane", handler)
    yield answered
    fastlane._HANDLERS.pop("/test-lane")


def test_the_fast_lane_answers_what_the_guard_checked(lane):
    behind = Behind()
    status, headers, body = call(FastLane(behind), "/test-lane", b'{"x":1}', checked=MINE)
    assert (status, body) == (200, b'{"ok":true}')
    assert headers[b"content-type"] == b"application/json"
    assert headers[b"content-length"] == b"11"
    assert headers[b"x-model-version"] == b"7"
    assert lane == [1]  # the handler got the checked images, not the body
    assert behind.bodies == []  # BentoML never saw it


def test_what_the_handler_declines_reaches_the_api_byte_for_byte(lane):
    behind = Behind()
    body = b'{"image": "x", "pad": "' + b"x" * 5000 + b'"}'
    declined = np.zeros((1, 28, 28), np.uint8)
    status, headers, reply = call(FastLane(behind), "/test-lane", body, chunks=4, checked=declined)
    assert (status, reply, headers[b"x-by"]) == (201, b"api", b"api")
    assert lane == [0]
    assert behind.bodies == [body]  # the lane did not read the body


def test_a_failing_handler_leaves_the_answer_to_the_api(lane):
    behind = Behind()
    status, _, reply = call(FastLane(behind), "/test-lane", b'{"boom":1}', checked=BOOM)
    assert (status, reply) == (201, b"api")
    assert behind.bodies == [b'{"boom":1}']


@pytest.mark.parametrize(
    ("path", "method", "checked"),
    [
        ("/other", "POST", MINE),  # no handler for the path
        ("/test-lane", "GET", MINE),
        ("/test-lane", "POST", None),  # nothing checked: not a body the Guard read as images
    ],
)
def test_other_requests_go_straight_to_the_api(lane, path, method, checked):
    behind = Behind()
    status, _, _ = call(FastLane(behind), path, b'{"mine":1}', method=method, checked=checked)
    assert status == 201
    assert lane == []  # the handler was not asked
    assert behind.bodies == [b'{"mine":1}']


def test_every_nth_response_of_a_worker_closes_its_connection():
    recycle = Recycle(Behind(), every=3)
    closes = [call(recycle)[1].get(b"connection") for _ in range(7)]
    assert closes == [None, None, b"close", None, None, b"close", None]
    status, headers, body = call(recycle)  # the 8th: untouched otherwise
    assert (status, body, headers[b"x-by"]) == (201, b"api", b"api")


def test_recycling_off_keeps_every_connection_open():
    recycle = Recycle(Behind(), every=0)
    assert all(b"connection" not in call(recycle)[1] for _ in range(5))
