"""``corestate backup``: one backup of the given paths, then the snapshot it made."""

from __future__ import annotations

import click

from corestate.cli import monitoring
from corestate.cli.context import Context, human_size, pass_ctx
from corestate.cli.main import cli
from corestate.errors import IncompleteBackupError
from corestate.pipeline.backup import BackupOptions, BackupSummary, backup as run_backup


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("-e", "--exclude", "excludes", multiple=True, metavar="PATTERN",
              help="Skip paths matching PATTERN (glob; without / it matches any name; "
                   "** spans directories). Repeatable.")
@click.option("--exclude-file", type=click.File(), multiple=True,
              help="Read exclude patterns from a file, one per line (# comments).")
@click.option("--tag", "tags", multiple=True, help="Tag the snapshot (repeatable).")
@click.option("--host", help="Hostname recorded in the snapshot (default: this host).")
@click.option("--parent", metavar="SNAPSHOT",
              help="Compare against this snapshot (default: latest of the same host and paths).")
@click.option("--force", is_flag=True, help="Re-read every file, even unchanged ones.")
@monitoring.oneshot_options(max_age=True)
@pass_ctx
def backup(ctx: Context, paths: tuple[str, ...], excludes: tuple[str, ...],
           exclude_file: tuple, tags: tuple[str, ...], host: str | None,  # type: ignore[type-arg]
           parent: str | None, force: bool) -> None:
    """Back up PATHS into the repository as one new snapshot.

    Unchanged files (same size, mtime, ctime and inode as in the parent snapshot) are
    not read again. Unreadable files are reported and skipped: the snapshot is still
    saved and the exit code is 3. The parent snapshot's trees are read from a cache in
    the state directory ($CORESTATE_STATE_DIR or ~/.local/state/corestate), encrypted
    with the repository key; deleting it only makes the next backup slower.
    """
    patterns = list(excludes)
    for f in exclude_file:
        patterns += [ln.strip() for ln in f if ln.strip() and not ln.lstrip().startswith("#")]
    opts = BackupOptions(paths=list(paths), excludes=patterns, tags=list(tags), parent=parent,
                         force=force)
    if host:
        opts.hostname = host
    mon = monitoring.start("backup", ctx.password_file)
    repo = ctx.open_repo()
    opts.block_store = ctx.block_store(repo)
    opts.listings = ctx.listings(repo)
    with ctx.progress("backup", bytes_=True) as bar:
        def progress(s: BackupSummary, _path: str) -> None:
            bar.update(completed=s.total_bytes_processed,
                       detail=f"{s.total_files_processed} files")
        summary = mon.backup(repo, opts.paths, opts.hostname,
                             lambda: run_backup(repo, opts, progress))
    for warning in summary.warnings:
        ctx.warn(warning)
    for path in summary.inconsistent:
        ctx.warn(f"{path}: changed while being read; saved content may mix versions")
    for path, msg in summary.errors:
        ctx.warn(f"{path}: {msg}")
    if ctx.json:
        ctx.emit(json_summary(summary))
    else:
        ctx.info(f"Files: {summary.files_new} new, {summary.files_changed} changed, "
                 f"{summary.files_unmodified} unmodified")
        ctx.info(f"Dirs:  {summary.dirs_new} new, {summary.dirs_changed} changed, "
                 f"{summary.dirs_unmodified} unmodified")
        ctx.info(f"Added to the repository: {human_size(summary.data_added + summary.tree_added)} "
                 f"({human_size(summary.data_added_packed)} stored; {summary.data_blobs} "
                 f"data blobs, {summary.tree_blobs} tree blobs)")
        ctx.info(f"processed {summary.total_files_processed} files, "
                 f"{human_size(summary.total_bytes_processed)} in {summary.total_duration:.2f}s")
        ctx.info(f"snapshot {summary.snapshot_id[:8]} saved")
    if summary.errors:
        raise IncompleteBackupError(
            f"snapshot {summary.snapshot_id[:8]} saved, but {len(summary.errors)} "
            "file(s) could not be read (listed above)")


def json_summary(summary: BackupSummary) -> dict[str, object]:
    """The last line of ``backup --json``: restic's summary message (restic's field names,
    in restic's order, so tools written for ``restic backup --json`` read it), then
    CoreState's own fields: ``data_added_packed`` (restic 0.17's name), the parent, and
    what went wrong. ``snapshot_id`` is the full id, as restic prints it since 0.15
    (0.14 printed the first 8 digits)."""
    return {"message_type": "summary",
            "files_new": summary.files_new, "files_changed": summary.files_changed,
            "files_unmodified": summary.files_unmodified,
            "dirs_new": summary.dirs_new, "dirs_changed": summary.dirs_changed,
            "dirs_unmodified": summary.dirs_unmodified,
            "data_blobs": summary.data_blobs, "tree_blobs": summary.tree_blobs,
            "data_added": summary.data_added + summary.tree_added,  # restic: trees too
            "total_files_processed": summary.total_files_processed,
            "total_bytes_processed": summary.total_bytes_processed,
            "total_duration": summary.total_duration,
            "snapshot_id": summary.snapshot_id,
            "data_added_packed": summary.data_added_packed, "parent": summary.parent,
            "errors": [{"path": p, "error": m} for p, m in summary.errors],
            "inconsistent": summary.inconsistent, "warnings": summary.warnings,
            "complete": summary.complete}
