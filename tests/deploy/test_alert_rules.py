"""deploy/alerts: the rules load in Prometheus and behave as their unit tests say (promtool).

tests/deploy/seer-rules.test.yml gives each alert a case where it fires and one where it must
stay silent; a mutated threshold must make those tests fail, so they are not vacuous.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from tests.deploy.panels import REPO
from tests.tools import promtool

RULES = REPO / "deploy" / "alerts" / "seer-rules.yml"
UNIT_TESTS = Path(__file__).with_name("seer-rules.test.yml")
REQUIRED = {"SeerTrainingStalled", "SeerDataWaitHigh", "SeerIngestFailureRateHigh",
            "SeerNoNewCheckpoint", "SeerCollapseSuspected", "SeerEvalAccuracyDropped",
            "SeerObjectStoreSpilling"}


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=120)


def alert_names() -> set[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {r["alert"] for g in groups for r in g["rules"]}


def test_rules_and_prometheus_config_check() -> None:
    done = run("check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    done = run("check", "config", str(REPO / "deploy" / "prometheus.yml"))
    assert done.returncode == 0, done.stdout + done.stderr


def test_rule_unit_tests_pass() -> None:
    done = run("test", "rules", str(UNIT_TESTS))
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_has_a_firing_and_a_silent_case() -> None:
    assert alert_names() >= REQUIRED
    fires, silent = set(), set()
    for case in yaml.safe_load(UNIT_TESTS.read_text())["tests"]:
        for check in case["alert_rule_test"]:
            (fires if check["exp_alerts"] else silent).add(check["alertname"])
    assert fires == alert_names() and silent == alert_names()


def test_a_changed_threshold_fails_the_unit_tests(tmp_path: Path) -> None:
    text = RULES.read_text()
    assert "> 0.25" in text
    (tmp_path / "rules.yml").write_text(text.replace("> 0.25", "> 0.35"))
    tests = yaml.safe_load(UNIT_TESTS.read_text())
    tests["rule_files"] = [str(tmp_path / "rules.yml")]
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(tests))
    done = run("test", "rules", str(tmp_path / "tests.yml"))
    assert done.returncode != 0 and "SeerDataWaitHigh" in done.stdout + done.stderr
