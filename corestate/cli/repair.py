"""``corestate repair index|snapshots``: mend a damaged repository
(see :mod:`corestate.maintenance.repair`)."""

from __future__ import annotations

import click

from corestate.cli.context import Context, pass_ctx
from corestate.cli.main import cli
from corestate.cli.output import phase_bars
from corestate.maintenance import repair as repairing


@cli.group()
def repair() -> None:
    """Mend a damaged repository, as `restic repair` (0.16+) does.

    Run `corestate repair index` first, then `corestate repair snapshots`, then
    `corestate check`; `corestate prune` then removes what nothing uses any more.
    """


@repair.command("index")
@click.option("--read-all-packs", is_flag=True,
              help="Ignore the index files and read every pack's header.")
@pass_ctx
def repair_index(ctx: Context, read_all_packs: bool) -> None:
    """Rebuild the index from the packs.

    Index files that do not load are dropped; packs no index lists, or whose size
    differs from what the index says, are indexed from their own headers; index
    entries of packs that are gone are forgotten; packs whose header cannot be read
    are skipped and named. The new index replaces every old index file. Takes the
    exclusive lock. With --json, prints one object with the lists of packs and index
    files concerned.
    """
    repo = ctx.open_repo()
    with repo.locked(exclusive=True), phase_bars(ctx) as progress:
        report = repairing.repair_index(repo, read_all_packs, progress)
    if ctx.json:
        ctx.emit(report.to_json())
        return
    for name in report.index_files_dropped:
        ctx.warn(f"index {name[:16]} does not load; dropped")
    for pack in report.packs_skipped:
        ctx.warn(f"pack {pack[:16]}: its header cannot be read; not indexed (prune removes it)")
    ctx.info(f"{len(report.packs_added)} packs added to the index, "
             f"{len(report.packs_reindexed)} re-indexed, {len(report.packs_forgotten)} "
             f"missing packs forgotten; wrote {report.index_files_written} index files, "
             f"removed {report.index_files_removed}")


@repair.command("snapshots")
@click.argument("snapshot_ids", nargs=-1, metavar="[SNAPSHOT]...")
@click.option("--forget", is_flag=True, help="Remove the original of every repaired snapshot.")
@click.option("-n", "--dry-run", is_flag=True, help="Only tell what would change.")
@pass_ctx
def repair_snapshots(ctx: Context, snapshot_ids: tuple[str, ...], forget: bool,
                     dry_run: bool) -> None:
    """Rewrite snapshots so they reference only data the index holds.

    Files lose the data blobs that are not indexed (their size shrinks to match),
    directories whose tree cannot be loaded become empty, entries a restore would
    refuse (damaged, unsafe or duplicate names) are dropped, and a snapshot whose root
    tree cannot be loaded is removed. Each changed snapshot is saved anew, tagged
    `repaired`; --forget removes the originals. Without SNAPSHOT, all snapshots.
    Everything taken away is listed. This loses data: if the files still exist, a new
    backup is the better repair. Takes the exclusive lock (none with --dry-run).
    """
    repo = ctx.open_repo()
    ids = list(snapshot_ids) or None
    with phase_bars(ctx) as progress:
        if dry_run:
            report = repairing.repair_snapshots(repo, ids, forget, True, progress)
        else:
            with repo.locked(exclusive=True):
                report = repairing.repair_snapshots(repo, ids, forget, False, progress)
    if ctx.json:
        ctx.emit(report.to_json())
        return
    would = "would be " if dry_run else ""
    for snap_id, error in report.unreadable:
        ctx.warn(f"snapshot file {snap_id[:8]} cannot be loaded and was left as it is: {error}")
    for snap, path, what in report.lost:
        ctx.info(f"snapshot {snap[:8]} {path.decode('utf-8', 'backslashreplace')}: {what}")
    for old, new in report.modified:
        ctx.info(f"snapshot {old[:8]} {would}repaired" + (f" as {new[:8]}" if new else "")
                 + (" (original removed)" if old in report.forgotten else ""))
    for old in report.removed:
        ctx.info(f"snapshot {old[:8]} {would}removed: its root tree cannot be loaded")
    if not report.modified and not report.removed:
        ctx.info(f"no snapshots {would or 'were '}modified")
