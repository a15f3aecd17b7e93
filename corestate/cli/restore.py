"""``corestate restore``: write a snapshot's files back to disk."""

from __future__ import annotations

import os
import time
from datetime import datetime

import click

from corestate.cli.context import Context, human_size, pass_ctx
from corestate.cli.main import cli
from corestate.connectors.url import open_backend
from corestate.errors import CoreStateError, PermanentError
from corestate.maintenance.tiering import (AccessRun, RecordingBackend, archived_message,
                                           archived_packs, save_access_log)
from corestate.pipeline.restore import restore as run_restore
from corestate.repository.repository import Repository


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


def access_time(ctx: Context) -> float:
    """Now, in seconds since the epoch, as recorded for pack reads: ``CORESTATE_NOW``
    when set (same forms as ``--at``; a fixed clock for what-if runs and tests), else
    the system clock (with a warning if ``CORESTATE_NOW`` cannot be read)."""
    fixed = os.environ.get("CORESTATE_NOW")
    if fixed:
        try:
            return parse_when(fixed) / 1e9
        except PermanentError as exc:
            ctx.warn(f"CORESTATE_NOW{exc.message.removeprefix('--at')}; recording the "
                     "system time instead")
    return time.time()


def open_recording(ctx: Context) -> tuple[Repository, RecordingBackend]:
    """The repository, opened through a backend that notes which packs are read."""
    recorder = RecordingBackend(open_backend(ctx.url()))
    return Repository.open(recorder, ctx.password()), recorder


def record_reads(ctx: Context, repo: Repository, recorder: RecordingBackend, command: str,
                 when: float, snapshot: str | None = None) -> None:
    """Add the packs this run read to the access log (for `corestate tiering`); a
    failure is a warning, never the command's failure."""
    try:
        save_access_log(repo, AccessRun(when, command, recorder.reads, snapshot))
    except (CoreStateError, OSError) as exc:
        ctx.warn(f"could not record which packs were read (for `corestate tiering`): {exc}")


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

    If `corestate tiering --apply` moved packs the snapshot needs to an archive class
    (GLACIER, DEEP_ARCHIVE), the restore stops before writing anything and says how to
    make them readable. The packs read are added to the repository's access log (`corestate tiering` uses
    it); if that cannot be written, a warning is printed and the restore still counts.
    CORESTATE_NOW (a time, as for --at) overrides the clock recorded there.
    """
    if at is not None and snapshot != "latest":
        raise PermanentError("give either a SNAPSHOT or --at, not both")
    repo, recorder = open_recording(ctx)
    if at is not None:
        snap = repo.snapshot_at(parse_when(at), host=host, path=snap_path)
    else:
        snap = repo.find_snapshot(snapshot, host=host)
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
                                     completed=nbytes, detail=f"{files} files"))
    finally:
        record_reads(ctx, repo, recorder, "restore", started, snap.id)
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
