"""The two small ASGI layers in front of BentoML: the /predict fast lane and connection recycling.

Driven with hand-made ASGI messages against a recording app standing in for BentoML (the real
server runs them in tests/e2e/test_service.py)."""

from __future__ import annotations

import asyncio

import pytest

from service.http import fastlane
from service.http.fastlane import FastLane
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


def call(app, path="/predict", body=b"{}", chunks=1, headers=None, method="POST"):
    """One request through `app`; returns (status, headers, body) of its reply."""
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
    asyncio.run(app(scope, receive, send))
    start, rest = sent[0], sent[1:]
    return start["status"], dict(start["headers"]), b"".join(m.get("body", b"") for m in rest)


@pytest.fixture
def lane():
    answered = []

    async def handler(body: bytes):
        answered.append(body)
        if body == b'{"mine":1}':
            return b'{"ok":true}', [(b"x-model-version", b"7")]
        if body == b'{"boom":1}':
            raise RuntimeError("the model failed")
        return None

    fastlane.register("/test-lane", handler)
    yield answered
    fastlane._HANDLERS.pop("/test-lane")


def test_the_fast_lane_answers_what_its_handler_accepts(lane):
    behind = Behind()
    status, headers, body = call(FastLane(behind), "/test-lane", b'{"mine":1}', chunks=3)
    assert (status, body) == (200, b'{"ok":true}')
    assert headers[b"content-type"] == b"application/json"
    assert headers[b"content-length"] == b"11"
    assert headers[b"x-model-version"] == b"7"
    assert lane == [b'{"mine":1}']  # the chunks were joined before the handler saw them
    assert behind.bodies == []  # BentoML never saw it


def test_what_the_handler_declines_reaches_the_api_byte_for_byte(lane):
    behind = Behind()
    body = b'{"image": "not mine", "pad": "' + b"x" * 5000 + b'"}'
    status, headers, reply = call(FastLane(behind), "/test-lane", body, chunks=4)
    assert (status, reply, headers[b"x-by"]) == (201, b"api", b"api")
    assert lane == [body]
    assert behind.bodies == [body]


def test_a_failing_handler_leaves_the_answer_to_the_api(lane):
    behind = Behind()
    status, _, reply = call(FastLane(behind), "/test-lane", b'{"boom":1}')
    assert (status, reply) == (201, b"api")
    assert behind.bodies == [b'{"boom":1}']


@pytest.mark.parametrize(
    ("path", "method", "headers"),
    [
        ("/other", "POST", None),  # no handler for the path
        ("/test-lane", "GET", None),
        ("/test-lane", "POST", [(b"content-type", b"multipart/form-data; boundary=x")]),
    ],
)
def test_other_requests_go_straight_to_the_api(lane, path, method, headers):
    behind = Behind()
    status, _, _ = call(FastLane(behind), path, b'{"mine":1}', headers=headers, method=method)
    assert status == 201
    assert lane == []  # the handler was not asked
    assert behind.bodies == [b'{"mine":1}']


def test_json_with_a_charset_or_without_a_content_type_takes_the_lane(lane):
    for headers in ([(b"content-type", b"application/json; charset=utf-8")], []):
        status, _, _ = call(FastLane(Behind()), "/test-lane", b'{"mine":1}', headers=headers)
        assert status == 200
    assert len(lane) == 2


def test_every_nth_response_of_a_worker_closes_its_connection():
    recycle = Recycle(Behind(), every=3)
    closes = [call(recycle)[1].get(b"connection") for _ in range(7)]
    assert closes == [None, None, b"close", None, None, b"close", None]
    status, headers, body = call(recycle)  # the 8th: untouched otherwise
    assert (status, body, headers[b"x-by"]) == (201, b"api", b"api")


def test_recycling_off_keeps_every_connection_open():
    recycle = Recycle(Behind(), every=0)
    assert all(b"connection" not in call(recycle)[1] for _ in range(5))
