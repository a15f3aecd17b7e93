"""``corestate protect``: continuous protection of directories (embedded mode)."""

from __future__ import annotations

import os
import signal
import socket
from types import FrameType

import click

from corestate.agents.protect import ConsistencyPoint, Protector, ProtectOptions
from corestate.agents.sentinel import ProtectSentinel, SentinelOptions
from corestate.cli import monitoring
from corestate.cli.context import Context, human_size, pass_ctx
from corestate.cli.main import cli
from corestate.kernel.watch import ChangeBatch
from corestate.repository.alerts import Alert


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--interval", type=float, default=2.0, show_default=True, metavar="SECONDS",
              help="At most one snapshot per interval, whenever something changed.")
@click.option("-e", "--exclude", "excludes", multiple=True, metavar="PATTERN",
              help="Skip paths matching PATTERN (as for backup). Caches and the "
                   "repository itself are always skipped. Repeatable.")
@click.option("--tag", "tags", multiple=True, help="Tag every snapshot (repeatable).")
@click.option("--host", help="Hostname recorded in the snapshots.")
@click.option("--detect/--no-detect", default=True, show_default=True,
              help="Watch the changes for ransomware-like behaviour. An alert locks the "
                   "last clean snapshot against forget/prune, raises the capture cadence, "
                   "and is recorded in the repository (`corestate alerts list`).")
@click.option("--alerts", "alerts_file", type=click.Path(dir_okay=False), metavar="FILE",
              help="Also append each alert to FILE as a JSON line; an alert that grows "
                   "(more paths, a higher score) is appended again with the same id: the "
                   "last line of an id is the alert as it stands.")
@monitoring.service_options
@pass_ctx
def protect(ctx: Context, paths: tuple[str, ...], interval: float, excludes: tuple[str, ...],
            tags: tuple[str, ...], host: str | None, detect: bool,
            alerts_file: str | None) -> None:
    """Protect PATHS continuously: a catch-up snapshot now, then one within seconds of
    every change, watching the changes for ransomware.

    Watches with inotify (fanotify where permitted); after a change only the changed
    directories are read again. Every change is scored by the anomaly detector (its
    state is kept in the state directory, $CORESTATE_STATE_DIR or
    ~/.local/state/corestate); see `corestate alerts` for what an alert does and how to
    release it. SIGTERM or Ctrl-C commits what is pending, then exits. With --json,
    prints one JSON object per snapshot and one per alert.
    """
    if alerts_file and not detect:
        raise click.UsageError("--alerts needs detection: drop --no-detect")
    mon = monitoring.start("protect", ctx.password_file)
    repo = ctx.open_repo()
    block_store = ctx.block_store(repo)
    opts = ProtectOptions(list(paths), list(excludes), list(tags), interval=interval,
                          hostname=host, block_store=block_store, listings=ctx.listings(repo))
    sentinel = None
    if detect:
        state = os.path.join(ctx.state_dir(repo), "detector.pkl")
        sentinel = ProtectSentinel(
            repo, opts, SentinelOptions(alerts_file=os.path.abspath(alerts_file) if alerts_file
                                        else None, state_path=state),
            on_alert=lambda a: _report_alert(ctx, a, mon))
        mon.detecting(sentinel.options.host)

    def on_point(point: ConsistencyPoint) -> None:
        _report(ctx, point)
        mon.protect_point(point)
        if sentinel is not None:
            sentinel.on_point(point)

    def on_batch(batch: ChangeBatch) -> None:
        mon.protect_batch(batch)
        if sentinel is not None:
            sentinel.on_batch(batch)

    def on_error(exc: Exception) -> None:
        ctx.warn(f"snapshot failed, retrying: {exc}")
        mon.protect_failed(exc)

    protector = Protector(repo, opts, on_point=on_point, on_batch=on_batch, on_error=on_error)
    mon.protect(repo, protector.paths, host or socket.gethostname(), lambda: opts.interval)

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        protector.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    ctx.info(f"protecting {', '.join(paths)} (snapshots at most every {interval:g}s"
             f"{'' if detect else ', no ransomware detection'}); Ctrl-C to stop")
    if sentinel is None:
        protector.run()
        return
    sentinel.start()
    try:
        protector.run()
    finally:
        sentinel.close()


def _report_alert(ctx: Context, alert: Alert, mon: monitoring.Monitor) -> None:
    line = alert.line()
    mon.alert(line)
    if ctx.json:
        ctx.emit({"message_type": "alert", **line})
    else:
        clean = (f"clean snapshot {alert.clean_snapshot[:8]} is locked" if alert.clean_snapshot
                 else "no clean snapshot yet")
        ctx.warn(f"ALERT {alert.id}: possible ransomware (score {alert.score:.3f}: "
                 f"{alert.reason}); {clean}; {len(alert.paths)} paths, e.g. "
                 f"{', '.join(alert.paths[:3])}; see `corestate alerts list`")


def _report(ctx: Context, point: ConsistencyPoint) -> None:
    s = point.summary
    for path, msg in s.errors:
        ctx.warn(f"{path}: {msg}")
    if ctx.json:
        ctx.emit({"message_type": "snapshot", "snapshot_id": s.snapshot_id,
                  "started": point.started, "committed": point.committed,
                  "full_scan": point.full_scan, "dirty_dirs": point.dirty_dirs,
                  "files_new": s.files_new, "files_changed": s.files_changed,
                  "data_added": s.data_added, "errors": len(s.errors)})
    else:
        kind = "catch-up scan" if point.full_scan else f"{point.dirty_dirs} dirs changed"
        ctx.info(f"snapshot {s.snapshot_id[:8]}: {kind}, {s.files_new} new, "
                 f"{s.files_changed} changed, +{human_size(s.data_added)} "
                 f"in {point.committed - point.started:.2f}s")
