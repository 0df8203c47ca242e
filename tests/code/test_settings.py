"""The service's settings: one DIGIT_* variable per field, defaults, a clear stop on bad values."""

from __future__ import annotations

import re

import pytest
from pydantic import SecretStr

from service.inputs.limits import Limits
from service.settings import CORES, Settings
from tests.helpers import REPO


def test_defaults_without_any_variable():
    s = Settings.from_env({})
    assert s == Settings()
    assert (s.model_tag, s.workers, s.fast_lane, s.access_log) == (
        "mnist-cnn:latest",
        2,
        True,
        False,
    )
    assert s.threads == max(1, CORES // 2) and s.parallel == max(1, CORES // s.threads)
    assert s.limits == Limits()


def test_every_field_is_read_from_its_variable():
    values = {
        "model_tag": ("mnist-cnn:v3-abc", "mnist-cnn:v3-abc"),
        "workers": ("3", 3),
        "tf_threads": ("2", 2),
        "max_body_bytes": ("1000", 1000),
        "max_upload_bytes": ("900", 900),
        "max_pixels": ("800", 800),
        "max_batch": ("7", 7),
        "model_batch": ("64", 64),
        "max_queue": ("0", 0),
        "decoders": ("2", 2),
        "decode_timeout_s": ("1.5", 1.5),
        "decode_memory_mb": ("512", 512),
        "explainers": ("2", 2),
        "max_waiting": ("0", 0),
        "body_timeout_s": ("5", 5.0),
        "access_log": ("1", True),
        "keepalive_requests": ("0", 0),
        "trace_predictions": ("true", True),
        "fast_lane": ("0", False),
        "max_header_bytes": ("8192", 8192),
        "header_timeout_s": ("2.5", 2.5),
        "max_connections": ("4", 4),
        "reload_interval_s": ("0", 0.0),
        "canary_share": ("0.1", 0.1),
        "shadow_share": ("1", 1.0),
        "shadow_backlog": ("64", 64),
        "drain_s": ("5", 5.0),
        "stuck_after_s": ("10", 10.0),
        "host": ("0.0.0.0", "0.0.0.0"),
        "allowed_hosts": ("digits.example,10.0.0.5", ("digits.example", "10.0.0.5")),
        "api_key": ("k" * 16, SecretStr("k" * 16)),
        "feedback": ("0", False),
        "feedback_db": (
            "postgresql+psycopg2://u:p@db/feedback",
            "postgresql+psycopg2://u:p@db/feedback",
        ),
        "feedback_secret": ("s" * 16, SecretStr("s" * 16)),
        "feedback_max_age_s": ("60", 60.0),
        "feedback_per_client": ("3", 3),
        "feedback_window_s": ("5", 5.0),
        "feedback_max_rows": ("5", 5),
        "feedback_queue_below": ("0.5", 0.5),
        "runtime": ("openvino-int8", "openvino-int8"),
    }
    assert set(values) == set(Settings.model_fields)  # a new field gets a case here
    env = {f"DIGIT_{field.upper()}": raw for field, (raw, _) in values.items()}
    s = Settings.from_env(env)
    assert {field: getattr(s, field) for field in values} == {f: v for f, (_, v) in values.items()}
    assert s.limits == Limits(max_bytes=900, max_pixels=800, max_batch=7)
    assert s.threads == 2


def test_empty_means_default():
    assert Settings.from_env({"DIGIT_WORKERS": "", "DIGIT_FAST_LANE": " "}) == Settings()


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"DIGIT_WORKERS": "two"}, "DIGIT_WORKERS='two'"),
        ({"DIGIT_WORKERS": "0"}, "DIGIT_WORKERS='0'"),
        ({"DIGIT_MAX_QUEUE": "-1"}, "DIGIT_MAX_QUEUE='-1'"),
        ({"DIGIT_FAST_LANE": "maybe"}, "DIGIT_FAST_LANE='maybe'"),
        ({"DIGIT_MAX_HEADER_BYTES": "100"}, "DIGIT_MAX_HEADER_BYTES='100'"),
        ({"DIGIT_HEADER_TIMEOUT_S": "0"}, "DIGIT_HEADER_TIMEOUT_S='0'"),
        ({"DIGIT_CANARY_SHARE": "50%"}, "DIGIT_CANARY_SHARE='50%'"),
        ({"DIGIT_SHADOW_SHARE": "1.5"}, "DIGIT_SHADOW_SHARE='1.5'"),
        ({"DIGIT_RELOAD_INTERVAL_S": "-1"}, "DIGIT_RELOAD_INTERVAL_S='-1'"),
        ({"DIGIT_DRAIN_S": "60"}, "DIGIT_DRAIN_S='60'"),
        ({"DIGIT_FEEDBACK": "maybe"}, "DIGIT_FEEDBACK='maybe'"),
        ({"DIGIT_FEEDBACK_MAX_AGE_S": "0"}, "DIGIT_FEEDBACK_MAX_AGE_S='0'"),
        ({"DIGIT_FEEDBACK_PER_CLIENT": "0"}, "DIGIT_FEEDBACK_PER_CLIENT='0'"),
        ({"DIGIT_FEEDBACK_QUEUE_BELOW": "1.5"}, "DIGIT_FEEDBACK_QUEUE_BELOW='1.5'"),
        ({"DIGIT_FEEDBACK_SECRET": "short"}, r"DIGIT_FEEDBACK_SECRET=\(hidden\)"),
    ],
)
def test_a_bad_value_stops_with_the_variables_name(env, says):
    with pytest.raises(SystemExit, match=says):
        Settings.from_env(env)


def test_the_feedback_defaults_and_secret():
    s = Settings()
    assert (s.feedback, s.feedback_db, s.feedback_secret, s.signing_secret) == (
        True,
        None,
        None,
        None,
    )
    assert (s.feedback_max_age_s, s.feedback_per_client, s.feedback_window_s) == (3600, 30, 60)
    assert (s.feedback_max_rows, s.feedback_queue_below) == (100_000, 0.9)
    secret = "x" * 20
    s = Settings.from_env({"DIGIT_FEEDBACK_SECRET": f" {secret} ", "DIGIT_FEEDBACK_DB": " "})
    assert s.signing_secret == secret.encode() and s.feedback_db is None
    assert secret not in repr(s)


def test_a_database_url_is_never_echoed_in_an_error():
    """A URL may hold a password; a bad value next to it must not print it."""
    url = "postgresql+psycopg2://digit:hunter2hunter2@db/feedback"
    with pytest.raises(SystemExit) as stopped:
        Settings.from_env({"DIGIT_FEEDBACK_DB": url, "DIGIT_FEEDBACK_SECRET": "hunter2"})
    assert "hunter2" not in str(stopped.value) and "DIGIT_FEEDBACK_SECRET=(hidden)" in str(
        stopped.value
    )


def test_docs_serving_lists_every_variable():
    text = (REPO / "docs" / "serving.md").read_text()
    documented = re.findall(r"^\| `(DIGIT_\w+)` \|", text, flags=re.M)
    assert sorted(documented) == sorted(f"DIGIT_{f.upper()}" for f in Settings.model_fields)
