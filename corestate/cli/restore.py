"""``corestate restore``: write a snapshot's files back to disk."""

from __future__ import annotations

from datetime import datetime

import click

from corestate.cli.context import Context, human_size, pass_ctx
from corestate.cli.main import cli
from corestate.errors import CoreStateError, PermanentError
from corestate.pipeline.restore import restore as run_restore


def parse_when(text: str) -> int:
    """A point in time as ns since the epoch: ISO 8601 / RFC 3339 (local time when no
    offset is given), or a Unix timestamp."""
    try:
        return int(float(text) * 1e9)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise PermanentError(f"--at: cannot read {text!r} as a time "
                             "(use e.g. 2026-11-28T14:05:30 or a Unix timestamp)") from None
    if when.tzinfo is None:
        when = when.astimezone()  # local time
    return int(when.timestamp() * 1e9)


@cli.command()
@click.argument("snapshot", default="latest")
@click.option("-t", "--target", required=True, type=click.Path(file_okay=False),
              help="Directory to restore into; files land at TARGET/<original absolute path>.")
@click.option("-i", "--include", "includes", multiple=True, metavar="PATTERN",
              help="Restore only paths matching PATTERN (glob on the path in the snapshot, "
                   "or on names when it has no /). Repeatable.")
@click.option("--host", help="With `latest` or --at: only snapshots of this host.")
@click.option("--at", "at", metavar="TIME",
              help="Restore the tree as it was at TIME: the newest snapshot taken at or "
                   "before it (ISO 8601, local time unless an offset is given, or a Unix "
                   "timestamp). With --path, only snapshots containing that path.")
@click.option("--path", "snap_path", metavar="PATH", help="With --at: snapshots of this path.")
@pass_ctx
def restore(ctx: Context, snapshot: str, target: str, includes: tuple[str, ...],
            host: str | None, at: str | None, snap_path: str | None) -> None:
    """Restore SNAPSHOT (an id prefix or `latest`, the default) into TARGET.

    Content, modes, owners (as root), times with nanoseconds, symlinks, hardlinks,
    fifos and devices come back; sparse files stay sparse. Files whose data is damaged
    are reported and skipped, and the exit code is 1.
    """
    if at is not None and snapshot != "latest":
        raise PermanentError("give either a SNAPSHOT or --at, not both")
    repo = ctx.open_repo()
    if at is not None:
        snap = repo.snapshot_at(parse_when(at), host=host, path=snap_path)
    else:
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
