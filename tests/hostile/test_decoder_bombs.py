"""Class 1: small files that cost a decoder minutes of CPU. A JPEG of thousands of scans is refused
from a count of its markers; an RLE BMP that Pillow pads out in Python (seconds for a few KB) is
stopped at DIGIT_DECODE_TIMEOUT_S in its child process, and the worker keeps serving meanwhile."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.helpers import SERVICE_LIMITS
from tests.hostile.payloads import bmp_rle_bomb, jpeg_scan_bomb
from tests.hostile.probe import latencies_while, p99, server_errors

pytestmark = pytest.mark.e2e
TIMEOUT_S = SERVICE_LIMITS["DIGIT_DECODE_TIMEOUT_S"]  # the test servers'; the bomb takes > 2x


def upload(url: str, data: bytes, name: str) -> requests.Response:
    return requests.post(f"{url}/predict_image", files={"image": (name, data)}, timeout=60)


def test_a_jpeg_of_many_scans_is_refused_before_it_is_decoded(server):
    bomb = jpeg_scan_bomb(side=4000, scans=300)  # ~15 s of one core to decode in full
    assert len(bomb) < 1_000_000
    started = time.monotonic()
    reply = upload(server, bomb, "scans.jpg")
    took = time.monotonic() - started
    assert reply.status_code == 413, reply.text
    assert reply.json()["reason"] == "too_costly"
    assert "scans" in reply.json()["error"] and "baseline" in reply.json()["error"]
    assert took < 2.0, f"{took:.1f} s: it was decoded"


def test_an_rle_bmp_bomb_is_stopped_at_the_decode_timeout(server):
    bomb = bmp_rle_bomb(width=40_000, height=1000)  # 4 KB, ~3.5 s of GIL-holding Python (Zen 5)
    errors = server_errors(server)
    started = time.monotonic()
    reply = upload(server, bomb, "rle.bmp")
    took = time.monotonic() - started
    assert reply.status_code == 413, reply.text
    assert reply.json()["reason"] == "too_costly"
    assert "DIGIT_DECODE_TIMEOUT_S" in reply.json()["error"]
    assert took < TIMEOUT_S + 3.0, f"{took:.1f} s"
    assert server_errors(server) == errors


def test_a_flood_of_bombs_leaves_predict_answering(served):
    """Six bombs per worker used to fill the thread pool and pin both cores; now they queue for
    one decoder per worker (the rest get a 503), and /predict stays fast."""
    url = served["url"]
    bomb = bmp_rle_bomb(width=40_000, height=1000)
    statuses: list[int] = []

    def attack() -> None:
        with ThreadPoolExecutor(12) as pool:
            statuses.extend(
                r.status_code for r in pool.map(lambda _: upload(url, bomb, "b.bmp"), range(12))
            )

    took = latencies_while(url, attack)
    assert set(statuses) <= {413, 503}, statuses
    assert 413 in statuses
    assert p99(took) < 0.25, f"p99 {p99(took) * 1000:.0f} ms over {len(took)} requests"
