"""``corestate restore``: write a snapshot's files back to disk."""

from __future__ import annotations

import click

from corestate.cli.context import Context, human_size, pass_ctx
from corestate.cli.main import cli
from corestate.errors import CoreStateError
from corestate.pipeline.restore import restore as run_restore


@cli.command()
@click.argument("snapshot")
@click.option("-t", "--target", required=True, type=click.Path(file_okay=False),
              help="Directory to restore into; files land at TARGET/<original absolute path>.")
@click.option("-i", "--include", "includes", multiple=True, metavar="PATTERN",
              help="Restore only paths matching PATTERN (glob on the path in the snapshot, "
                   "or on names when it has no /). Repeatable.")
@click.option("--host", help="With `latest`: the latest snapshot of this host.")
@pass_ctx
def restore(ctx: Context, snapshot: str, target: str, includes: tuple[str, ...],
            host: str | None) -> None:
    """Restore SNAPSHOT (an id prefix or `latest`) into TARGET.

    Content, modes, owners (as root), times with nanoseconds, symlinks, hardlinks,
    fifos and devices come back; sparse files stay sparse. Files whose data is damaged
    are reported and skipped, and the exit code is 1.
    """
    repo = ctx.open_repo()
    snap = repo.find_snapshot(snapshot, host=host)
    with ctx.progress(f"restore {snap.short_id}") as bar:
        result = run_restore(repo, snap, target, include=list(includes) or None,
                             progress=lambda files, nbytes: bar.update(
                                 completed=nbytes, detail=f"{files} files"))
    for path, msg in result.errors:
        ctx.warn(f"{path}: {msg}")
    if ctx.json:
        ctx.emit({"message_type": "summary", "snapshot_id": snap.id, "files_restored": result.files,
                  "dirs_restored": result.dirs, "bytes_restored": result.bytes_written,
                  "errors": [{"path": p, "error": m} for p, m in result.errors]})
    else:
        ctx.info(f"restored snapshot {snap.short_id}: {result.files} files, {result.dirs} "
                 f"directories, {human_size(result.bytes_written)} into {target}")
    if result.errors:
        raise CoreStateError(f"{len(result.errors)} item(s) could not be restored (listed above)")
