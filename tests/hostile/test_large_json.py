"""Class 4: large JSON parsed before limits were checked. A batch over DIGIT_MAX_BATCH is refused
from its count, before any pixel is converted, and a refused /predict body is parsed once (the
fast lane used to parse it, give up, and hand it to BentoML to parse again)."""

from __future__ import annotations

import json

import pytest
import requests

from tests.helpers import SERVICE_LIMITS
from tests.hostile.probe import JSON, cpu_seconds, digit_image

pytestmark = pytest.mark.e2e
MAX_BATCH, MAX_BODY = SERVICE_LIMITS["DIGIT_MAX_BATCH"], SERVICE_LIMITS["DIGIT_MAX_BODY_BYTES"]


def test_an_over_limit_batch_is_refused_from_its_count(server):
    reply = requests.post(
        f"{server}/predict_batch", json={"images": [digit_image()] * (MAX_BATCH + 1)}, timeout=30
    )
    assert reply.status_code == 413
    assert reply.json()["reason"] == "batch_too_large"
    assert f"{MAX_BATCH + 1} images" in reply.json()["error"]


def test_many_tiny_items_cost_no_more_than_their_count(served):
    """A body of ~300,000 empty lists is a 'batch' far over the limit: refused from len(), not by
    converting (or validating) each one."""
    url = served["url"]
    # /explain first: a worker serving OpenVINO loads TensorFlow for it, whose ~400,000 objects
    # made every full garbage collection cost ~190 ms until they were frozen too (service/models)
    for _ in range(8):  # new connections: both workers get some
        explained = requests.post(f"{url}/explain", json={"image": digit_image()}, timeout=120)
        assert explained.status_code == 200, explained.text[:200]
    body = json.dumps({"images": [[]] * ((MAX_BODY - 100) // 4)}).encode()
    assert len(body) <= MAX_BODY
    cpu = cpu_seconds(url)
    for _ in range(10):
        reply = requests.post(f"{url}/predict_batch", data=body, headers=JSON, timeout=30)
        assert reply.status_code == 413, reply.text[:200]
        assert reply.json()["reason"] == "batch_too_large"
    per_request = (cpu_seconds(url) - cpu) / 10
    assert per_request < 0.1, f"{per_request * 1000:.0f} ms of CPU per refusal"


def test_a_single_image_body_has_a_small_limit_of_its_own(server):
    """/predict and /explain take one 28×28 image (a few KB as JSON): a 600 KB body for them is
    refused before it is read, without waiting for DIGIT_MAX_BODY_BYTES."""
    body = json.dumps({"image": digit_image(), "pad": "x" * 600_000}).encode()
    assert len(body) < MAX_BODY
    for endpoint in ("/predict", "/explain"):
        reply = requests.post(f"{server}{endpoint}", data=body, headers=JSON, timeout=30)
        assert reply.status_code == 413, reply.text[:200]
        assert reply.json()["reason"] == "too_large"
