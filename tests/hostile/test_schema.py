"""Class 12: the OpenAPI spec says what is accepted (28 rows of 28 numbers in 0-255, the scale
values, file fields, the limits), and a property-based fuzzer driven by it (schemathesis, positive
and negative cases for every operation) gets no server error."""

from __future__ import annotations

import os
import subprocess

import pytest
import requests

from tests.helpers import BIN, SERVICE_LIMITS
from tests.hostile.probe import server_errors

pytestmark = pytest.mark.e2e
MAX_BATCH = SERVICE_LIMITS["DIGIT_MAX_BATCH"]


@pytest.fixture(scope="module")
def spec(served) -> dict:
    return requests.get(f"{served['url']}/docs.json", timeout=30).json()


def body_schema(spec: dict, path: str, media: str) -> dict:
    return spec["paths"][path]["post"]["requestBody"]["content"][media]["schema"]


def test_the_spec_states_the_grid_its_values_and_the_batch_limit(spec):
    for path, field in (("/predict", "image"), ("/explain", "image")):
        grid = body_schema(spec, path, "application/json")["properties"][field]
        assert (grid["minItems"], grid["maxItems"]) == (28, 28)
        row = grid["items"]
        assert (row["minItems"], row["maxItems"]) == (28, 28)
        assert row["items"] == {"type": "number", "minimum": 0, "maximum": 255}
    batch = body_schema(spec, "/predict_batch", "application/json")["properties"]["images"]
    assert (batch["minItems"], batch["maxItems"]) == (1, MAX_BATCH)
    scale = body_schema(spec, "/predict", "application/json")["properties"]["scale"]
    assert set(scale["enum"]) == {"0-255", "0-1"}


def test_the_spec_states_the_file_fields_and_their_limits(spec):
    for path, field in (("/predict_image", "image"), ("/predict_npy", "array")):
        schema = body_schema(spec, path, "multipart/form-data")
        assert schema["required"] == [field]
        prop = schema["properties"][field]
        assert (prop["type"], prop["format"]) == ("string", "binary")
        assert "bytes" in prop["description"]
    canvas = body_schema(spec, "/predict_canvas", "application/json")["properties"]["data_url"]
    assert canvas["pattern"].startswith("^(?i:data:image/")


def test_a_fuzzer_driven_by_the_spec_finds_no_server_error(served, tmp_path):
    """schemathesis' fuzzing phase, positive and negative cases, a fixed seed, bounded in
    examples and time. (Its coverage phase is left out: it spends minutes of its own CPU
    enumerating the nested 28×28 arrays before it sends anything.)"""
    url = served["url"]
    errors = server_errors(url)
    env = {**os.environ, "SCHEMATHESIS_TELEMETRY": "false", "NO_COLOR": "1"}
    cmd = [
        str(BIN / "schemathesis"), "run", f"{url}/docs.json",
        "--checks", "not_a_server_error", "--phases", "examples,fuzzing", "--mode", "all",
        "--max-examples", "15", "--seed", "1", "--max-time", "120", "--request-timeout", "30",
        "--generation-database", "none", "--no-color",
    ]  # fmt: skip
    run = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert "generated" in run.stdout and " passed" in run.stdout
    assert server_errors(url) == errors
