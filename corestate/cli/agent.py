"""``corestate agent``: scan paths and publish their capture events to Kafka (distributed
mode; see docs/distributed.md).

librdkafka client settings (TLS, SASL, compression, ...) come from ``--kafka-config FILE``
and ``CORESTATE_KAFKA_*`` environment variables, as for ``corestate topics``. With
``--schema-registry URL`` (or ``CORESTATE_SCHEMA_REGISTRY_URL``; client settings from
``CORESTATE_SCHEMA_REGISTRY_*``) events go out with schema-registry framing.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
from typing import TYPE_CHECKING

import click

from corestate.cli import monitoring
from corestate.cli.context import Context, human_size, pass_ctx
from corestate.cli.main import cli
from corestate.connectors.kafka_topics import DEFAULT_PREFIX, client_config, open_schema_registry
from corestate.errors import IncompleteBackupError, PermanentError

if TYPE_CHECKING:
    from corestate.agents.sentinel import AgentSentinel


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--bootstrap", metavar="HOST:PORT[,...]",
              help="Kafka bootstrap servers (else CORESTATE_KAFKA_BOOTSTRAP_SERVERS).")
@click.option("--host-id", help="Host name recorded in the snapshot (default: this host).")
@click.option("--once", is_flag=True, help="Publish one run and exit when every record is "
                                           "acknowledged (else: keep watching). It sends only "
                                           "what changed since the last --once run of the same "
                                           "paths, once that run is committed.")
@click.option("--full", is_flag=True, help="With --once: send everything, not only what changed.")
@click.option("-e", "--exclude", "excludes", multiple=True, metavar="PATTERN",
              help="Skip paths matching PATTERN (as for backup). Repeatable.")
@click.option("--tag", "tags", multiple=True, help="Tag the snapshot (repeatable).")
@click.option("--prefix", default=DEFAULT_PREFIX, show_default=True, help="Topic name prefix.")
@click.option("--kafka-config", type=click.Path(dir_okay=False), metavar="FILE",
              help="librdkafka settings as a properties file.")
@click.option("--schema-registry", "schema_registry", metavar="URL",
              help="Encode events with schema-registry framing, registering their schemas "
                   "at this Confluent-compatible registry (else CORESTATE_SCHEMA_REGISTRY_URL; "
                   "default: Avro single-object encoding, no registry). Client settings from "
                   "CORESTATE_SCHEMA_REGISTRY_* (e.g. _BASIC_AUTH_USER_INFO=user:password).")
@click.option("--detect/--no-detect", default=None,
              help="While watching, score the changes for ransomware-like behaviour and "
                   "publish alerts on <prefix>.alerts. Default: on when watching.")
@click.option("--alerts", "alerts_file", type=click.Path(dir_okay=False), metavar="FILE",
              help="Also append each alert to FILE as a JSON line (implies --detect).")
@click.option("--parent-wait", type=click.FloatRange(min=0), default=60.0, show_default=True,
              metavar="SECONDS", help="How long a run waits for the previous one to be "
                                      "committed, to send only what changed since; then it "
                                      "is a full run.")
@monitoring.service_options
@pass_ctx
def agent(ctx: Context, paths: tuple[str, ...], bootstrap: str | None, host_id: str | None,
          once: bool, full: bool, excludes: tuple[str, ...], tags: tuple[str, ...], prefix: str,
          kafka_config: str | None, schema_registry: str | None, detect: bool | None,
          alerts_file: str | None, parent_wait: float) -> None:
    """Publish PATHS as snapshots' capture events to <prefix>.captures.

    With --once: one run (one snapshot), then exit when every record is acknowledged;
    it sends only what changed since the last --once run of the same paths and excludes
    (remembered in the state directory) if the workers committed that run, else
    everything (--full: always everything).
    Without: a full run now, then a run after every change under PATHS (fanotify or
    inotify) that sends only what changed, until SIGTERM or Ctrl-C; changes are also
    scored for ransomware-like behaviour (see --detect). Workers (`corestate worker`)
    chunk, store and commit each run.
    """
    from corestate.agents.agent import ScanSummary, publish_changed, watch
    from corestate.connectors.kafka_agent import CapturePublisher, CommitFeed
    from corestate.schemas.codec import Codec

    if full and not once:
        raise PermanentError("--full goes with --once (a watching agent's first run is full)")
    if once and (alerts_file or detect):
        raise PermanentError("--alerts and --detect need a watching agent (without --once)")
    mon = monitoring.start("agent")
    client = client_config(kafka_config, bootstrap=bootstrap)
    codec = Codec(open_schema_registry(schema_registry))  # fail now if it does not answer
    if not ctx.verbose:
        client.setdefault("log_level", "2")
    host = host_id or socket.gethostname()

    def report(summary: ScanSummary) -> None:
        mon.agent_run(host, summary.parent is not None, summary.records, f"{prefix}.captures",
                      summary.bytes)
        for path in summary.inconsistent:
            ctx.warn(f"{path}: changed while being read; saved content may mix versions")
        for path, msg in summary.errors:
            ctx.warn(f"{path}: {msg}")
        if ctx.json:
            ctx.emit({"message_type": "run", "snapshot_id": summary.snapshot_id,
                      "parent": summary.parent, "rescanned": summary.rescanned,
                      "entries": summary.entries, "files": summary.files,
                      "bytes": summary.bytes, "records": summary.records,
                      "errors": [{"path": p, "error": m} for p, m in summary.errors]})
        else:
            kind = (f"{summary.rescanned} dirs rescanned onto {summary.parent[:8]}"
                    if summary.parent else "full")
            ctx.info(f"published {summary.snapshot_id} ({kind}): {summary.entries} entries, "
                     f"{summary.files} files, {human_size(summary.bytes)} in "
                     f"{summary.records} records")

    if not once:
        sentinel = _sentinel(ctx, list(paths), host, prefix, list(excludes), detect, alerts_file,
                             mon)
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        feed = CommitFeed(client, prefix, codec)
        with mon.failures("agent_failed"):
            watch(list(paths), CapturePublisher(client, prefix, codec), feed, host, stop,
                  excludes=list(excludes), tags=list(tags), on_run=report, sentinel=sentinel,
                  parent_wait=parent_wait)
        return
    feed = CommitFeed(client, prefix, codec)
    try:
        with mon.failures("agent_failed"):
            summary = publish_changed(CapturePublisher(client, prefix, codec), feed, list(paths),
                                      host, state_dir(prefix, host), excludes=list(excludes),
                                      tags=list(tags), full=full)
    finally:
        feed.close()
    report(summary)
    if summary.errors:
        raise IncompleteBackupError(f"{len(summary.errors)} file(s) could not be read (listed above)")


def state_dir(prefix: str, host: str) -> str:
    """The agent's own state: its detector's checkpoint, its last --once run."""
    base = os.environ.get("CORESTATE_STATE_DIR") or os.path.join(
        os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state"), "corestate")
    return os.path.join(base, "agent", f"{prefix}-{host}")


def _sentinel(ctx: Context, paths: list[str], host: str, prefix: str, excludes: list[str],
              detect: bool | None, alerts_file: str | None,
              mon: monitoring.Monitor) -> AgentSentinel | None:
    """The watching agent's anomaly detector, started; None if not wanted."""
    if detect is False and not alerts_file:
        return None
    from corestate.agents.sentinel import AgentSentinel, SentinelOptions  # noqa: F811

    state = os.path.join(state_dir(prefix, host), "detector.pkl")
    sentinel = AgentSentinel(paths, SentinelOptions(
        alerts_file=os.path.abspath(alerts_file) if alerts_file else None, state_path=state,
        host=host), excludes=excludes, on_alert=lambda a: _report_alert(ctx, a, prefix, mon))
    mon.detecting(host)
    sentinel.start()
    return sentinel


def _report_alert(ctx: Context, alert: object, prefix: str, mon: monitoring.Monitor) -> None:
    line = alert.line()  # type: ignore[attr-defined]
    mon.alert(line, f"{prefix}.alerts")
    if ctx.json:
        ctx.emit({"message_type": "alert", **line})
    else:
        clean = str(line["clean_snapshot"])[:8] if line["clean_snapshot"] else "none"
        ctx.warn(f"ALERT {line['id']}: possible ransomware (score {line['score']:.3f}: "
                 f"{line['reason']}); clean snapshot {clean}; {len(line['paths'])} paths, e.g. "
                 f"{', '.join(line['paths'][:3])}; published on {prefix}.alerts")
