"""The scrape config and alert rules, checked by the real promtool: the config and rules
load, and the rules' unit tests (deploy/prometheus/rules/corestate_test.yml: every rule
firing and not firing) pass, and fail when a rule is broken."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.telemetry.prom import DEPLOY, promtool


def test_the_scrape_config_and_rules_load() -> None:
    config = promtool("check", "config", "prometheus.yml")
    assert config.returncode == 0, config.stdout + config.stderr
    assert "SUCCESS: 1 rule files found" in config.stdout
    rules = promtool("check", "rules", "rules/corestate.yml")
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert "SUCCESS: 7 rules found" in rules.stdout


def test_every_alert_rule_has_unit_tests_that_pass() -> None:
    proc = promtool("test", "rules", "corestate_test.yml", cwd=DEPLOY / "rules")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    tests = (DEPLOY / "rules" / "corestate_test.yml").read_text()
    rules = (DEPLOY / "rules" / "corestate.yml").read_text()
    names = [line.split(":", 1)[1].strip() for line in rules.splitlines()
             if line.strip().startswith("- alert:")]
    assert len(names) == 7
    for name in names:  # each rule is tested, firing (exp_alerts with labels) and not
        assert f"alertname: {name}\n        exp_alerts: []" in tests, name
        assert f"alertname: {name}\n        exp_alerts:\n          - exp_labels" in tests, name


def test_the_unit_tests_catch_a_broken_rule(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    shutil.copytree(DEPLOY / "rules", rules)
    text = (rules / "corestate.yml").read_text()
    for good, bad in ((") > 60\n", ") > 600\n"), ("corestate_check_success == 0", "corestate_check_success < 0"),
                      ("deriv(", "-deriv(")):
        assert good in text
        (rules / "corestate.yml").write_text(text.replace(good, bad))
        proc = promtool("test", "rules", "corestate_test.yml", cwd=rules)
        assert proc.returncode != 0 and "FAILED" in proc.stdout + proc.stderr, (good, proc.stdout)
