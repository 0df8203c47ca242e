"""OpenVINO (at import), its converter and NNCF set up usage telemetry, sent over the network
unless declined; the pipeline and the service decline for their own process
(common/runtimes.no_telemetry): no network, no client id in the user's home."""

from __future__ import annotations

import subprocess

from tests.helpers import BIN, REPO, clean_env

CHILD = """
import sys
{prelude}
import openvino as ov
try:
    ov.convert_model(object())  # fails, after the converter has set up its telemetry
except Exception:
    pass
import nncf  # noqa: F401  (NNCF sets up its own at import)
"""


def run_in(home, code: str) -> str:
    """`code` in a fresh interpreter whose home is `home`; its stdout."""
    return subprocess.run(
        [str(BIN / "python"), "-c", code],
        cwd=REPO,
        env=clean_env(HOME=str(home)),
        check=True,
        timeout=120,
        capture_output=True,
        text=True,
    ).stdout


def test_the_pipeline_declines_openvino_telemetry(tmp_path):
    run_in(
        tmp_path, CHILD.format(prelude="from common.runtimes import no_telemetry; no_telemetry()")
    )
    # Without the call, the same two steps write ~/intel/openvino_ga_cid and try to send events
    # (seen by hand; not run here: tests do not reach the network).
    assert list(tmp_path.iterdir()) == []


def test_a_worker_serving_openvino_leaves_the_home_alone(tmp_path):
    out = run_in(
        tmp_path, "from common import runtimes; print(sorted(runtimes.cpu_capabilities()))"
    )
    assert "FP32" in out
    assert list(tmp_path.iterdir()) == []
