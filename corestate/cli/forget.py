"""``corestate forget``: remove snapshots by policy (see :mod:`corestate.maintenance.forget`)."""

from __future__ import annotations

from datetime import datetime, timezone

import click
from rich.table import Table

from corestate.cli.context import Context, pass_ctx
from corestate.cli.main import cli
from corestate.cli.output import phase_bars, print_report
from corestate.errors import IntegrityError, PermanentError
from corestate.maintenance import forget as forgetting
from corestate.maintenance import prune as pruning
from corestate.maintenance.listing import local_time
from corestate.repository.backend import Kind
from corestate.repository.protected import is_protected, load_protected
from corestate.repository.repository import Repository
from corestate.repository.snapshot import Snapshot


def _table(ctx: Context, title: str, decisions: list[forgetting.Decision]) -> None:
    table = Table(box=None, header_style="bold", title=title, title_justify="left")
    for col in ("ID", "Time", "Host", "Tags", "Reasons", "Paths"):
        table.add_column(col)
    for d in sorted(decisions, key=lambda d: (d.snapshot.time, d.snapshot.id)):
        s = d.snapshot
        table.add_row(s.short_id, local_time(s.time), s.hostname, ",".join(s.tags),
                      "\n".join(d.reasons), "\n".join(s.paths))
    ctx.out.print(table)


def _show_groups(ctx: Context, policy: forgetting.Policy, groups: list[forgetting.Group]) -> None:
    ctx.info(f"Applying Policy: {policy.describe()}")
    for g in groups:
        what = []
        if g.host is not None:
            what.append(f"host [{g.host}]")
        if g.paths is not None:
            what.append(f"paths [{', '.join(g.paths)}]")
        if g.tags is not None:
            what.append(f"tags [{', '.join(g.tags)}]")
        ctx.info(f"snapshots for ({', '.join(what) or 'all'}):")
        keep = [d for d in g.decisions if d.keep]
        remove = [d for d in g.decisions if not d.keep]
        if not ctx.quiet:
            _table(ctx, f"keep {len(keep)} snapshots:", keep)
            if remove:
                _table(ctx, f"remove {len(remove)} snapshots:", remove)


def _snapshot_or_file(ctx: Context, repo: Repository, ref: str) -> Snapshot:
    """The snapshot ``ref`` names; for a snapshot file that cannot be loaded, a stand-in
    carrying only its id, so that `forget ID` can still remove a damaged file."""
    try:
        return repo.find_snapshot(ref)
    except IntegrityError as exc:
        snap_id = repo.resolve(Kind.SNAPSHOTS, ref)
        ctx.warn(f"snapshot {snap_id[:8]} cannot be loaded ({exc}); its file is removed as is")
        return Snapshot(time=0, tree=b"", paths=[], hostname="", username="", id=snap_id)


@cli.command()
@click.argument("snapshot_ids", nargs=-1, metavar="[SNAPSHOT]...")
@click.option("--keep-last", type=click.IntRange(0), default=0, metavar="N",
              help="Keep the N most recent snapshots.")
@click.option("--keep-hourly", type=click.IntRange(0), default=0, metavar="N",
              help="Keep the most recent snapshot of each of the last N hours that have one.")
@click.option("--keep-daily", type=click.IntRange(0), default=0, metavar="N",
              help="Keep the most recent snapshot of each of the last N days that have one.")
@click.option("--keep-weekly", type=click.IntRange(0), default=0, metavar="N",
              help="Keep the most recent snapshot of each of the last N ISO weeks.")
@click.option("--keep-monthly", type=click.IntRange(0), default=0, metavar="N",
              help="Keep the most recent snapshot of each of the last N months.")
@click.option("--keep-yearly", type=click.IntRange(0), default=0, metavar="N",
              help="Keep the most recent snapshot of each of the last N years.")
@click.option("--keep-tag", "keep_tags", multiple=True, metavar="TAG[,TAG...]",
              help="Keep snapshots that have all these tags (repeatable: any of the lists).")
@click.option("--host", help="Only consider snapshots of this host.")
@click.option("--group-by", default="host,paths", show_default=True, metavar="FIELDS",
              help="Apply the policy separately to each group of snapshots with the same "
                   "values of these comma-separated fields (host, paths, tags; '' = one group).")
@click.option("-n", "--dry-run", is_flag=True, help="Only show what would be removed.")
@click.option("--prune", "then_prune", is_flag=True,
              help="Run `corestate prune` afterwards (under the same lock).")
@pass_ctx
def forget(ctx: Context, snapshot_ids: tuple[str, ...], keep_last: int, keep_hourly: int,
           keep_daily: int, keep_weekly: int, keep_monthly: int, keep_yearly: int,
           keep_tags: tuple[str, ...], host: str | None, group_by: str, dry_run: bool,
           then_prune: bool) -> None:
    """Remove snapshots according to a retention policy, as `restic forget` does.

    Snapshots are grouped by host and paths; in each group, walking from the newest,
    a snapshot is kept if any --keep-* rule keeps it: --keep-last N keeps the N newest,
    --keep-daily N the newest snapshot of each of the N most recent days that have one
    (local time), and so on for hours, ISO weeks, months and years; --keep-tag keeps
    every snapshot with the given tags. Everything else is removed. With no policy
    forget refuses to run, rather than remove every snapshot. Alternatively, give
    SNAPSHOT ids (or `latest`) to remove exactly those.

    Snapshots on the protection list (`corestate/protected`, written by anomaly
    detection) are never removed, whatever the policy says. In an immutable repository
    (`init --immutable`), a snapshot whose S3 Object Lock has not ended stays; forget
    says which ones and until when.

    Removing snapshots frees no space by itself: run `corestate prune`, or pass
    --prune. Takes the exclusive lock. With --json, prints restic's shape: a list of
    groups with `host`, `paths`, `tags`, `keep`, `remove` and `reasons` (each reason:
    `snapshot`, `matches`, `counters`); with --prune, a second line `{"prune": ...}`.
    """
    policy = forgetting.Policy(
        last=keep_last, hourly=keep_hourly, daily=keep_daily, weekly=keep_weekly,
        monthly=keep_monthly, yearly=keep_yearly,
        tags=tuple(tuple(t.strip() for t in spec.split(",") if t.strip()) for spec in keep_tags))
    if snapshot_ids and not policy.empty():
        raise PermanentError("give either snapshot ids or a --keep-* policy, not both")
    fields = tuple(f.strip() for f in group_by.split(",") if f.strip())
    repo = ctx.open_repo()
    locked: dict[str, float] = {}  # snapshot id -> end of its S3 Object Lock
    with repo.locked(exclusive=True), phase_bars(ctx) as progress:
        if snapshot_ids:
            snaps = list({s.id: s for s in (_snapshot_or_file(ctx, repo, ref)
                                            for ref in snapshot_ids)}.values())
            protected = load_protected(repo)
            for s in snaps:
                if is_protected(s.id, protected):
                    raise PermanentError(f"snapshot {s.short_id} is on the protection list; "
                                         "it cannot be removed")
            removed = [] if dry_run else forgetting.remove_snapshots(repo, snaps, protected,
                                                                     progress, locked)
            groups = [forgetting.Group(None, None, None, [
                forgetting.Decision(s, False) for s in snaps])]
            doomed = [s.id for s in snaps]
        else:
            result = forgetting.forget(repo, policy, host, fields, dry_run, progress,
                                       ctx.damaged_snapshot)
            groups, doomed, removed = result.groups, result.removed, result.removed
            locked.update(result.locked)
        report = None
        if then_prune:
            report = pruning.prune(repo, pruning.PruneOptions(dry_run=dry_run), progress,
                                   lock=False)
    for snap_id, until in sorted(locked.items(), key=lambda item: item[1]):
        when = datetime.fromtimestamp(until, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        ctx.warn(f"snapshot {snap_id[:8]} cannot be removed yet: it is locked (S3 Object "
                 f"Lock) until {when}; it stays")
    if ctx.json:
        ctx.emit([g.to_json() for g in groups])
        if report is not None:
            ctx.emit({"prune": report.to_json()})
        return
    if not snapshot_ids:
        _show_groups(ctx, policy, groups)
    if dry_run:
        ctx.info(f"would remove {len(doomed)} snapshots (dry run)")
    else:
        ctx.info(f"removed {len(removed)} snapshots")
    if report is not None:
        print_report(ctx, report)
