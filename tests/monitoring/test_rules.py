"""The Prometheus config and rules as promtool sees them: valid, and every alert unit-tested.

`make test` installs promtool (Debian's `prometheus`) when it is missing; without it these fail.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml

from tests.helpers import REPO

MONITORING = REPO / "monitoring"
RULE_FILES = [MONITORING / "rules.yml", MONITORING / "alerts.yml"]
UNIT_TESTS = MONITORING / "tests" / "alerts_test.yml"
# series in the unit tests that sit beside a firing one and must not fire (promtool compares the
# full list of alerts, so their absence is checked)
SILENT_NEIGHBOURS = r'job="(healthy|steady|always-unsure)"|instance="fine|endpoint="/explain"'


def promtool(*args: str) -> subprocess.CompletedProcess:
    binary = shutil.which("promtool")
    assert binary, "promtool is missing: scripts/apt-ensure promtool:prometheus (make test does it)"
    return subprocess.run(
        [binary, *args], cwd=MONITORING, capture_output=True, text=True, timeout=120
    )


def test_config_is_valid_and_loads_both_rule_files():
    proc = promtool("check", "config", str(MONITORING / "prometheus.yml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 rule files found" in proc.stdout + proc.stderr
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    assert config["global"]["scrape_interval"] == "5s"
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"] == [{"targets": ["127.0.0.1:3000"]}]


def test_rules_are_valid():
    proc = promtool("check", "rules", *map(str, RULE_FILES))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("SUCCESS") == len(RULE_FILES)


def test_every_alert_has_a_unit_test_that_fires_it_and_one_that_stays_silent():
    alerts = {
        rule["alert"]
        for group in yaml.safe_load((MONITORING / "alerts.yml").read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    assert alerts == {
        "DigitServiceDown",
        "DigitHighErrorRatio",
        "DigitHighLatencyP95",
        "DigitHighRejectionRatio",
        "DigitLowConfidenceShare",
        "DigitInputDrift",
        "DigitNoPredictions",
    }
    fired, silent = set(), set()
    for case in yaml.safe_load(UNIT_TESTS.read_text())["tests"]:
        series = " ".join(s["series"] for s in case["input_series"])
        for check in case.get("alert_rule_test", []):
            if check.get("exp_alerts"):
                fired.add(check["alertname"])
                if re.search(SILENT_NEIGHBOURS, series):
                    silent.add(check["alertname"])
            else:
                silent.add(check["alertname"])
    assert fired == alerts, f"no firing test for {alerts - fired}"
    assert silent == alerts, f"no silent test for {alerts - silent}"


def test_promtool_unit_tests_pass():
    proc = promtool("test", "rules", str(UNIT_TESTS))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


@pytest.mark.parametrize("name", ["prometheus.yml", "rules.yml", "alerts.yml"])
def test_dashboard_and_rules_use_only_metrics_the_service_exports(name):
    """Every digit_* name in the monitoring files exists in service/metrics.py (renames break)."""
    exported = set(re.findall(r'"(digit_\w+)"', (REPO / "service" / "metrics.py").read_text()))
    text = (MONITORING / name).read_text()
    text += (MONITORING / "grafana" / "digit-service.json").read_text()
    for used in set(re.findall(r"(?<![:\w])digit_\w+", text)):
        base = re.sub(r"_(bucket|count|sum|total)$", "", used)
        assert base in exported, f"{name} uses {used}, which service/metrics.py does not export"
