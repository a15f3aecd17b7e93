"""The access log, as the commands that read data keep it: they open the repository
through a recording backend and, when they end, add the packs they read to the log
(:mod:`corestate.maintenance.tiering`), for ``corestate tiering``."""

from __future__ import annotations

from corestate.cli.context import Context
from corestate.errors import CoreStateError
from corestate.maintenance.tiering import AccessRun, RecordingBackend, save_access_log
from corestate.repository.repository import Repository


def open_recording(ctx: Context) -> tuple[Repository, RecordingBackend]:
    """The repository, opened through a backend that notes which packs are read."""
    recorder = RecordingBackend(ctx.open_backend())
    return Repository.open(recorder, ctx.password()), recorder


def record_reads(ctx: Context, repo: Repository, recorder: RecordingBackend, command: str,
                 when: float, snapshot: str | None = None) -> None:
    """Add the packs this run read to the access log (for `corestate tiering`); a
    failure is a warning, never the command's failure."""
    try:
        save_access_log(repo, AccessRun(when, command, recorder.reads, snapshot))
    except (CoreStateError, OSError) as exc:
        ctx.warn(f"could not record which packs were read (for `corestate tiering`): {exc}")
