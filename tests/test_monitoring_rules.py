"""deploy/monitoring/rules.yml under ``promtool test rules`` (Debian's ``prometheus`` package ships promtool; ``make
test`` installs it as root): for each alert, synthetic series where it fires and normal ones where it stays silent.

The series are written here, in the shapes the service exports them (serving/model_metrics.py, BentoML's request
metrics); each case becomes a promtool test file whose expected alerts carry the rule's own annotations (promtool
compares them exactly; what an alert says is not what is tested here, that it fires is).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "deploy" / "monitoring" / "rules.yml"
MINUTES = 60  # one sample a minute for an hour
EVAL = "40m"  # past every rule's window and `for`
PUBLIC = 'service_name="digit_compare"'


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        message = "promtool not found: apt-get install prometheus (`make test` does it as root)"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI must run the rule tests, never skip them
        pytest.skip(message)
    return found


def rising(per_minute: float) -> str:
    return f"0+{per_minute:g}x{MINUTES}"


def steady(value: float) -> str:
    return f"{value:g}x{MINUTES}"


def mean_of(metric: str, labels: str, per_minute: float, mean: float) -> list[dict]:
    """A histogram's _sum and _count for ``per_minute`` observations a minute averaging ``mean``."""
    return [{"series": f"{metric}_sum{{{labels}}}", "values": rising(per_minute * mean)},
            {"series": f"{metric}_count{{{labels}}}", "values": rising(per_minute)}]


REFERENCE = [  # what the manifest's reference block gives, as the service exports it
    {"series": 'digit_compare_reference_confidence_mean{prior="course"}', "values": steady(0.91)},
    {"series": 'digit_compare_reference_disagreement_mean{prior="course"}', "values": steady(0.05)},
    {"series": 'digit_compare_reference_top_digit_probability_mean{half="left"}', "values": steady(0.83)},
    {"series": 'digit_compare_reference_top_digit_probability_mean{half="right"}', "values": steady(0.83)},
]
PAIR = 'route="/compare_pair",prior="course"'


def requests(per_minute: float, code: str = "200", endpoint: str = "/compare_pair") -> dict:
    return {"series": f'bentoml_service_request_total{{{PUBLIC},endpoint="{endpoint}",http_response_code="{code}"}}',
            "values": rising(per_minute)}


def latency(buckets: dict[str, float]) -> list[dict]:
    """Request-duration buckets (cumulative counts a minute per upper bound) of compare_pair answers."""
    labels = f'{PUBLIC},endpoint="/compare_pair",http_response_code="200"'
    series = [{"series": f'bentoml_service_request_duration_seconds_bucket{{{labels},le="{le}"}}',
               "values": rising(n)} for le, n in buckets.items()]
    return [*series, {"series": f"bentoml_service_request_duration_seconds_count{{{labels}}}",
                      "values": rising(buckets["+Inf"])}]


def top_digit(mean: float) -> list[dict]:
    return [s for half in ("left", "right") for s in
            mean_of("digit_compare_top_digit_probability", f'route="/compare_pair",half="{half}"', 100, mean)]


#: alert -> (series where it fires, the labels of each alert that fires, series where it stays silent)
CASES: dict[str, tuple[list[dict], list[dict], list[dict]]] = {
    "DigitCompareConfidenceDrift": (
        [*REFERENCE, *mean_of("digit_compare_confidence", PAIR, 100, 0.70)],
        [{"prior": "course", "severity": "warning"}],
        [*REFERENCE, *mean_of("digit_compare_confidence", PAIR, 100, 0.89)]),
    "DigitCompareTopDigitDrift": (
        [*REFERENCE, *top_digit(0.55)],
        [{"half": "left", "severity": "warning"}, {"half": "right", "severity": "warning"}],
        [*REFERENCE, *top_digit(0.80)]),
    "DigitCompareModelsDisagree": (
        [*REFERENCE, *mean_of("digit_compare_disagreement", PAIR, 100, 0.30)],
        [{"prior": "course", "severity": "warning"}],
        [*REFERENCE, *mean_of("digit_compare_disagreement", PAIR, 100, 0.07)]),
    "DigitCompareRefusingInputs": (
        [requests(100), requests(40, "400"),
         {"series": 'digit_compare_refused_total{route="/compare_pair",reason="blank"}', "values": rising(40)}],
        [{"severity": "warning"}],
        [requests(100), requests(3, "400"),
         {"series": 'digit_compare_refused_total{route="/compare_pair",reason="blank"}', "values": rising(3)}]),
    "DigitCompareErrors": (
        [requests(100), requests(10, "503")],
        [{"severity": "critical"}],
        [requests(100), requests(0.5, "503")]),
    "DigitCompareSlowAnswers": (
        [*latency({"0.5": 50, "1.0": 60, "2.5": 70, "+Inf": 100})],
        [{"severity": "warning"}],
        [*latency({"0.5": 99, "1.0": 100, "2.5": 100, "+Inf": 100})]),
}


def rules() -> dict[str, dict]:
    return {rule["alert"]: rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]
            if "alert" in rule}


def test_every_alert_has_a_case_and_a_one_line_summary():
    assert set(rules()) == set(CASES)
    for name, rule in rules().items():
        summary = rule["annotations"]["summary"]
        assert "\n" not in summary and "docs/monitoring.md#" in summary, name


@pytest.mark.parametrize("alert", sorted(CASES))
def test_the_alert_fires_on_its_condition_and_stays_silent_on_normal_traffic(alert, tmp_path):
    firing, labels, normal = CASES[alert]
    annotations = rules()[alert]["annotations"]
    tests = [{"interval": "1m", "input_series": firing, "alert_rule_test": [{
                 "eval_time": EVAL, "alertname": alert,
                 "exp_alerts": [{"exp_labels": each, "exp_annotations": annotations} for each in labels]}]},
             {"interval": "1m", "input_series": normal, "alert_rule_test": [{
                 "eval_time": EVAL, "alertname": alert, "exp_alerts": []}]}]
    spec = tmp_path / "rules.test.yml"
    spec.write_text(yaml.safe_dump({"rule_files": [str(RULES)], "evaluation_interval": "1m", "tests": tests}))
    result = subprocess.run([promtool(), "test", "rules", str(spec)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_an_alert_does_not_fire_on_a_handful_of_answers(tmp_path):
    """Ten odd answers in a window are no drift: every answer-based alert asks for at least 50."""
    tests = [{"interval": "1m", "input_series": [*REFERENCE, *mean_of("digit_compare_confidence", PAIR, 0.5, 0.6)],
              "alert_rule_test": [{"eval_time": EVAL, "alertname": "DigitCompareConfidenceDrift", "exp_alerts": []}]}]
    spec = tmp_path / "rules.test.yml"
    spec.write_text(yaml.safe_dump({"rule_files": [str(RULES)], "evaluation_interval": "1m", "tests": tests}))
    result = subprocess.run([promtool(), "test", "rules", str(spec)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# --------------------------------------------------------------------------- the dashboard

DASHBOARD = ROOT / "deploy" / "monitoring" / "dashboard.json"


def dashboard_expressions() -> dict[str, list[str]]:
    """Each panel's title -> its PromQL expressions."""
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return {panel["title"]: [target["expr"] for target in panel["targets"]] for panel in panels}


def test_the_dashboard_shows_requests_latency_answers_confidence_disagreement_and_refusals():
    expressions = dashboard_expressions()
    assert all(expressions.values()), [title for title, exprs in expressions.items() if not exprs]
    every = " ".join(e for exprs in expressions.values() for e in exprs)
    for metric in ("bentoml_service_request_total", "bentoml_service_request_duration_seconds_bucket",
                   "digit_compare_answers_total", "digit_compare_confidence", "digit_compare_disagreement",
                   "digit_compare_refused_total", "digit_compare_top_digit_probability"):
        assert metric in every, metric


def test_every_dashboard_expression_is_valid_promql(tmp_path):
    """promtool parses each expression (as a recording rule; Grafana's $__rate_interval as 5m)."""
    rules = [{"record": f"dashboard:panel_{i}", "expr": expr.replace("$__rate_interval", "5m")}
             for i, expr in enumerate(e for exprs in dashboard_expressions().values() for e in exprs)]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
