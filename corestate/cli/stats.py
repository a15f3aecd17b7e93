"""``corestate stats``: sizes of snapshots and of the repository
(see :mod:`corestate.maintenance.stats`)."""

from __future__ import annotations

import click

from corestate.cli.context import Context, human_size, pass_ctx
from corestate.cli.output import Skipped
from corestate.cli.main import cli
from corestate.cli.output import phase_bars
from corestate.maintenance import stats as statistics


@cli.command()
@click.argument("snapshot_refs", nargs=-1, metavar="[SNAPSHOT]...")
@click.option("--mode", type=click.Choice(statistics.MODES), default="restore-size",
              show_default=True,
              help="restore-size: what a restore would write; raw-data: the stored blobs "
                   "the snapshots reference, each counted once.")
@click.option("--host", help="Only snapshots of this host.")
@pass_ctx
def stats(ctx: Context, snapshot_refs: tuple[str, ...], mode: str, host: str | None) -> None:
    """Show how much data snapshots hold, as `restic stats` does, plus repository totals.

    Without SNAPSHOT, all snapshots (of --host) are counted. restore-size sums the sizes
    of every node as restored (a hardlinked file once per snapshot) and counts every
    node, directories included. raw-data counts each blob the snapshots reference once
    (from their blob bitmaps): its stored size, its uncompressed size and the
    compression ratio. The repository totals cover every pack and indexed blob.

    With --json, prints one object with restic's fields (`total_size`,
    `total_file_count`, `snapshots_count`; for raw-data also `total_blob_count`,
    `total_uncompressed_size`, `compression_ratio`) plus `mode` and `repository`
    (`packs`, `pack_bytes`, `blobs`, `stored_bytes`, `uncompressed_bytes`,
    `compression_ratio`).
    """
    repo = ctx.open_repo()
    with ctx.read_lock(repo), phase_bars(ctx) as progress:
        repo.load_index()
        snaps = ctx.chosen_snapshots(repo, snapshot_refs, host)
        skipped = Skipped(ctx)
        result = statistics.stats(repo, snaps, mode, progress, skipped)
    if ctx.json:
        ctx.emit(result.to_json())
        skipped.finish()
        return
    ctx.info(f"Stats in {mode} mode:")
    ctx.info(f"Snapshots processed:   {result.snapshots_count}")
    if mode == "restore-size":
        ctx.info(f"   Total File Count:   {result.total_file_count}")
    else:
        ctx.info(f"   Total Blob Count:   {result.total_blob_count}")
    ctx.info(f"         Total Size:   {human_size(result.total_size)}")
    if mode == "raw-data":
        ctx.info(f"  Uncompressed Size:   {human_size(result.total_uncompressed_size)}")
        ctx.info(f"  Compression Ratio:   {result.compression_ratio:.2f}x")
    r = result.repository
    ctx.info("Repository:")
    ctx.info(f"              Packs:   {r.packs} ({human_size(r.pack_bytes)})")
    ctx.info(f"              Blobs:   {r.blobs} ({r.data_blobs} data, {r.tree_blobs} tree)")
    ctx.info(f"       Stored Bytes:   {human_size(r.stored_bytes)}")
    ctx.info(f" Uncompressed Bytes:   {human_size(r.uncompressed_bytes)}")
    ctx.info(f"  Compression Ratio:   {r.compression_ratio:.2f}x")
    skipped.finish()
