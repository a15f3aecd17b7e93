"""What every command shares: how the repository and password are found, how results
are printed (human text or ``--json``), and progress display.

The repository comes from ``--repo``, else ``CORESTATE_REPOSITORY``, else the config
file (:mod:`corestate.cli.defaults`). The password comes from ``CORESTATE_PASSWORD``
(its bytes as they are), else ``--password-file`` (or ``CORESTATE_PASSWORD_FILE``; read
as restic reads one, see :func:`corestate.repository.keys.password_from_file`), else
the config file's password file when the repository in use is the config file's, else
a prompt when standard input is a terminal. Commands that only read take restic's
shared lock (:meth:`Context.read_lock`) and go on past a damaged snapshot file with a
warning (:meth:`Context.damaged_snapshot`).
"""

from __future__ import annotations

import contextlib
import getpass
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import click
import orjson
from rich.console import Console
from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn,
                           TimeElapsedColumn, TransferSpeedColumn)

from corestate.cli.defaults import Defaults, config_path
from corestate.connectors import immutable
from corestate.connectors.metered import metered
from corestate.connectors.url import open_backend, parse_url
from corestate.errors import CoreStateError, PermanentError
from corestate.kernel.blockmap import BlockMapStore
from corestate.repository.backend import Backend
from corestate.repository.keys import Password, password_from_file
from corestate.repository.repository import Repository
from corestate.repository.snapshot import Snapshot


PIPE_WIDTH = 4096  # the line width tables may take when stdout is not a terminal


@dataclass
class Context:
    repo_url: str | None
    password_file: str | None
    json: bool
    quiet: bool
    verbose: int

    def __post_init__(self) -> None:
        self.out = Console(highlight=False, soft_wrap=True)
        if not self.out.is_terminal and not os.environ.get("COLUMNS"):
            # A pipe or a file: tables at their natural width, not wrapped at 80 columns.
            self.out = Console(highlight=False, soft_wrap=True, width=PIPE_WIDTH)
        self.err = Console(stderr=True, highlight=False, soft_wrap=True)
        self._defaults: Defaults | None = None

    # -- repository -------------------------------------------------------------------
    def defaults(self) -> Defaults:
        """The config file's settings (read once; a missing file has none)."""
        if self._defaults is None:
            self._defaults = Defaults.load(config_path())
        return self._defaults

    def url(self) -> str:
        if self.repo_url:
            return self.repo_url
        defaults = self.defaults()
        if defaults.repository:
            return defaults.repository
        raise PermanentError("no repository given: use --repo, set CORESTATE_REPOSITORY, "
                             f"or name one in {defaults.path} (see `corestate config --help`)")

    def default_password_file(self) -> str | None:
        """The config file's password file, if the repository in use is its repository."""
        defaults = self.defaults()
        if defaults.password_file and defaults.is_repository(self.url()):
            return defaults.password_file
        return None

    def password(self, confirm: bool = False) -> Password:
        """The password as bytes from the environment or a file (restic takes bytes,
        UTF-8 or not; a file is read as restic reads it; the config file's when no other
        is given), else from a prompt."""
        if b"CORESTATE_PASSWORD" in os.environb:
            return os.environb[b"CORESTATE_PASSWORD"]
        if not self.password_file:
            self.password_file = self.default_password_file()
        if self.password_file:
            return read_password_file(self.password_file)
        if sys.stdin.isatty():
            return ask_password("enter password for repository: ", confirm)
        raise PermanentError("no password given: set CORESTATE_PASSWORD, use --password-file, "
                             "or run on a terminal to be asked")

    def open_repo(self, password: Password | None = None) -> Repository:
        """The repository (its backend metered when metrics are on), with its
        immutability policy (if any) in force for writes."""
        repo = Repository.open(self.open_backend(), password or self.password())
        immutable.apply(repo)
        return repo

    def open_backend(self) -> Backend:
        """The repository's backend; metered when metrics are on (see cli.monitoring)."""
        return metered(open_backend(self.url()), parse_url(self.url())[0])

    def damaged_snapshot(self, snap_id: str, exc: CoreStateError) -> None:
        """The ``on_damaged`` of commands that list snapshots: warn and go on, as restic."""
        self.warn(f"snapshot {snap_id[:8]} skipped, it cannot be loaded: {exc}")

    def chosen_snapshots(self, repo: Repository, refs: Sequence[str],
                         host: str | None) -> list[Snapshot]:
        """The snapshots a command names (ids, ``latest``), else every snapshot (of
        ``host`` if given); damaged ones are skipped with a warning."""
        if refs:
            return [repo.find_snapshot(ref, host=host, on_damaged=self.damaged_snapshot)
                    for ref in refs]
        return [s for s in repo.list_snapshots(self.damaged_snapshot)
                if host is None or s.hostname == host]

    def read_lock(self, repo: Repository) -> contextlib.AbstractContextManager[None]:
        """restic's non-exclusive lock for a command that only reads (prune waits for
        it); in a repository this user cannot write, a warning and no lock."""
        return repo.locked(exclusive=False, unlockable=lambda exc: self.warn(
            f"reading without a lock (the repository cannot be written: {exc})"))

    @staticmethod
    def state_dir(repo: Repository) -> str:
        """This host's state for ``repo`` (block maps, listing caches, the detector):
        ``$CORESTATE_STATE_DIR``, else ``$XDG_STATE_HOME/corestate``
        (``~/.local/state/corestate``), per repository id."""
        base = os.environ.get("CORESTATE_STATE_DIR") or os.path.join(
            os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state"), "corestate")
        return os.path.join(base, repo.config.id[:16])

    def block_store(self, repo: Repository) -> BlockMapStore:
        """This host's block maps for ``repo``."""
        return BlockMapStore(os.path.join(self.state_dir(repo), "blockmaps"))

    def listings(self, repo: Repository) -> str:
        """Where this host caches the listings of ``repo``'s trees (see
        :mod:`corestate.pipeline.listings`)."""
        return os.path.join(self.state_dir(repo), "listings")

    # -- output -----------------------------------------------------------------------
    def emit(self, data: object) -> None:
        """Print a result as one JSON document (for --json)."""
        sys.stdout.buffer.write(orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS) + b"\n")
        sys.stdout.flush()

    def result(self, data: object, text: str) -> None:
        """Print a command's result: ``data`` as JSON with --json, else ``text``."""
        if self.json:
            self.emit(data)
        else:
            self.info(text)

    def info(self, text: str) -> None:
        if not self.quiet and not self.json:
            self.out.print(text, markup=False)

    def warn(self, text: str) -> None:
        self.err.print(f"warning: {text}", markup=False, style="yellow")

    @property
    def show_progress(self) -> bool:
        return not self.quiet and not self.json and self.err.is_terminal

    @contextlib.contextmanager
    def progress(self, description: str, total: int | None = None,
                 bytes_: bool = True) -> Iterator["ProgressHandle"]:
        """A rich progress bar on stderr when attached to a terminal; silent otherwise."""
        if not self.show_progress:
            yield ProgressHandle(None, None)
            return
        columns = [TextColumn("[bold]{task.description}"), BarColumn(),
                   TextColumn("{task.fields[detail]}")]
        if bytes_:
            columns += [DownloadColumn(), TransferSpeedColumn()]
        columns.append(TimeElapsedColumn())
        with Progress(*columns, console=self.err, transient=True) as prog:
            task = prog.add_task(description, total=total, detail="")
            yield ProgressHandle(prog, task)


class ProgressHandle:
    def __init__(self, prog: Progress | None, task: object) -> None:
        self._prog = prog
        self._task = task

    def update(self, completed: float | None = None, total: float | None = None,
               detail: str = "") -> None:
        if self._prog is not None:
            self._prog.update(self._task, completed=completed, total=total,  # type: ignore[arg-type]
                              detail=detail)


def read_password_file(path: str) -> bytes:
    """A password file, read as restic reads it (see ``keys.password_from_file``)."""
    try:
        with open(path, "rb") as f:
            return password_from_file(f.read())
    except OSError as exc:
        raise PermanentError(f"cannot read password file {path}: {exc.strerror}") from None


def ask_password(prompt: str, confirm: bool) -> str:
    try:
        pw = getpass.getpass(prompt)
        if confirm and getpass.getpass("enter password again: ") != pw:
            raise PermanentError("passwords do not match")
    except EOFError:  # Ctrl-D at the prompt
        raise PermanentError("no password given (end of input at the prompt)") from None
    if not pw:
        raise PermanentError("an empty password is not a password")
    return pw


pass_ctx = click.make_pass_decorator(Context)


def human_size(n: float) -> str:
    """Bytes in binary units, as restic prints them.

    >>> human_size(0), human_size(1536), human_size(5 * 2**30)
    ('0 B', '1.500 KiB', '5.000 GiB')
    """
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3f} {unit}"
        n /= 1024
    return f"{n} B"
