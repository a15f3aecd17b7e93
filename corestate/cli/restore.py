"""``corestate restore``: write a snapshot's files back to disk."""

from __future__ import annotations

import os

import click

from corestate.cli.access_log import open_recording, record_reads
from corestate.cli.context import Context, human_size, pass_ctx
from corestate.cli.main import cli
from corestate.cli.times import access_time, parse_when
from corestate.errors import CoreStateError, PermanentError
from corestate.maintenance.tiering import archived_message, archived_packs
from corestate.restore import Overwrite
from corestate.restore import restore as run_restore


@cli.command()
@click.argument("snapshot", required=False)
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
@click.option("--overwrite", type=click.Choice([o.value for o in Overwrite]), default=None,
              help="What to do where TARGET already has a file: always (the default: "
                   "replace it unless its content already equals the snapshot's, which is "
                   "read and compared), if-changed (the same, but a file with the "
                   "snapshot's size and modification time is taken as equal without "
                   "reading it), if-newer (replace it only if the snapshot's is newer), "
                   "never (keep it).")
@click.option("--delete", is_flag=True,
              help="Delete what TARGET holds that the snapshot does not, in the directories "
                   "restored (with --include, only what the patterns select), and replace "
                   "directories that are in the way of files.")
@pass_ctx
def restore(ctx: Context, snapshot: str | None, target: str, includes: tuple[str, ...],
            host: str | None, at: str | None, snap_path: str | None, overwrite: str | None,
            delete: bool) -> None:
    """Restore SNAPSHOT (an id prefix or `latest`, the default) into TARGET.

    Content, modes, owners (as root), times with nanoseconds, symlinks, hardlinks,
    fifos and devices come back; sparse files stay sparse. Files whose data is damaged
    are reported and skipped, and the exit code is 1. An --include that matches nothing
    in the snapshot is an error (exit 1) and nothing is written.

    Into a TARGET that is not empty, existing files are replaced (see --overwrite) and
    what the snapshot does not hold is kept (see --delete); without those options a
    warning says once how many entries that concerned.

    If `corestate tiering --apply` moved packs the snapshot needs to an archive class
    (GLACIER, DEEP_ARCHIVE), the restore stops before writing anything and says how to
    make them readable. The packs read are added to the repository's access log (`corestate tiering` uses
    it); if that cannot be written, a warning is printed and the restore still counts.
    CORESTATE_NOW (a time, as for --at) overrides the clock recorded there.
    """
    if at is not None and snapshot is not None:
        raise PermanentError(f"give either a SNAPSHOT ({snapshot}) or --at, not both")
    if delete and os.path.abspath(target) == "/" and not includes:
        raise PermanentError("--target / --delete would delete the whole system: "
                             "add --include to say what to restore")
    repo, recorder = open_recording(ctx)
    with ctx.read_lock(repo):  # prune waits for the restore instead of deleting its packs
        if at is not None:
            snap = repo.snapshot_at(parse_when(at), host=host, path=snap_path,
                                    on_damaged=ctx.damaged_snapshot)
        else:
            snap = repo.find_snapshot(snapshot or "latest", host=host,
                                      on_damaged=ctx.damaged_snapshot)
        cold = archived_packs(repo, snap)
        if cold and not includes:
            raise PermanentError(archived_message(cold, f"restoring snapshot {snap.short_id}"))
        if cold:
            ctx.warn(archived_message(cold, f"snapshot {snap.short_id}") + "; restoring what "
                     "--include selects anyway")
        started = access_time(ctx)
        try:
            with ctx.progress(f"restore {snap.short_id}") as bar:
                result = run_restore(repo, snap, target, include=list(includes) or None,
                                     progress=lambda files, nbytes: bar.update(
                                         completed=nbytes, detail=f"{files} files"),
                                     overwrite=Overwrite(overwrite or "always"), delete=delete)
            recorder.note(result.pack_reads)
        finally:
            record_reads(ctx, repo, recorder, "restore", started, snap.id)
    if includes and not result.selected:
        patterns = ", ".join(repr(p) for p in includes)
        raise PermanentError(f"--include {patterns}: nothing in snapshot {snap.short_id} "
                             "matches (`corestate ls` shows its paths); nothing was restored")
    for path, msg in result.errors:
        ctx.warn(f"{path}: {msg}")
    if result.touched_existing and overwrite is None and not delete:
        ctx.warn(f"{target} was not empty: {result.replaced} existing entries replaced, "
                 f"{result.unchanged} files already up to date, {result.extra} entries that "
                 "are not in the snapshot kept (--overwrite and --delete choose otherwise)")
    if ctx.json:
        ctx.emit({"message_type": "summary", "snapshot_id": snap.id, "files_restored": result.files,
                  "dirs_restored": result.dirs, "bytes_restored": result.bytes_written,
                  "files_unchanged": result.unchanged, "files_skipped": result.skipped,
                  "entries_replaced": result.replaced, "entries_deleted": result.deleted,
                  "extra_entries_kept": result.extra,
                  "errors": [{"path": p, "error": m} for p, m in result.errors]})
    else:
        existing = [f"{n} {what}" for n, what in (
            (result.unchanged, "unchanged"), (result.replaced, "replaced"),
            (result.skipped, "kept (--overwrite)"), (result.deleted, "deleted (--delete)"))
            if n]
        ctx.info(f"restored snapshot {snap.short_id}: {result.files} files, {result.dirs} "
                 f"directories, {human_size(result.bytes_written)} into {target}"
                 + (f" ({', '.join(existing)})" if existing else ""))
    if result.errors:
        raise CoreStateError(f"{len(result.errors)} item(s) could not be restored (listed above)")
