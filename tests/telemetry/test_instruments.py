"""The metric catalogue: every instrument comes out of the OpenTelemetry Prometheus
exporter under the name the catalogue gives (units as suffixes, counters with _total),
labels are the catalogue's, and every dashboard query and alert rule names only metrics
that exist."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from corestate.telemetry import instruments as ins

ROOT = Path(__file__).resolve().parents[2]
# Series that Prometheus or prometheus_client make, not CoreState's catalogue.
BUILTIN = {"up", "ALERTS", "target_info", "process_cpu_seconds_total",
           "process_resident_memory_bytes", "vector", "time"}


def scraped(recorder: object) -> dict[str, set[str]]:
    """Series name -> label names, from the recorder's registry in text format."""
    from prometheus_client import generate_latest

    out: dict[str, set[str]] = {}
    for line in generate_latest(recorder.registry).decode().splitlines():  # type: ignore[attr-defined]
        if line.startswith("#") or not line.strip():
            continue
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s", line)
        assert m, line
        labels = set(re.findall(r'(\w+)="', m[3] or ""))
        out.setdefault(m[1], set()).update(labels)
    return out


def test_every_instrument_comes_out_under_its_catalogue_name_with_its_labels() -> None:
    from corestate.telemetry.otel import OtelRecorder

    rec = OtelRecorder("test")
    for inst in ins.ALL:
        attrs = {label: "x" for label in inst.labels}
        if inst.kind == "counter":
            rec._add(inst, 1, attrs)
        elif inst.kind == "histogram":
            rec._record(inst, 1.0, attrs)
        elif inst.kind == "gauge":
            rec._set(inst, 1.0, attrs)
        else:
            rec.observe(inst, lambda a=attrs: [(1.0, a)])
    series = scraped(rec)
    for inst in ins.ALL:
        name = ins.prometheus_name(inst)
        key = f"{name}_count" if inst.kind == "histogram" else name
        assert key in series, (inst.name, name, sorted(series))
        assert series[key] == set(inst.labels), (name, series[key])
    assert set(series) - {"target_info"} <= ins.series_names()
    rec.shutdown()


def test_units_follow_the_conventions() -> None:
    for inst in ins.ALL:
        name = ins.prometheus_name(inst)
        assert name.startswith("corestate_"), name
        if inst.unit == "s":
            assert name.endswith("_seconds") or name.endswith("_seconds_total"), name
        if inst.unit == "By":
            assert "_bytes" in name, name
        if inst.kind == "counter":
            assert name.endswith("_total"), name
        assert not {"snapshot", "snapshot_id", "path", "paths", "file"} & set(inst.labels), name


def _metric_names(expr: str) -> set[str]:
    expr = re.sub(r'"[^"]*"', '""', expr)  # label values
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    words = set(re.findall(r"\b[a-zA-Z_:][a-zA-Z0-9_:]*\b(?=\s*[{\[)\s]|$)", expr))
    functions = {"sum", "max", "min", "count", "rate", "increase", "deriv", "histogram_quantile",
                 "time", "vector", "or", "and", "unless", "by", "le", "abs"}
    return {w for w in words if w not in functions and not re.fullmatch(r"\d+[smhd]?", w)}


def dashboard_queries() -> list[tuple[str, str, str]]:
    out = []
    for path in sorted((ROOT / "deploy" / "grafana" / "dashboards").glob("*.json")):
        doc = json.loads(path.read_text())
        for panel in doc["panels"]:
            for target in panel["targets"]:
                out.append((doc["uid"], panel["title"], target["expr"]))
    return out


def test_dashboards_and_rules_name_only_exported_metrics() -> None:
    known = ins.series_names() | BUILTIN
    queries = dashboard_queries()
    assert len({uid for uid, _, _ in queries}) == 5
    for uid, title, expr in queries:
        unknown = {n for n in _metric_names(expr) if n.startswith(("corestate_", "process_"))
                   or n in BUILTIN} - known
        assert not unknown, (uid, title, unknown)
        assert any(n.startswith("corestate_") or n in BUILTIN for n in _metric_names(expr)), expr
    rules = (ROOT / "deploy" / "prometheus" / "rules" / "corestate.yml").read_text()
    named = set(re.findall(r"\bcorestate_[a-z0-9_]+", rules)) - {"corestate_test"}  # the file name
    assert named and named <= known, named - known


def test_the_checked_in_dashboards_are_what_the_script_writes() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "deploy" / "grafana" / "dashboards.py"),
                           "--check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_a_plain_backup_loads_no_opentelemetry(tmp_path: Path) -> None:
    """Metrics cost nothing when they are off: no OpenTelemetry import at all."""
    from tests.conftest import PASSWORD, run_corestate

    repo, src = tmp_path / "repo", tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    run_corestate("init", "--repo", str(repo))
    code = ("import sys, atexit\n"
            "atexit.register(lambda: print('OTEL' if any(m.startswith(('opentelemetry', "
            "'prometheus_client')) for m in sys.modules) else 'NO-OTEL', file=sys.stderr))\n"
            "from corestate.cli.main import main\n"
            f"main(['backup', {str(src)!r}, '--repo', {str(repo)!r}, '-q'])\n")
    env = {"CORESTATE_PASSWORD": PASSWORD, "CORESTATE_STATE_DIR": str(tmp_path / "state")}
    import os

    plain = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env},
                           capture_output=True, text=True)
    assert plain.returncode == 0 and "NO-OTEL" in plain.stderr, plain.stderr
    metered = subprocess.run([sys.executable, "-c", code.replace(
        "'-q']", f"'-q', '--metrics-file', {str(tmp_path / 'm.prom')!r}]")],
        env={**os.environ, **env}, capture_output=True, text=True)
    assert metered.returncode == 0 and "OTEL" in metered.stderr.split(), metered.stderr


@pytest.mark.parametrize("paths", [["/a", "/b"], ["/b", "/a/"]])
def test_source_set_ignores_order_and_trailing_slashes(paths: list[str]) -> None:
    assert ins.source_set(paths) == ins.source_set(["/a", "/b"]) != ins.source_set(["/a"])


def test_design_md_lists_every_metric() -> None:
    design = (ROOT / "docs" / "design.md").read_text()
    for inst in ins.ALL:
        assert f"`{ins.prometheus_name(inst)}`" in design, inst.name
