"""What every command shares: how the repository and password are found, how results
are printed (human text or ``--json``), and progress display.

The repository comes from ``--repo`` or ``CORESTATE_REPOSITORY``; the password from
``CORESTATE_PASSWORD``, ``--password-file`` (or ``CORESTATE_PASSWORD_FILE``), or a prompt
when standard input is a terminal.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import click
import orjson
from rich.console import Console
from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn,
                           TimeElapsedColumn, TransferSpeedColumn)

from corestate.connectors import immutable
from corestate.connectors.url import open_backend
from corestate.errors import PermanentError
from corestate.kernel.blockmap import BlockMapStore
from corestate.repository.repository import Repository


@dataclass
class Context:
    repo_url: str | None
    password_file: str | None
    json: bool
    quiet: bool
    verbose: int

    def __post_init__(self) -> None:
        self.out = Console(highlight=False, soft_wrap=True)
        self.err = Console(stderr=True, highlight=False, soft_wrap=True)

    # -- repository -------------------------------------------------------------------
    def url(self) -> str:
        if not self.repo_url:
            raise PermanentError("no repository given: use --repo or set CORESTATE_REPOSITORY")
        return self.repo_url

    def password(self, confirm: bool = False) -> str:
        if "CORESTATE_PASSWORD" in os.environ:
            return os.environ["CORESTATE_PASSWORD"]
        if self.password_file:
            try:
                with open(self.password_file, encoding="utf-8") as f:
                    return f.readline().rstrip("\r\n")
            except OSError as exc:
                raise PermanentError(f"cannot read password file {self.password_file}: "
                                     f"{exc.strerror}") from None
        if sys.stdin.isatty():
            return ask_password("enter password for repository: ", confirm)
        raise PermanentError("no password given: set CORESTATE_PASSWORD, use --password-file, "
                             "or run on a terminal to be asked")

    def open_repo(self, password: str | None = None) -> Repository:
        """The repository, with its immutability policy (if any) in force for writes."""
        repo = Repository.open(open_backend(self.url()), password or self.password())
        immutable.apply(repo)
        return repo

    @staticmethod
    def block_store(repo: Repository) -> BlockMapStore:
        """This host's block maps for ``repo``: ``$CORESTATE_STATE_DIR``, else
        ``$XDG_STATE_HOME/corestate`` (``~/.local/state/corestate``), per repository id."""
        base = os.environ.get("CORESTATE_STATE_DIR") or os.path.join(
            os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state"), "corestate")
        return BlockMapStore(os.path.join(base, repo.config.id[:16], "blockmaps"))

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


def ask_password(prompt: str, confirm: bool) -> str:
    pw = getpass.getpass(prompt)
    if confirm and getpass.getpass("enter password again: ") != pw:
        raise PermanentError("passwords do not match")
    if not pw:
        raise PermanentError("an empty password is not allowed")
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
