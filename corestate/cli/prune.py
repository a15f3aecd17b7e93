"""``corestate prune``: delete data no snapshot uses (see :mod:`corestate.maintenance.prune`).

Also home of :func:`phase_bars`, the progress display the maintenance commands share.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import click

from corestate.cli.context import Context, ProgressHandle, human_size, pass_ctx
from corestate.cli.main import cli
from corestate.maintenance import ProgressFn
from corestate.maintenance import prune as pruning


@contextlib.contextmanager
def phase_bars(ctx: Context) -> Iterator[ProgressFn]:
    """A :data:`ProgressFn` showing one progress bar per phase (only on a terminal)."""
    stack = contextlib.ExitStack()
    state: dict[str, object] = {}

    def update(phase: str, done: int, total: int) -> None:
        if state.get("phase") != phase:
            stack.close()
            state["phase"] = phase
            state["bar"] = stack.enter_context(ctx.progress(phase, total, bytes_=False))
        bar = state["bar"]
        assert isinstance(bar, ProgressHandle)
        bar.update(completed=done, total=total, detail=f"{done}/{total}")

    with stack:
        yield update


def print_report(ctx: Context, report: pruning.PruneReport) -> None:
    """restic-like summary of a prune (or of what it would do)."""
    would = "would " if report.dry_run else ""
    ctx.info(f"{report.used_blobs} blobs used by {report.snapshots} snapshots"
             + (f" ({report.bitmaps_recomputed} bitmaps recomputed from trees)"
                if report.bitmaps_recomputed else ""))
    if report.packs_unindexed:
        ctx.info(f"{len(report.packs_unindexed)} packs were not indexed")
    if report.packs_damaged:
        ctx.warn(f"{len(report.packs_damaged)} damaged packs: "
                 + ", ".join(p[:16] for p in report.packs_damaged))
    ctx.info(f"packs: {report.packs_before} before; {would}keep {report.packs_kept}, "
             f"{would}delete {len(report.packs_deleted)}, {would}repack "
             f"{len(report.packs_repacked)} ({report.blobs_repacked} blobs)")
    ctx.info(f"{would}remove {report.blobs_removed} unused blobs")
    if not report.dry_run:
        ctx.info(f"wrote {len(report.packs_written)} packs and {report.index_files_written} "
                 f"index files, removed {report.index_files_removed} old index files")
        if report.temporaries_removed or report.bitmaps_removed:
            ctx.info(f"removed {report.temporaries_removed} stale temporary files and "
                     f"{report.bitmaps_removed} orphaned bitmaps")
    if report.packs_locked or report.index_files_locked:
        until = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(report.locked_until))
        ctx.warn(f"{len(report.packs_locked)} packs and {report.index_files_locked} index files "
                 f"cannot be removed yet: they are locked (S3 Object Lock), the last until "
                 f"{until}; they stay, and a prune after that removes them")
    ctx.info(f"{'would free' if report.dry_run else 'freed'} {human_size(report.bytes_freed)}: "
             f"{human_size(report.bytes_before)} -> {human_size(report.bytes_after)}")


@cli.command()
@click.option("-n", "--dry-run", is_flag=True,
              help="Only report what would be deleted and repacked; change nothing.")
@click.option("--repack-below", type=click.FloatRange(0.0, 1.0), default=0.8,
              show_default=True, metavar="FRACTION",
              help="Rewrite a partly used pack when less than this fraction of its bytes "
                   "is still used.")
@pass_ctx
def prune(ctx: Context, dry_run: bool, repack_below: float) -> None:
    """Delete data that no snapshot uses any more, reclaiming space.

    Run it after `corestate forget`. Blobs in use are the union of every snapshot's blob
    bitmap (snapshots without a valid bitmap have their trees walked). Packs with no
    used blob are deleted; packs that are mostly unused, hold trees, or are small are
    rewritten with only their used blobs. A new index replaces the old ones before any
    pack is deleted, and every blob a snapshot needs is verified to be in it first, so
    an interrupted prune never loses data.

    Prune takes the exclusive lock: it refuses to run while a backup (or any other
    command holding a lock) is running. Stale `.tmp-` files left by killed writers are
    removed too.

    With --json, prints one object: packs_deleted, packs_repacked, packs_written,
    bytes_before, bytes_after, bytes_freed, and more.
    """
    repo = ctx.open_repo()
    opts = pruning.PruneOptions(dry_run=dry_run, repack_below=repack_below)
    with phase_bars(ctx) as progress:
        report = pruning.prune(repo, opts, progress)
    if ctx.json:
        ctx.emit(report.to_json())
    else:
        print_report(ctx, report)
