"""``corestate agent``: scan paths and publish their capture events to Kafka (distributed
mode; see docs/distributed.md).

librdkafka client settings (TLS, SASL, compression, ...) come from ``--kafka-config FILE``
and ``CORESTATE_KAFKA_*`` environment variables, as for ``corestate topics``.
"""

from __future__ import annotations

import signal
import socket
import threading

import click

from corestate.cli.context import Context, human_size, pass_ctx
from corestate.cli.main import cli
from corestate.connectors.kafka_topics import DEFAULT_PREFIX, client_config
from corestate.errors import IncompleteBackupError


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--bootstrap", metavar="HOST:PORT[,...]",
              help="Kafka bootstrap servers (else CORESTATE_KAFKA_BOOTSTRAP_SERVERS).")
@click.option("--host-id", help="Host name recorded in the snapshot (default: this host).")
@click.option("--once", is_flag=True, help="Scan once, publish, and exit when every record "
                                           "is acknowledged (else: keep watching).")
@click.option("-e", "--exclude", "excludes", multiple=True, metavar="PATTERN",
              help="Skip paths matching PATTERN (as for backup). Repeatable.")
@click.option("--tag", "tags", multiple=True, help="Tag the snapshot (repeatable).")
@click.option("--prefix", default=DEFAULT_PREFIX, show_default=True, help="Topic name prefix.")
@click.option("--kafka-config", type=click.Path(dir_okay=False), metavar="FILE",
              help="librdkafka settings as a properties file.")
@pass_ctx
def agent(ctx: Context, paths: tuple[str, ...], bootstrap: str | None, host_id: str | None,
          once: bool, excludes: tuple[str, ...], tags: tuple[str, ...], prefix: str,
          kafka_config: str | None) -> None:
    """Publish PATHS as snapshots' capture events to <prefix>.captures.

    With --once: one run (one snapshot), then exit when every record is acknowledged.
    Without: a run now, and another after every change under PATHS (inotify), until
    SIGTERM or Ctrl-C. Workers (`corestate worker`) chunk, store and commit each run.
    """
    from corestate.agents.agent import ScanSummary, publish_once, watch

    client = client_config(kafka_config, bootstrap=bootstrap)
    if not ctx.verbose:
        client.setdefault("log_level", "2")
    host = host_id or socket.gethostname()

    def report(summary: ScanSummary) -> None:
        for path in summary.inconsistent:
            ctx.warn(f"{path}: changed while being read; saved content may mix versions")
        for path, msg in summary.errors:
            ctx.warn(f"{path}: {msg}")
        if ctx.json:
            ctx.emit({"snapshot_id": summary.snapshot_id, "entries": summary.entries,
                      "files": summary.files, "bytes": summary.bytes, "records": summary.records,
                      "errors": [{"path": p, "error": m} for p, m in summary.errors]})
        else:
            ctx.info(f"published {summary.snapshot_id}: {summary.entries} entries, "
                     f"{summary.files} files, {human_size(summary.bytes)} in "
                     f"{summary.records} records")

    if not once:
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        watch(list(paths), client, host, stop, prefix=prefix, excludes=list(excludes),
              tags=list(tags), on_run=report)
        return
    summary = publish_once(list(paths), client, host=host, prefix=prefix,
                           excludes=list(excludes), tags=list(tags))
    report(summary)
    if summary.errors:
        raise IncompleteBackupError(f"{len(summary.errors)} file(s) could not be read (listed above)")
