"""``corestate check``: verify the repository (see :mod:`corestate.maintenance.check`)."""

from __future__ import annotations

import click

from corestate.cli import monitoring
from corestate.cli.context import Context, human_size, pass_ctx
from corestate.cli.main import cli
from corestate.cli.output import phase_bars
from corestate.cli.access_log import open_recording, record_reads
from corestate.cli.times import access_time
from corestate.errors import CoreStateError, PermanentError
from corestate.maintenance import check as checking
from corestate.maintenance.tiering import archived_message, archived_packs


@cli.command()
@click.option("--read-data", is_flag=True,
              help="Also read every pack: its hash, its header, and every blob's "
                   "encryption, compression and id (reads the whole repository).")
@monitoring.oneshot_options()
@pass_ctx
def check(ctx: Context, read_data: bool) -> None:
    """Check the repository for errors, as `restic check` does.

    Loads every index; checks that every indexed pack exists with the size the index
    implies; loads every snapshot and tree and checks that every blob they reference is
    indexed. With --read-data it also reads every pack and verifies each byte. Packs
    that no index lists are reported as a note, not an error.

    Each problem names the pack and the blob ids affected and, where they can be
    found, the snapshot files that use them. Exits 1 ("check found N errors") when
    anything is wrong, 0 otherwise. With --json, prints one object with `ok`,
    `num_errors`, `errors` and `notes` (each with kind, message, pack, blobs, users).

    With --read-data the packs read are added to the repository's access log, as a
    restore's are (see `corestate tiering`); a failure to record is only a warning. If
    `corestate tiering --apply` moved packs to an archive class (GLACIER, DEEP_ARCHIVE),
    --read-data stops before reading and says how to make them readable.
    """
    mon = monitoring.start("check", ctx.password_file)
    repo, recorder = open_recording(ctx)
    cold = archived_packs(repo) if read_data else {}
    if cold:
        raise PermanentError(archived_message(cold, "check --read-data") + " (plain `corestate "
                             "check` reads no data pack)")
    started = access_time(ctx) if read_data else 0.0
    with ctx.read_lock(repo), phase_bars(ctx) as progress:
        try:
            report = checking.check(repo, read_data, progress)
        except (CoreStateError, OSError) as exc:
            mon.check(repo, read_data, None, f"check could not finish: {exc}")
            raise
        finally:
            if read_data:  # without it only tree packs are read, which tiering never moves
                record_reads(ctx, repo, recorder, "check", started)
    if ctx.json:
        ctx.emit(report.to_json())
    else:
        ctx.info(f"checked {report.index_files} index files, {report.packs} packs, "
                 f"{report.snapshots} snapshots, {report.trees} trees")
        if read_data:
            ctx.info(f"read {report.packs_read} packs ({human_size(report.bytes_read)}), "
                     f"{report.blobs_read} blobs")
        for note in report.notes:
            ctx.info(f"note: {note.message}")
        for problem in report.errors:
            ctx.err.print(f"error: {problem.message}", markup=False, style="red")
            for snap_id, path in problem.users:
                ctx.err.print(f"  used by snapshot {snap_id[:8]}: "
                              f"{path.decode('utf-8', 'backslashreplace')}", markup=False)
    mon.check(repo, read_data, len(report.errors))
    if not report.ok:
        raise CoreStateError(f"check found {len(report.errors)} errors")
    ctx.info("no errors were found")
