"""Class 11: an oversize body was answered 413 before it was read and the connection closed at
once, so clients that send the whole body before reading (Python's urllib) saw a connection reset.
Now a bounded part of the body is drained first: they read the refusal. A body that stalls is
answered 408 (a client fault), not BentoML's 504."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from urllib.parse import urlparse

import pytest

from service.http.guard import DRAIN_BYTES
from tests.helpers import SERVICE_LIMITS
from tests.hostile.probe import server_errors

pytestmark = pytest.mark.e2e
MAX_BODY = SERVICE_LIMITS["DIGIT_MAX_BODY_BYTES"]
BODY_TIMEOUT_S = SERVICE_LIMITS["DIGIT_BODY_TIMEOUT_S"]


def urllib_post(url: str, body: bytes, content_type: str) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.parametrize("size", [MAX_BODY + 1, 3 * MAX_BODY, DRAIN_BYTES // 2])
def test_urllib_reads_the_413_of_an_oversize_body(server, size):
    body = b"{" + b" " * (size - 2) + b"}"
    status, reply = urllib_post(f"{server}/predict_batch", body, "application/json")
    assert status == 413
    assert reply["reason"] == "too_large"


def test_urllib_reads_the_415_of_an_unread_body(server):
    status, reply = urllib_post(f"{server}/predict", b"x" * 500_000, "text/plain")
    assert status == 415
    assert reply["reason"] == "unsupported_media"


def test_a_stalled_body_is_a_408_within_the_body_timeout(server):
    """Headers promise 1,000 bytes, 10 arrive, then nothing: refused at DIGIT_BODY_TIMEOUT_S,
    before BentoML's 30 s request timeout would have answered 504 and counted a server error."""
    errors = server_errors(server)
    address = urlparse(server)
    started = time.monotonic()
    with socket.create_connection((address.hostname, address.port), timeout=60) as sock:
        sock.sendall(
            b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n" + b'{"image": '
        )
        reply = sock.recv(65536).decode("latin-1")
    took = time.monotonic() - started
    assert reply.startswith("HTTP/1.1 408"), reply[:200]
    assert "slow_body" in reply
    assert BODY_TIMEOUT_S - 1 < took < BODY_TIMEOUT_S + 5
    assert server_errors(server) == errors
