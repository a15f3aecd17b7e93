"""CoreState's Grafana dashboards, written as data: run this script to regenerate
``deploy/grafana/dashboards/*.json`` (checked in; ``--check`` fails if they are stale).

Terms:

- a *dashboard* is a title, a uid, template variables and rows of *panels*;
- a *panel* shows one or more PromQL *queries* with a unit. Queries may use Grafana's
  ``$__rate_interval`` and the dashboard's variables (``$repository``, ``$host``); the
  test suite substitutes them and evaluates every query against a real Prometheus fed
  by real CoreState processes (``tests/telemetry/test_dashboards.py``), so a query that
  names a metric nobody exports, or that returns nothing, fails there;
- the *datasource* is a variable (``$datasource``, any Prometheus), so the JSON imports
  into any Grafana, and the provisioning files in ``provisioning/`` load it as is.

Usage: ``python deploy/grafana/dashboards.py [--check]``.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

OUT = Path(__file__).resolve().parent / "dashboards"
DS = {"type": "prometheus", "uid": "${datasource}"}
RI = "$__rate_interval"


@dataclass(frozen=True)
class Panel:
    title: str
    queries: tuple[tuple[str, str], ...]  # (expr, legend)
    unit: str = "short"
    kind: str = "timeseries"  # or "stat"
    description: str = ""
    width: int = 12


@dataclass
class Dashboard:
    uid: str
    title: str
    description: str
    panels: list[Panel]
    variables: list[str] = field(default_factory=list)  # label names, from BACKUP_RUNS


def p(title: str, *queries: tuple[str, str], unit: str = "short", kind: str = "timeseries",
      description: str = "", width: int = 12) -> Panel:
    return Panel(title, tuple(queries), unit, kind, description, width)


SEL = 'repository=~"$repository"'
HOSTS = 'host=~"$host"'

OVERVIEW = Dashboard(
    "corestate-overview", "CoreState / Overview",
    "Every host and repository: how old the last good backup is, what failed, what is "
    "being added, and what is alerting.",
    [
        p("Time since last successful backup",
          (f"time() - max by (host, repository, source_set) "
           f"(corestate_backup_last_success_timestamp_seconds{{{HOSTS}}})",
           "{{host}} {{repository}}/{{source_set}}"),
          unit="s", kind="stat", width=24,
          description="Per host, repository and source set. The CoreStateBackupTooOld alert "
                      "fires past corestate_backup_max_age_seconds."),
        p("Backups by result",
          (f"sum by (host, result) (increase(corestate_backup_runs_total{{{HOSTS}}}[{RI}]))",
           "{{host}} {{result}}")),
        p("Failed or partial backups (24h)",
          (f'sum by (host) (increase(corestate_backup_runs_total{{{HOSTS},result!="success"}}[24h]))',
           "{{host}}"), kind="stat"),
        p("Bytes added to repositories",
          (f"sum by (host) (rate(corestate_backup_added_bytes_total{{{HOSTS}}}[{RI}]))", "{{host}}"),
          unit="Bps"),
        p("Deduplication and compression (since start)",
          (f"sum by (host) (corestate_backup_processed_bytes_total{{{HOSTS}}}) / "
           f"sum by (host) (corestate_backup_added_bytes_total{{{HOSTS}}})",
           "{{host}} processed / added"),
          (f"sum by (host) (corestate_backup_added_bytes_total{{{HOSTS}}}) / "
           f"sum by (host) (corestate_backup_stored_bytes_total{{{HOSTS}}})",
           "{{host}} added / stored"),
          unit="none"),
        p("Anomaly alerts (24h)",
          (f"sum by (host, severity) (increase(corestate_anomaly_alerts_total{{{HOSTS}}}[24h]))",
           "{{host}} {{severity}}"), kind="stat"),
        p("Firing CoreState alerts",
          ('count by (alertname) (ALERTS{alertstate="firing",alertname=~"CoreState.*"}) '
           'or vector(0)', "{{alertname}}"), kind="stat"),
        p("CoreState processes up", ('up{job=~"corestate|pushgateway"}', "{{job}} {{instance}}"),
          kind="stat", width=24),
    ],
    variables=["host"],
)

REPOSITORY = Dashboard(
    "corestate-repository", "CoreState / Repository",
    "One repository: its source sets, backup durations, files and bytes, the storage "
    "backend's latency and the last check.",
    [
        p("Time since last successful backup",
          (f"time() - max by (host, source_set) (corestate_backup_last_success_timestamp_seconds{{{SEL}}})",
           "{{host}}/{{source_set}}"), unit="s", kind="stat", width=24),
        p("Backup duration p95",
          (f"histogram_quantile(0.95, sum by (le, command, source_set) "
           f"(rate(corestate_backup_duration_seconds_bucket{{{SEL}}}[{RI}])))",
           "{{command}} {{source_set}}"), unit="s"),
        p("Files by state",
          (f"sum by (state) (increase(corestate_backup_files_total{{{SEL}}}[{RI}]))", "{{state}}")),
        p("Bytes processed, added, stored",
          (f"sum(rate(corestate_backup_processed_bytes_total{{{SEL}}}[{RI}]))", "processed"),
          (f"sum(rate(corestate_backup_added_bytes_total{{{SEL}}}[{RI}]))", "added"),
          (f"sum(rate(corestate_backup_stored_bytes_total{{{SEL}}}[{RI}]))", "stored"),
          unit="Bps"),
        p("Dedup and compression ratios (since start)",
          (f"sum(corestate_backup_processed_bytes_total{{{SEL}}}) / "
           f"sum(corestate_backup_added_bytes_total{{{SEL}}})", "processed / added"),
          (f"sum(corestate_backup_added_bytes_total{{{SEL}}}) / "
           f"sum(corestate_backup_stored_bytes_total{{{SEL}}})", "added / stored"),
          unit="none"),
        p("Storage backend latency p99",
          (f"histogram_quantile(0.99, sum by (le, backend, operation) "
           f"(rate(corestate_backend_operation_duration_seconds_bucket[{RI}])))",
           "{{backend}} {{operation}}"), unit="s"),
        p("Storage backend throughput",
          (f"sum by (backend, direction) (rate(corestate_backend_transferred_bytes_total[{RI}]))",
           "{{backend}} {{direction}}"), unit="Bps"),
        p("Last check",
          (f"min by (read_data) (corestate_check_success{{{SEL}}})", "ok (read data: {{read_data}})"),
          (f"max by (read_data) (corestate_check_errors{{{SEL}}})", "errors (read data: {{read_data}})"),
          kind="stat"),
        p("Time since last check",
          (f"time() - max by (read_data) (corestate_check_last_run_timestamp_seconds{{{SEL}}})",
           "read data: {{read_data}}"), unit="s", kind="stat"),
    ],
    variables=["repository"],
)

PROTECTION = Dashboard(
    "corestate-protection", "CoreState / Continuous protection",
    "corestate protect: recovery point, pending changes, snapshot cadence, watcher "
    "overflows and rescans, and the cost of watching.",
    [
        p("RPO p50 / p99",
          (f"histogram_quantile(0.5, sum by (le, host) (rate(corestate_protect_rpo_seconds_bucket{{{HOSTS}}}[{RI}])))",
           "{{host}} p50"),
          (f"histogram_quantile(0.99, sum by (le, host) (rate(corestate_protect_rpo_seconds_bucket{{{HOSTS}}}[{RI}])))",
           "{{host}} p99"), unit="s",
          description="From when the watcher reported a change to the commit of the snapshot "
                      "that holds it. The CoreStateRPOAboveTarget alert fires above 60 s."),
        p("Oldest pending change",
          (f"max by (host, source_set) (corestate_protect_oldest_pending_change_age_seconds{{{HOSTS}}})",
           "{{host}}/{{source_set}}"), unit="s"),
        p("Pending changes",
          (f"sum by (host, source_set) (corestate_protect_pending_changes{{{HOSTS}}})",
           "{{host}}/{{source_set}}")),
        p("Snapshots per minute",
          (f'sum by (host) (rate(corestate_backup_runs_total{{{HOSTS},command="protect"}}[{RI}])) * 60',
           "{{host}}")),
        p("Snapshot duration p95",
          (f'histogram_quantile(0.95, sum by (le, host) (rate(corestate_backup_duration_seconds_bucket{{{HOSTS},command="protect"}}[{RI}])))',
           "{{host}}"), unit="s"),
        p("Capture cadence",
          (f"max by (host, source_set) (corestate_protect_interval_seconds{{{HOSTS}}})",
           "{{host}}/{{source_set}}"), unit="s",
          description="--interval; divided while an anomaly alert is fresh."),
        p("Watcher overflows and rescans (1h)",
          (f"sum by (host) (increase(corestate_protect_watcher_overflows_total{{{HOSTS}}}[1h]))",
           "{{host}} overflows"),
          (f"sum by (host, reason) (increase(corestate_protect_rescans_total{{{HOSTS}}}[1h]))",
           "{{host}} rescans: {{reason}}")),
        p("Protect process CPU",
          (f'rate(process_cpu_seconds_total{{job="corestate"}}[{RI}]) '
           f'* on (instance) group_left (process_command) target_info{{process_command="protect"}}',
           "{{instance}} CPU (cores)"), unit="none"),
        p("Protect process memory",
          ('process_resident_memory_bytes{job="corestate"} '
           '* on (instance) group_left (process_command) target_info{process_command="protect"}',
           "{{instance}} RSS"), unit="bytes"),
    ],
    variables=["host"],
)

PIPELINE = Dashboard(
    "corestate-pipeline", "CoreState / Kafka pipeline",
    "Distributed mode: records through each role, stage latency, consumer lag, dead "
    "letters, barrier waits and commit latency, and what agents publish.",
    [
        p("Records consumed per second",
          (f"sum by (role, topic) (rate(corestate_kafka_records_consumed_total[{RI}]))",
           "{{role}} <- {{topic}}")),
        p("Records produced per second",
          (f"sum by (role, topic) (rate(corestate_kafka_records_produced_total[{RI}]))",
           "{{role}} -> {{topic}}")),
        p("Stage latency p99",
          (f"histogram_quantile(0.99, sum by (le, role) (rate(corestate_stage_duration_seconds_bucket[{RI}])))",
           "{{role}}"), unit="s"),
        p("Consumer lag",
          ("sum by (group, topic) (max by (group, topic, partition) (corestate_kafka_consumer_lag))",
           "{{group}} {{topic}}"),
          description="High watermark minus committed offset; every worker reports the "
                      "group's lag, so it is de-duplicated with max."),
        p("Dead letters (1h)",
          ("sum by (stage, reason) (increase(corestate_kafka_dead_letters_total[1h]))",
           "{{stage}} {{reason}}")),
        p("Barrier wait p95",
          (f"histogram_quantile(0.95, sum by (le, role) (rate(corestate_barrier_wait_seconds_bucket[{RI}])))",
           "{{role}}"), unit="s"),
        p("Snapshot commit latency p95",
          (f"histogram_quantile(0.95, sum by (le) (rate(corestate_snapshot_commit_latency_seconds_bucket[{RI}])))",
           "run start to commit"), unit="s"),
        p("Agent runs",
          (f"sum by (host, kind) (increase(corestate_agent_runs_total[{RI}]))", "{{host}} {{kind}}")),
        p("Agent content published",
          (f"sum by (host) (rate(corestate_agent_published_bytes_total[{RI}]))", "{{host}}"),
          unit="Bps"),
    ],
)

ANOMALY = Dashboard(
    "corestate-anomaly", "CoreState / Anomaly detection",
    "Ransomware-like activity: window scores, alerts by host and severity, and how many "
    "files an attack touched before its alert.",
    [
        p("Latest window score",
          (f"max by (host) (corestate_anomaly_window_score{{{HOSTS}}})", "{{host}}"), unit="none",
          description="0 normal .. 1 most anomalous."),
        p("Window score p99",
          (f"histogram_quantile(0.99, sum by (le, host) (rate(corestate_anomaly_score_bucket{{{HOSTS}}}[{RI}])))",
           "{{host}}"), unit="none"),
        p("Alerts by host and severity (24h)",
          (f"sum by (host, severity) (increase(corestate_anomaly_alerts_total{{{HOSTS}}}[24h]))",
           "{{host}} {{severity}}"), kind="stat"),
        p("Files touched before the alert (mean)",
          (f"sum by (host) (corestate_anomaly_alert_files_sum{{{HOSTS}}}) / "
           f"sum by (host) (corestate_anomaly_alert_files_count{{{HOSTS}}})", "{{host}}"),
          kind="stat"),
        p("Windows scored per minute",
          (f"sum by (host) (rate(corestate_anomaly_score_count{{{HOSTS}}}[{RI}])) * 60", "{{host}}")),
    ],
    variables=["host"],
)

DASHBOARDS = (OVERVIEW, REPOSITORY, PROTECTION, PIPELINE, ANOMALY)


def _variable(name: str) -> dict[str, object]:
    return {"name": name, "label": name, "type": "query", "datasource": DS,
            "query": {"query": f"label_values(corestate_backup_runs_total, {name})",
                      "refId": f"{name}-values"},
            "definition": f"label_values(corestate_backup_runs_total, {name})",
            "includeAll": True, "allValue": ".*", "multi": True, "refresh": 2,
            "current": {"text": "All", "value": "$__all"}}


def render(d: Dashboard) -> dict[str, object]:
    panels = []
    x = y = 0
    for i, panel in enumerate(d.panels, start=1):
        if x + panel.width > 24:
            x, y = 0, y + 8
        targets = [{"datasource": DS, "expr": expr, "legendFormat": legend,
                    "refId": chr(ord("A") + n)} for n, (expr, legend) in enumerate(panel.queries)]
        entry: dict[str, object] = {
            "id": i, "type": panel.kind, "title": panel.title, "datasource": DS,
            "gridPos": {"x": x, "y": y, "w": panel.width, "h": 8},
            "targets": targets,
            "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
            "options": ({"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "value"}
                        if panel.kind == "stat" else
                        {"legend": {"displayMode": "list", "placement": "bottom"},
                         "tooltip": {"mode": "multi"}}),
        }
        if panel.description:
            entry["description"] = panel.description
        panels.append(entry)
        x += panel.width
    variables: list[dict[str, object]] = [
        {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus",
         "current": {}, "hide": 0}]
    variables += [_variable(v) for v in d.variables]
    return {"uid": d.uid, "title": d.title, "description": d.description,
            "tags": ["corestate"], "schemaVersion": 39, "version": 1, "editable": True,
            "time": {"from": "now-6h", "to": "now"}, "refresh": "30s",
            "timezone": "browser", "templating": {"list": variables}, "panels": panels,
            "annotations": {"list": []}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="fail if the checked-in JSON differs from what this script writes")
    args = parser.parse_args()
    OUT.mkdir(exist_ok=True)
    stale = []
    for d in DASHBOARDS:
        path = OUT / f"{d.uid}.json"
        text = json.dumps(render(d), indent=2, sort_keys=True) + "\n"
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(path.name)
        else:
            path.write_text(text)
    if stale:
        print(f"stale dashboards (run python {Path(__file__).name}): {', '.join(stale)}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
