"""Class 10: `true`, `false` and numeric strings were accepted as pixel values (pydantic's lax
mode coerced them). Pixels are JSON numbers, on both lanes and every grid endpoint."""

from __future__ import annotations

import pytest
import requests

from tests.hostile.probe import digit_image

pytestmark = pytest.mark.e2e


def with_cell(value: object) -> list[list[object]]:
    image: list[list[object]] = digit_image()
    image[14][14] = value
    return image


@pytest.mark.parametrize("value", [True, False, "12", "0", "1e2", None], ids=repr)
@pytest.mark.parametrize("endpoint", ["/predict", "/predict_batch", "/explain"])
def test_only_numbers_are_pixels(server, endpoint, value):
    image = with_cell(value)
    body = {"images": [digit_image(), image]} if endpoint == "/predict_batch" else {"image": image}
    reply = requests.post(f"{server}{endpoint}", json=body, timeout=30)
    assert reply.status_code == 400, reply.text[:300]
    assert reply.json()["reason"] == "not_numbers"
    assert "[14][14]" in reply.json()["error"]


@pytest.mark.parametrize("value", [7, 7.0, 7.5])
def test_ints_and_floats_still_are(server, value):
    reply = requests.post(f"{server}/predict", json={"image": with_cell(value)}, timeout=30)
    assert reply.status_code == 200, reply.text[:300]
