"""Class 3: a body of bad cells. Pydantic made one error per cell, BentoML logged each request with
a traceback and the old guard re-parsed and re-dumped them all on the event loop: a reply of
hundreds of MB from 8 MiB. Now the first bad cell is the one reported, in a small reply, with no
traceback in the log, whatever the body holds."""

from __future__ import annotations

import json
import time

import pytest
import requests

from service.http.bodies import GRID_BODY_BYTES
from tests.helpers import SERVICE_LIMITS
from tests.hostile.probe import JSON, cpu_seconds, log_size, server_errors

pytestmark = pytest.mark.e2e
MAX_BODY = SERVICE_LIMITS["DIGIT_MAX_BODY_BYTES"]


def bad_cells(endpoint: str, cell: object) -> bytes:
    """As many bad cells as fit in the endpoint's body limit: 28×28 grids of `cell`."""
    budget = (MAX_BODY if endpoint == "/predict_batch" else GRID_BODY_BYTES) - 1000
    grid = [[cell] * 28 for _ in range(28)]
    one = len(json.dumps(grid)) + 2
    if endpoint == "/predict_batch":
        return json.dumps({"images": [grid] * (budget // one)}).encode()
    # a single image field, padded with more rows of bad cells than any image has
    rows = budget // (len(json.dumps([cell] * 28)) + 2)
    return json.dumps({"image": [[cell] * 28 for _ in range(rows)]}).encode()


@pytest.mark.parametrize("endpoint", ["/predict", "/predict_batch", "/explain"])
@pytest.mark.parametrize("cell", ["x", None, True, [], {"a": 1}], ids=repr)
def test_a_body_of_bad_cells_costs_one_small_refusal(served, endpoint, cell):
    url, log = served["url"], served["root"] / "server.log"
    body = bad_cells(endpoint, cell)
    assert 100_000 < len(body) <= MAX_BODY
    errors, logged, cpu = server_errors(url), log_size(log), cpu_seconds(url)
    started = time.monotonic()
    reply = requests.post(f"{url}{endpoint}", data=body, headers=JSON, timeout=30)
    took = time.monotonic() - started
    assert 400 <= reply.status_code < 500, reply.text[:300]
    assert len(reply.content) < 2000, f"{len(reply.content):,}-byte reply"
    assert reply.json()["reason"] in {"not_numbers", "wrong_shape", "batch_too_large"}
    assert took < 2.0
    assert cpu_seconds(url) - cpu < 1.0
    assert log_size(log) - logged < 2000, "the refusal was logged at length"
    assert server_errors(url) == errors


def test_the_reply_names_the_first_bad_cell(server):
    image = [[0] * 28 for _ in range(28)]
    image[3][7] = "12"
    image[20][1] = True
    reply = requests.post(f"{server}/predict", json={"image": image}, timeout=30)
    assert reply.status_code == 400
    body = reply.json()
    assert body["reason"] == "not_numbers"
    assert "[3][7]" in body["error"] and "a string" in body["error"]
    assert "[20][1]" not in body["error"]
