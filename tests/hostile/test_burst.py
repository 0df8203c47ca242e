"""All the worst payloads at once: while decoder bombs, inflating PNGs, bodies of bad cells,
oversize bodies and a flood of explanations are in flight, a valid /predict on the same server
still answers with a p99 under 250 ms, nothing is a server error, and the server's memory grows by
less than its decoders' limit.

250 ms: a /predict alone takes ~5-10 ms here; the bound leaves room for the 2 cores being shared
with the attack's own client threads and the niced decoders, and is still far below the seconds
(bombs) to minutes (scan floods) a single attack cost before."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from service.settings import Settings
from tests.helpers import SERVICE_LIMITS
from tests.hostile.payloads import bmp_rle_bomb, jpeg_scan_bomb, png_inflation
from tests.hostile.probe import (
    JSON,
    PeakMemory,
    digit_image,
    latencies_while,
    p99,
    rss_bytes,
    server_errors,
)

pytestmark = pytest.mark.e2e
DEFAULTS = Settings()
MAX_BODY = SERVICE_LIMITS["DIGIT_MAX_BODY_BYTES"]


def test_the_worst_payloads_together_leave_predict_answering(served):
    url = served["url"]
    pictures = [bmp_rle_bomb(), jpeg_scan_bomb(4000, 300), png_inflation(6000, 6000, "RGBA")]
    bad_batch = json.dumps({"images": [[["x"] * 28] * 28] * 40}).encode()
    image = digit_image()

    def one(i: int) -> int:
        kind = i % 5
        if kind < 3:
            files = {"image": (f"p{kind}", pictures[kind])}
            return requests.post(f"{url}/predict_image", files=files, timeout=60).status_code
        if kind == 3:
            reply = requests.post(f"{url}/predict_batch", data=bad_batch, headers=JSON, timeout=60)
            return reply.status_code
        return requests.post(f"{url}/explain", json={"image": image}, timeout=60).status_code

    statuses: list[int] = []

    def attack() -> None:
        with ThreadPoolExecutor(24) as pool:
            statuses.extend(pool.map(one, range(60)))
        oversize = requests.post(
            f"{url}/predict_batch", data=b"[" * (MAX_BODY + 1), headers=JSON, timeout=60
        )
        statuses.append(oversize.status_code)

    errors, before = server_errors(url), rss_bytes(url)
    with PeakMemory(url) as memory:
        took = latencies_while(url, attack)
    assert all(s < 500 or s == 503 for s in statuses), statuses
    assert server_errors(url) == errors
    bound = DEFAULTS.workers * DEFAULTS.decode_memory_mb * 2**20
    assert memory.peak - before < bound, f"grew {(memory.peak - before) / 2**20:.0f} MiB"
    assert p99(took) < 0.25, f"p99 {p99(took) * 1000:.0f} ms over {len(took)} requests"
