"""``corestate diff``: compare two snapshots (see :mod:`corestate.maintenance.diff`)."""

from __future__ import annotations

import click

from corestate.cli.context import Context, human_size, pass_ctx
from corestate.cli.output import Skipped, echo_raw
from corestate.cli.main import cli
from corestate.maintenance import diff as diffing
from corestate.maintenance.listing import show


@cli.command()
@click.argument("first", metavar="SNAPSHOT1")
@click.argument("second", metavar="SNAPSHOT2")
@click.option("--metadata", is_flag=True,
              help="Also show nodes whose metadata (mode, times, owner, ...) changed (U).")
@pass_ctx
def diff(ctx: Context, first: str, second: str, metadata: bool) -> None:
    """Show what changed between two snapshots, as `restic diff` does.

    SNAPSHOT1 and SNAPSHOT2 are ids (unique prefixes) or `latest`. Each change is
    printed as a modifier and a path: `+` added, `-` removed, `M` file content
    modified, `T` type changed, `U` metadata changed (with --metadata; access times
    are ignored). Directories end with `/`. A summary follows: files, directories and
    other nodes added and removed, and the data and tree blobs (with their bytes) that
    SNAPSHOT2 references and SNAPSHOT1 does not (added) and the reverse (removed),
    computed from the snapshots' blob bitmaps.

    With --json, prints one object: `source_snapshot`, `target_snapshot`, `changes`
    (list of `path`, `modifier`), `changed_files`, and `added` / `removed` with
    `files`, `dirs`, `others`, `data_blobs`, `tree_blobs`, `bytes`, `stored_bytes`.
    """
    repo = ctx.open_repo()
    with ctx.read_lock(repo):
        repo.load_index()
        source, target = (repo.find_snapshot(ref, on_damaged=ctx.damaged_snapshot)
                          for ref in (first, second))
        skipped = Skipped(ctx)
        result = diffing.diff(repo, source, target, metadata, skipped)
    if ctx.json:
        ctx.emit(result.to_json())
        skipped.finish()
        return
    ctx.info(f"comparing snapshot {source.short_id} to {target.short_id}:\n")
    for change in result.changes:
        echo_raw(f"{change.modifier:<5}{show(change.path)}")
    a, r = result.added, result.removed
    ba, br = result.blobs_added, result.blobs_removed
    ctx.info("")
    ctx.info(f"Files:       {a.files:5d} new, {r.files:5d} removed, {result.changed_files:5d} changed")
    ctx.info(f"Dirs:        {a.dirs:5d} new, {r.dirs:5d} removed")
    ctx.info(f"Others:      {a.others:5d} new, {r.others:5d} removed")
    ctx.info(f"Data Blobs:  {ba.data_blobs:5d} new, {br.data_blobs:5d} removed")
    ctx.info(f"Tree Blobs:  {ba.tree_blobs:5d} new, {br.tree_blobs:5d} removed")
    ctx.info(f"  Added:   {human_size(ba.bytes)}")
    ctx.info(f"  Removed: {human_size(br.bytes)}")
    skipped.finish()
