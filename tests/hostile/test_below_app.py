"""Below the app: a request's head is bounded in size and in time, and a worker's connections in
number, by the server itself (service/http/server.py), over raw sockets against a real
`bentoml serve`. Each refusal must come within a bound, and the worker must still predict."""

from __future__ import annotations

import json
import select
import socket
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
import requests

from tests.helpers import REPO, free_port, second_server_env, serve_cmd, serving

pytestmark = pytest.mark.e2e
DIGIT = (REPO / "examples" / "digit-7.json").read_bytes()
BOUND_S = 15  # "does not hang": far above any refusal's time, far below a hung test's
LIMIT = 16 * 1024  # the default DIGIT_MAX_HEADER_BYTES, which `served` runs with
# The second server: one worker (so its cap is the whole cap), a short header timeout, 4 connections
TIMEOUT_S, CAP = 2, 4


@pytest.fixture(scope="module")
def small(served) -> Iterator[str]:
    env = {
        **second_server_env(served["env"], served["root"] / "home-below"),
        "DIGIT_WORKERS": "1",
        "DIGIT_HEADER_TIMEOUT_S": str(TIMEOUT_S),
        "DIGIT_MAX_CONNECTIONS": str(CAP),
    }
    port = free_port()
    cmd = serve_cmd("service.service:DigitClassifier", port)
    with serving(cmd, served["dir"], env, port, served["root"] / "below.log") as url:
        yield url


def connect(url: str) -> socket.socket:
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=BOUND_S)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def host(url: str) -> bytes:
    return f"Host: {urlsplit(url).netloc}\r\n".encode()


def read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (or BOUND_S passes)."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except TimeoutError:
        pass
    return data


def read_response(sock: socket.socket) -> bytes:
    """One response on a kept-alive connection: its head and its Content-Length body."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(dict(_headers(head)).get(b"content-length", b"0"))
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def _headers(head: bytes) -> list[tuple[bytes, bytes]]:
    lines = head.split(b"\r\n")[1:]
    return [(k.strip().lower(), v.strip()) for k, _, v in (line.partition(b":") for line in lines)]


def parse(reply: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
    assert reply.startswith(b"HTTP/1.1 "), reply[:200]
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split()[1]), dict(_headers(head)), body


def assert_refused(reply: bytes, status: int, reason: str) -> None:
    code, headers, body = parse(reply)
    assert (code, headers.get(b"x-reject-reason")) == (status, reason.encode()), reply[:300]
    assert headers[b"connection"] == b"close"
    payload = json.loads(body)
    assert payload["reason"] == reason and "DIGIT_" in payload["error"]


def assert_predicts(url: str) -> None:
    reply = requests.post(
        f"{url}/predict", data=DIGIT, headers={"Content-Type": "application/json"}, timeout=30
    )
    assert reply.status_code == 200, reply.text
    assert 0 <= reply.json()["digit"] <= 9


def refusals(url: str, reason: str) -> float:
    """digit_rejections_total for `reason`, all endpoints, summed over the workers."""
    text = requests.get(f"{url}/metrics", timeout=30).text
    prefix = f'digit_rejections_total{{endpoint="",reason="{reason}"}}'
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(prefix))


# --- the size of the head -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "head"),
    [
        ("one huge header", b"X-Filler: " + b"a" * (4 * LIMIT) + b"\r\n"),
        ("many small headers", b"".join(b"X-H%d: v\r\n" % i for i in range(LIMIT // 6))),
    ],
)
def test_oversized_headers_are_refused_431_and_the_worker_still_predicts(served, shape, head):
    url = served["url"]
    before = refusals(url, "headers_too_large")
    with connect(url) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /livez HTTP/1.1\r\n" + host(url) + head + b"\r\n")
        reply = read_all(sock)
        assert time.monotonic() - started < BOUND_S
    assert_refused(reply, 431, "headers_too_large")
    assert refusals(url, "headers_too_large") == before + 1
    assert_predicts(url)


def test_an_oversized_url_is_refused_414_and_the_worker_still_predicts(served):
    url = served["url"]
    with connect(url) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /?q=" + b"7" * (4 * LIMIT) + b" HTTP/1.1\r\n" + host(url) + b"\r\n")
        reply = read_all(sock)
        assert time.monotonic() - started < BOUND_S
    assert_refused(reply, 414, "url_too_long")
    assert_predicts(url)


def test_a_head_under_the_limit_is_served(served):
    """The limit is on what is sent, not set so tight that a heavy but real head is refused:
    12 KiB of cookies, with a /predict body, on a connection that stays usable."""
    url = served["url"]
    cookie = b"Cookie: session=" + b"c" * (12 * 1024) + b"\r\n"
    request = (
        b"POST /predict HTTP/1.1\r\n"
        + host(url)
        + cookie
        + b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(DIGIT)
        + DIGIT
    )
    with connect(url) as sock:
        for _ in range(2):  # and the next request on the same connection too
            sock.sendall(request)
            status, _, body = parse(read_response(sock))
            assert status == 200, body[:300]


# --- the time of the head -----------------------------------------------------------------------


def test_a_dribbled_head_is_cut_off_with_408_and_the_worker_still_predicts(small):
    """Slowloris: one byte of a header every 0.1 s, forever; the server answers 408 and closes
    once DIGIT_HEADER_TIMEOUT_S has passed since the request began."""
    with connect(small) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /livez HTTP/1.1\r\n" + host(small) + b"X-Slow: ")
        reply = b""
        while time.monotonic() - started < BOUND_S:
            readable, _, _ = select.select([sock], [], [], 0.1)
            if readable:
                reply = read_all(sock)
                break
            try:
                sock.send(b"z")
            except OSError:  # closed under us: the 408 was lost, which the test would show
                break
        elapsed = time.monotonic() - started
    assert elapsed < BOUND_S, "the dribbling client was never cut off"
    assert_refused(reply, 408, "header_timeout")
    assert_predicts(small)


def test_a_connection_that_sends_nothing_is_closed(small):
    with connect(small) as sock:
        started = time.monotonic()
        assert read_all(sock) == b""  # closed without a word: there was no request to answer
        assert time.monotonic() - started < BOUND_S


# --- the number of connections ------------------------------------------------------------------


def test_connections_over_the_cap_get_503_and_a_fresh_one_works_after(small):
    livez = b"GET /livez HTTP/1.1\r\n" + host(small) + b"\r\n"
    held = []
    try:
        for _ in range(CAP):  # CAP connections the worker keeps alive (for 5 s, BentoML's)
            sock = connect(small)
            sock.sendall(livez)
            assert parse(read_response(sock))[0] == 200
            held.append(sock)
        for _ in range(3):
            with connect(small) as extra:
                started = time.monotonic()
                extra.sendall(livez)
                reply = read_all(extra)
                assert time.monotonic() - started < BOUND_S
            assert_refused(reply, 503, "too_many_connections")
            assert parse(reply)[1][b"retry-after"] == b"1"
        held[0].sendall(livez)  # the connections it holds are still served
        assert parse(read_response(held[0]))[0] == 200
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + BOUND_S
    while True:  # the closes reach the worker within moments
        try:
            assert_predicts(small)
            break
        except (AssertionError, requests.ConnectionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
