"""`/metrics` stays bounded under a path scan: BentoML labels its request metrics with the path,
so every distinct 404 path used to add series that stay until restart; now every path no route
serves shares one label (service/http/paths.py), and real endpoints keep their own counts."""

from __future__ import annotations

import http.client
import re
import time
import uuid
from urllib.parse import urlsplit

import pytest
import requests

from service.http.paths import UNMATCHED
from tests.helpers import REPO

pytestmark = pytest.mark.e2e
DIGIT = (REPO / "examples" / "digit-7.json").read_bytes()
SCAN = 40  # distinct paths per kind of miss


def series(url: str) -> dict[str, float]:
    """Every series /metrics exposes (name and labels), with its value."""
    text = requests.get(f"{url}/metrics", timeout=30).text
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


def requests_to(found: dict[str, float], endpoint: str, status: int) -> float:
    """bentoml_service_request_total for one endpoint and status, over all workers."""
    pattern = re.compile(
        r"bentoml_service_request_total\{.*"
        rf'endpoint="{re.escape(endpoint)}".*http_response_code="{status}"'
    )
    return sum(value for name, value in found.items() if pattern.match(name))


def scan(url: str, tag: str) -> int:
    """A scanner's misses, each a 404: new paths at the root (GET and POST), under both static
    mounts, and past a real endpoint. Returns how many were sent."""
    kinds = ["/{}", "/static/{}.js", "/static_content/{}.css", "/model/{}"]
    sent = 0
    for i in range(SCAN):
        path = kinds[i % len(kinds)].format(f"{tag}-{i}")
        send = requests.post if i % 8 == 4 else requests.get
        assert send(f"{url}{path}", timeout=30).status_code == 404, path
        sent += 1
    return sent


def test_distinct_404_paths_add_no_series(served):
    url = served["url"]
    scan(url, f"warm-{uuid.uuid4().hex[:8]}")  # the first misses may create the one shared label
    before = series(url)
    tag = f"scan-{uuid.uuid4().hex[:8]}"
    sent = scan(url, tag)
    after = series(url)
    assert set(after) - set(before) == set(), "404 paths added series to /metrics"
    assert not [name for name in after if tag in name]
    # and the misses are still counted, under the one label
    grew = requests_to(after, UNMATCHED, 404) - requests_to(before, UNMATCHED, 404)
    assert grew == sent


def test_real_endpoints_keep_their_own_counts(served):
    url = served["url"]
    before = series(url)
    reply = requests.post(
        f"{url}/predict", data=DIGIT, headers={"Content-Type": "application/json"}, timeout=30
    )
    assert reply.status_code == 200
    assert requests.get(f"{url}/model", timeout=30).status_code == 200
    # One file under two spellings is one series. http.client sends a path as it is; the
    # connection stays open until the counts are read, since a file's count lands after its
    # last (empty) body message, which a client that hung up at once would cancel.
    files = http.client.HTTPConnection(urlsplit(url).netloc, timeout=30)
    for path in ("/static/page.js", "/static/./page.js"):
        files.request("GET", path)
        answer = files.getresponse()
        assert answer.status == 200 and answer.read()
    assert requests.get(f"{url}/predict", timeout=30).status_code == 405  # a real path still
    expected = {("/predict", 200): 1, ("/model", 200): 1, ("/static/page.js", 200): 2}
    expected[("/predict", 405)] = 1
    deadline = time.monotonic() + 10
    while True:
        after = series(url)
        grew = {key: requests_to(after, *key) - requests_to(before, *key) for key in expected}
        if grew == expected or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    files.close()
    assert grew == expected, grew
    assert not [name for name in after if "/static/./" in name]
