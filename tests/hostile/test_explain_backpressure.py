"""Class 7: /explain skipped the batcher and its 503 and ran eager TensorFlow in the thread pool
that pictures decoded in, with no cap. Now a bounded number run at once, in threads of their own,
a bounded number wait, and the rest are told to come back (503 with Retry-After)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.hostile.probe import digit_image, latencies_while, p99, server_errors

pytestmark = pytest.mark.e2e


def test_a_flood_of_explanations_is_bounded_and_predict_keeps_answering(served):
    url = served["url"]
    image = digit_image()
    errors = server_errors(url)
    replies: list[requests.Response] = []

    def explain(_: int) -> requests.Response:
        return requests.post(f"{url}/explain", json={"image": image}, timeout=60)

    def attack() -> None:
        with ThreadPoolExecutor(48) as pool:
            replies.extend(pool.map(explain, range(96)))

    took = latencies_while(url, attack)
    statuses = [r.status_code for r in replies]
    assert set(statuses) <= {200, 503}, statuses
    assert 200 in statuses and 503 in statuses, "48 at once should overflow 2 × (1 + 8)"
    busy = next(r for r in replies if r.status_code == 503)
    assert busy.json()["reason"] == "overloaded"
    assert busy.headers["Retry-After"] == "1"
    assert "explanations" in busy.json()["error"]
    assert server_errors(url) == errors
    assert p99(took) < 0.25, f"p99 {p99(took) * 1000:.0f} ms"
