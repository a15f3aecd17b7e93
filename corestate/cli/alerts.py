"""``corestate alerts``: list, acknowledge and release anomaly alerts."""

from __future__ import annotations

import click

from corestate.cli.context import Context, pass_ctx
from corestate.cli.main import cli
from corestate.repository.alerts import Alert, AlertLedger


@cli.group()
def alerts() -> None:
    """Alerts raised by `corestate protect` and by agents (possible ransomware).

    Each alert locks its clean snapshot (the last one taken before the anomalous
    activity began) against forget and prune. Restore from it with `corestate restore
    ID`; `alerts ack` marks an alert seen; `alerts release` unlocks the snapshot.
    """


def _state(a: Alert) -> str:
    return "released" if a.released else "acked" if a.acked else "NEW"


@alerts.command("list")
@pass_ctx
def alerts_list(ctx: Context) -> None:
    """Show every alert, oldest first."""
    found = AlertLedger(ctx.open_repo()).load()
    if ctx.json:
        ctx.emit([a.to_json() for a in found])
        return
    if not found:
        ctx.info("no alerts")
        return
    ctx.info(f"{'ID':<12}  {'Time':<20}  {'Host':<12}  {'Score':>6}  {'Clean':<8}  "
             f"{'State':<8}  Paths  Reason")
    for a in found:
        ctx.info(f"{a.id:<12}  {a.time_text[:19].replace('T', ' '):<20}  {a.host[:12]:<12}  "
                 f"{a.score:6.3f}  {(a.clean_snapshot or '-')[:8]:<8}  {_state(a):<8}  "
                 f"{len(a.paths):>5}  {a.reason}")


@alerts.command("ack")
@click.argument("alert_id")
@pass_ctx
def alerts_ack(ctx: Context, alert_id: str) -> None:
    """Mark alert ALERT_ID (or an id prefix) as seen; its snapshot stays locked."""
    a = AlertLedger(ctx.open_repo()).ack(alert_id)
    ctx.result(a.to_json(), f"alert {a.id} acknowledged; snapshot "
                            f"{(a.clean_snapshot or '-')[:8]} stays locked until released")


@alerts.command("release")
@click.argument("alert_id")
@pass_ctx
def alerts_release(ctx: Context, alert_id: str) -> None:
    """Release alert ALERT_ID: its clean snapshot may be forgotten again (unless another
    unreleased alert still names it)."""
    a, unprotected = AlertLedger(ctx.open_repo()).release(alert_id)
    snap = (a.clean_snapshot or "-")[:8]
    text = (f"alert {a.id} released; snapshot {snap} is no longer protected" if unprotected
            else f"alert {a.id} released; snapshot {snap} stays protected" if a.clean_snapshot
            else f"alert {a.id} released")
    ctx.result({**a.to_json(), "unprotected": unprotected}, text)
