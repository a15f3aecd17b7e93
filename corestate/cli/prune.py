"""``corestate prune``: delete data no snapshot uses (see :mod:`corestate.maintenance.prune`)."""

from __future__ import annotations

import click

from corestate.cli.context import Context, pass_ctx
from corestate.cli.output import phase_bars, print_report
from corestate.cli.main import cli
from corestate.maintenance import prune as pruning


@cli.command()
@click.option("-n", "--dry-run", is_flag=True,
              help="Only report what would be deleted and repacked; change nothing.")
@click.option("--repack-below", type=click.FloatRange(0.0, 1.0), default=0.8,
              show_default=True, metavar="FRACTION",
              help="Rewrite a partly used pack when less than this fraction of its bytes "
                   "is still used.")
@pass_ctx
def prune(ctx: Context, dry_run: bool, repack_below: float) -> None:
    """Delete data that no snapshot uses any more, reclaiming space.

    Run it after `corestate forget`. Blobs in use are the union of every snapshot's blob
    bitmap (snapshots without a valid bitmap have their trees walked). Packs with no
    used blob are deleted; packs that are mostly unused, hold trees, or are small are
    rewritten with only their used blobs. A new index replaces the old ones before any
    pack is deleted, and every blob a snapshot needs is verified to be in it first, so
    an interrupted prune never loses data.

    Prune takes the exclusive lock: it refuses to run while a backup (or any other
    command holding a lock) is running. Stale `.tmp-` files left by killed writers are
    removed too.

    With --json, prints one object: packs_deleted, packs_repacked, packs_written,
    bytes_before, bytes_after, bytes_freed, and more.
    """
    repo = ctx.open_repo()
    opts = pruning.PruneOptions(dry_run=dry_run, repack_below=repack_below)
    with phase_bars(ctx) as progress:
        report = pruning.prune(repo, opts, progress)
    if ctx.json:
        ctx.emit(report.to_json())
    else:
        print_report(ctx, report)
