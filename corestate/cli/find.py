"""``corestate find``: search snapshots by glob (see :mod:`corestate.maintenance.find`)."""

from __future__ import annotations

import click

from corestate.cli.context import Context, pass_ctx
from corestate.cli.output import Skipped, echo_raw
from corestate.cli.main import cli
from corestate.maintenance import find as finding
from corestate.maintenance.listing import local_time, show


@cli.command()
@click.argument("patterns", nargs=-1, required=True, metavar="PATTERN...")
@click.option("-s", "--snapshot", "snapshot_refs", multiple=True, metavar="ID",
              help="Search only this snapshot (id prefix or `latest`; repeatable).")
@click.option("--host", help="Search only snapshots of this host.")
@click.option("-i", "--ignore-case", is_flag=True, help="Match without regard to case.")
@pass_ctx
def find(ctx: Context, patterns: tuple[str, ...], snapshot_refs: tuple[str, ...],
         host: str | None, ignore_case: bool) -> None:
    """Find files and directories by name across snapshots.

    PATTERN is a shell glob (`*`, `?`, `[...]`; quote it). Without `/` it matches a
    node's base name (`*.docx`); with `/` it matches the path component by component:
    an absolute pattern from the root (`/home/*/notes.txt`), a relative one the last
    components (`docs/*.txt`); `**` matches any number of directories. All snapshots
    are searched, oldest first, unless --snapshot is given.

    Prints the snapshot's short id, size, modification time and path of each match.
    With --json, prints a list of matches with `snapshot`, `path`, `size`, `mtime`,
    `type`, `mode`, `uid`, `gid`.
    """
    repo = ctx.open_repo()
    with ctx.read_lock(repo):
        repo.load_index()
        snaps = ctx.chosen_snapshots(repo, snapshot_refs, host)
        skipped = Skipped(ctx)
        matches = finding.find(repo, patterns, snaps, ignore_case, skipped)
        if ctx.json:
            ctx.emit([m.to_json() for m in matches])
            skipped.finish()
            return
        count = 0
        for m in matches:
            count += 1
            echo_raw(f"{m.snapshot.short_id}  {m.node.size:>12}  {local_time(m.node.mtime)}  "
                          f"{show(m.path)}{'/' if m.node.type == 'dir' else ''}")
        ctx.info(f"{count} matches in {len(snaps)} snapshots")
        skipped.finish()
