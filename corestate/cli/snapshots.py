"""``corestate snapshots``: list snapshots (restic's JSON shape with --json)."""

from __future__ import annotations

from datetime import datetime

import click
from rich.table import Table

from corestate.cli.context import Context, pass_ctx
from corestate.cli.main import cli


@cli.command()
@click.option("--host", help="Only snapshots of this host.")
@click.option("--tag", "tags", multiple=True, help="Only snapshots with this tag (repeatable).")
@click.option("--path", "paths", multiple=True, help="Only snapshots of this path (repeatable).")
@pass_ctx
def snapshots(ctx: Context, host: str | None, tags: tuple[str, ...], paths: tuple[str, ...]) -> None:
    """List the snapshots in the repository, oldest first."""
    repo = ctx.open_repo()
    snaps = [s for s in repo.list_snapshots(ctx.damaged_snapshot)
             if (host is None or s.hostname == host)
             and all(t in s.tags for t in tags)
             and (not paths or set(paths) <= set(s.paths))]
    if ctx.json:
        ctx.emit([s.summary() for s in snaps])
        return
    table = Table(box=None, header_style="bold")
    for col in ("ID", "Time", "Host", "Tags", "Paths"):
        table.add_column(col)
    for s in snaps:
        when = datetime.fromtimestamp(s.time / 1e9).strftime("%Y-%m-%d %H:%M:%S")
        table.add_row(s.short_id, when, s.hostname, ",".join(s.tags), "\n".join(s.paths))
    ctx.out.print(table)
    ctx.info(f"{len(snaps)} snapshots")
