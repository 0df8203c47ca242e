"""The Prometheus config and rules as promtool sees them: valid, and every alert unit-tested.

`make test` installs promtool (Debian's `prometheus`) when it is missing; without it these fail.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
import yaml

from tests.helpers import REPO

MONITORING = REPO / "monitoring"
CONFIG = MONITORING / "prometheus.yml"
ALERTS = MONITORING / "alerts.yml"
RULE_FILES = [MONITORING / "rules.yml", ALERTS]
UNIT_TESTS = MONITORING / "tests" / "alerts_test.yml"
DASHBOARD = MONITORING / "grafana" / "digit-service.json"
SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
LABEL = re.compile(r'(\w+)="([^"]*)"')


def promtool(*args: str) -> subprocess.CompletedProcess:
    binary = shutil.which("promtool")
    assert binary, "promtool is missing: scripts/apt-ensure promtool:prometheus (make test does it)"
    return subprocess.run(
        [binary, *args], cwd=MONITORING, capture_output=True, text=True, timeout=120
    )


def rule_groups(path) -> list[dict]:
    return yaml.safe_load(path.read_text())["groups"]


def seconds(duration: str) -> int:
    """A Prometheus duration ('1m', '15m', '1h30m', '30s') in seconds."""
    return sum(int(n) * SECONDS[unit] for n, unit in re.findall(r"(\d+)([smhd])", duration))


def samples(values: str) -> int:
    """How many samples promtool expands a series' values to: 'axn', 'a+bxn' are n+1, '_xn' n."""
    total = 0
    for token in values.split():
        repeat = re.fullmatch(r"(.+)x(\d+)", token)
        total += int(repeat[2]) + (repeat[1] != "_") if repeat else 1
    return total


def has_silent_neighbour(case: dict, expected: list[dict]) -> bool:
    """An input series whose value for a label of the expected alerts (job, instance, endpoint...)
    none of them has, e.g. job="just-below" beside job="digit-service": promtool compares the
    full list of firing alerts, so that series is checked to stay silent."""
    expected_labels = {item for alert in expected for item in alert["exp_labels"].items()}
    keys = {key for key, _ in expected_labels}
    return any(
        key in keys and (key, value) not in expected_labels
        for series in case["input_series"]
        for key, value in LABEL.findall(series["series"])
    )


def test_config_is_valid_and_loads_both_rule_files():
    proc = promtool("check", "config", str(CONFIG))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    config = yaml.safe_load(CONFIG.read_text())
    assert config["rule_files"] == [path.name for path in RULE_FILES]
    assert f"{len(RULE_FILES)} rule files found" in proc.stdout + proc.stderr
    assert config["global"]["scrape_interval"] == "5s"
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"] == [{"targets": ["127.0.0.1:3000"]}]


def test_rules_are_valid():
    proc = promtool("check", "rules", *map(str, RULE_FILES))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for path in RULE_FILES:
        n_rules = sum(len(group["rules"]) for group in rule_groups(path))
        assert f"Checking {path}\n  SUCCESS: {n_rules} rules found" in proc.stdout, proc.stdout


def test_every_alert_has_a_unit_test_that_fires_it_and_one_that_stays_silent():
    """Each alert fires in some unit test, is silent while pending, and silent on a threshold.

    A silent check is *pending* when the same test fires that alert within one `for:` window
    after it. It is a *threshold* case when it is not pending, comes at least one `for:` window
    after the input starts (the alert had the time to fire) and before the input ends (so the
    silence is not the data running out). A firing check also counts as a silent one where an
    input series beside the firing ones stays silent (has_silent_neighbour).
    """
    hold = {}  # alert -> its `for:` window in seconds (DigitInputDrift has two rules)
    for group in rule_groups(ALERTS):
        for rule in group["rules"]:
            if "alert" in rule:
                name = rule["alert"]
                hold[name] = max(hold.get(name, 0), seconds(rule.get("for", "0s")))
    assert set(hold) == {
        "DigitServiceDown",
        "DigitHighErrorRatio",
        "DigitHighLatencyP95",
        "DigitHighRejectionRatio",
        "DigitLowConfidenceShare",
        "DigitInputDrift",
        "DigitNoPredictions",
        "DigitShadowDisagreement",
        "DigitModelReloadFailed",
        "DigitLiveAccuracyLow",
        "DigitFeedbackStoreFilling",
    }
    unit_tests = yaml.safe_load(UNIT_TESTS.read_text())
    fired, pending, threshold = set(), set(), set()
    for case in unit_tests["tests"]:
        interval = seconds(case.get("interval", unit_tests["evaluation_interval"]))
        input_ends = interval * (min(samples(s["values"]) for s in case["input_series"]) - 1)
        checks = [
            (seconds(c["eval_time"]), c["alertname"], c.get("exp_alerts"))
            for c in case.get("alert_rule_test", [])
        ]
        for at, name, expected in checks:
            fires_within_window = any(
                later == name and alerts and at < t <= at + hold[name]
                for t, later, alerts in checks
            )
            if expected:
                fired.add(name)
            elif fires_within_window:
                pending.add(name)
            silent = not expected or has_silent_neighbour(case, expected)
            if silent and not fires_within_window and hold[name] <= at <= input_ends:
                threshold.add(name)
    assert fired == set(hold), f"no firing test for {set(hold) - fired}"
    windowed = {name for name, window in hold.items() if window}
    assert pending >= windowed, f"no test silent while pending for {windowed - pending}"
    assert threshold == set(hold), (
        f"no silent test past the for: window for {set(hold) - threshold}"
    )


def test_unit_tests_evaluate_the_recording_rules_before_the_alerts():
    """Else promtool orders the groups at random and an alert may read a value a minute old."""
    groups = [group["name"] for path in RULE_FILES for group in rule_groups(path)]
    assert yaml.safe_load(UNIT_TESTS.read_text())["group_eval_order"] == groups


def test_promtool_unit_tests_pass():
    proc = promtool("test", "rules", str(UNIT_TESTS))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


@pytest.mark.parametrize("name", ["prometheus.yml", "rules.yml", "alerts.yml"])
def test_dashboard_and_rules_use_only_metrics_the_service_exports(name):
    """Every digit_* name in the monitoring files exists in service/metrics.py (renames break)."""
    exported = set(re.findall(r'"(digit_\w+)"', (REPO / "service" / "metrics.py").read_text()))
    text = (MONITORING / name).read_text()
    text += DASHBOARD.read_text()
    for used in set(re.findall(r"(?<![:\w])digit_\w+", text)):
        base = re.sub(r"_(bucket|count|sum|total)$", "", used)
        assert base in exported, f"{name} uses {used}, which service/metrics.py does not export"


def dashboard_targets() -> list[tuple[dict, dict]]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [(panel, target) for panel in panels for target in panel.get("targets", [])]


def test_every_dashboard_query_parses_and_reads_only_recorded_series(tmp_path):
    """Offline (test_prometheus.py sends them to a real Prometheus): promtool parses each panel's
    PromQL as a recording rule, and every level:metric:operation name a panel reads is recorded
    in rules.yml (a renamed or dropped rule would leave the panel empty)."""
    targets = dashboard_targets()
    rules = [
        {"record": f"dashboard:panel_{panel['id']}:{target['refId']}", "expr": target["expr"]}
        for panel, target in targets
    ]
    as_rules = tmp_path / "dashboard.yml"
    as_rules.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    proc = promtool("check", "rules", str(as_rules))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    recorded = {
        rule["record"] for group in rule_groups(MONITORING / "rules.yml") for rule in group["rules"]
    }
    for panel, target in targets:
        read = set(re.findall(r"\b[a-z_]+:\w+:\w+", target["expr"]))
        assert read <= recorded, f"panel {panel['title']!r} reads unrecorded {read - recorded}"


def test_the_shadow_agreement_panels_draw_the_alert_threshold():
    (rule,) = [
        rule
        for group in rule_groups(ALERTS)
        for rule in group["rules"]
        if rule.get("alert") == "DigitShadowDisagreement"
    ]
    threshold = float(re.search(r"ratio_rate15m < ([\d.]+)", rule["expr"])[1])
    panels = [
        panel
        for panel, target in dashboard_targets()
        if "digit_shadow_agreement:ratio_rate15m" in target["expr"]
    ]
    assert len(panels) == 2  # overall and per digit
    for panel in panels:
        steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
        assert [step["value"] for step in steps] == [None, threshold], panel["title"]


def test_the_feedback_panels_draw_the_alert_thresholds():
    """The live-accuracy panel's dashed line, the labelled-rows panel's line and the store
    gauge's orange step are the numbers DigitLiveAccuracyLow and DigitFeedbackStoreFilling use."""
    alerts = {rule["alert"]: rule for group in rule_groups(ALERTS) for rule in group["rules"]}
    live = alerts["DigitLiveAccuracyLow"]["expr"]
    margin = re.search(r"\(digit_model_test_accuracy\) - ([\d.]+)", live)[1]
    least = float(re.search(r"digit_feedback_labelled:increase6h >= (\d+)", live)[1])
    filling = alerts["DigitFeedbackStoreFilling"]["expr"]
    full = float(re.search(r"digit_feedback_store:fill_ratio > ([\d.]+)", filling)[1])
    panels = {target["expr"]: panel for panel, target in dashboard_targets()}
    assert f"max by (model_version) (digit_model_test_accuracy) - {margin}" in panels

    def steps(expr: str) -> list:
        return [
            step["value"] for step in panels[expr]["fieldConfig"]["defaults"]["thresholds"]["steps"]
        ]

    assert steps("model_version:digit_feedback_labelled:increase6h") == [None, least]
    assert steps("job:digit_feedback_store:fill_ratio") == [None, full]
