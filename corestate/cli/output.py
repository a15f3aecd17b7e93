"""How commands show what they do, beyond :class:`~corestate.cli.context.Context`'s
lines and bars: raw result lines holding undecodable file names (:func:`echo_raw`),
one progress bar per phase of a maintenance command (:func:`phase_bars`), damaged
entries met on a walk (:class:`Skipped`), and the prune report (``prune`` and
``forget --prune``).
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator

from corestate.cli.context import Context, ProgressHandle, human_size
from corestate.errors import CoreStateError
from corestate.maintenance import ProgressFn
from corestate.maintenance import prune as pruning


def echo_raw(text: str) -> None:
    """Print one line of a command's result to stdout, surrogate-escaped bytes restored
    (results are printed under --quiet too, as restic does)."""
    sys.stdout.flush()
    sys.stdout.buffer.write(text.encode("utf-8", "surrogateescape") + b"\n")
    sys.stdout.buffer.flush()


class Skipped:
    """The ``on_error`` of a walk for commands that list: a damaged entry or an
    unreadable directory is warned about with its path as it is met, the walk goes on,
    and :meth:`finish` then fails the command (exit 1) saying how many were skipped."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.count = 0

    def __call__(self, path: bytes, exc: CoreStateError) -> None:
        self.count += 1
        self.ctx.warn(f"{path.decode('utf-8', 'backslashreplace')}: {exc.message}")

    def finish(self) -> None:
        if self.count:
            what = "entry was" if self.count == 1 else "entries were"
            raise CoreStateError(f"{self.count} damaged {what} skipped (listed above); "
                                 "`corestate check` tells more")


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
