"""What every command shares: how the repository and password are found, how results
are printed (human text or ``--json``), and progress display.

The repository comes from ``--repo``, else ``CORESTATE_REPOSITORY``, else the config
file. The password comes from ``CORESTATE_PASSWORD``, else ``--password-file`` (or
``CORESTATE_PASSWORD_FILE``), else the config file's password file when the repository
in use is the config file's, else a prompt when standard input is a terminal.

*Config file*: the user's defaults (not the repository's ``config``), a TOML file at
``$CORESTATE_CONFIG``, else ``$XDG_CONFIG_HOME/corestate/config.toml``, else
``~/.config/corestate/config.toml``. Two settings, both optional; relative paths are
relative to the file's directory and ``~`` is expanded::

    repository = "~/.local/share/corestate/repo"   # a path or a URL, as for --repo
    password-file = "password"                      # used only with that repository

``deploy/quickstart.sh`` and ``corestate config --save`` write it.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass

import click
import orjson
from rich.console import Console
from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn,
                           TimeElapsedColumn, TransferSpeedColumn)

from corestate.connectors.url import open_backend, parse_url
from corestate.errors import PermanentError
from corestate.kernel.blockmap import BlockMapStore
from corestate.repository.repository import Repository


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

    def password(self, confirm: bool = False) -> str:
        if "CORESTATE_PASSWORD" in os.environ:
            return os.environ["CORESTATE_PASSWORD"]
        if not self.password_file:
            self.password_file = self.default_password_file()
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

    def open_repo(self) -> Repository:
        return Repository.open(open_backend(self.url()), self.password())

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


def config_path() -> str:
    """Where the config file is (it need not exist)."""
    explicit = os.environ.get("CORESTATE_CONFIG")
    if explicit:
        return explicit
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    return os.path.join(base, "corestate", "config.toml")


@dataclass(frozen=True)
class Defaults:
    """The config file's settings, paths made absolute; ``path`` is the file's."""

    path: str
    repository: str | None = None
    password_file: str | None = None

    KEYS = ("repository", "password-file")

    @classmethod
    def load(cls, path: str) -> Defaults:
        try:
            with open(path, "rb") as f:
                doc = tomllib.load(f)
        except FileNotFoundError:
            return cls(path)
        except OSError as exc:
            raise PermanentError(f"cannot read config file {path}: {exc.strerror}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise PermanentError(f"config file {path}: {exc}") from None
        for key, value in doc.items():
            if key not in cls.KEYS:
                raise PermanentError(f"config file {path}: unknown setting {key!r} "
                                     f"(known: {', '.join(cls.KEYS)})")
            if not isinstance(value, str) or not value:
                raise PermanentError(f"config file {path}: {key} must be a non-empty string")
        here = os.path.dirname(os.path.abspath(path))
        repo = doc.get("repository")
        pwfile = doc.get("password-file")
        return cls(path, repo and absolute_location(repo, here),
                   pwfile and _absolute_path(pwfile, here))

    def is_repository(self, url: str) -> bool:
        """Whether ``url`` names this file's repository (same local path or same URL)."""
        return self.repository is not None and (
            absolute_location(url, os.getcwd()) == self.repository)

    def save(self) -> None:
        """Write the settings that are set (creating the directory, mode 0600)."""
        lines = ["# corestate's defaults: see `corestate config --help`\n"]
        for key, value in (("repository", self.repository),
                           ("password-file", self.password_file)):
            if value is not None:
                lines.append(f"{key} = {_toml_string(value)}\n")
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), 0o700, exist_ok=True)
        tmp = f"{self.path}.tmp{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.writelines(lines)
        os.replace(tmp, self.path)


def absolute_location(value: str, base: str) -> str:
    """A repository location with a local path made absolute against ``base`` (``~``
    expanded); a URL of another scheme (``s3:...``) as it is."""
    scheme, rest = parse_url(value)
    if scheme != "local":
        return value
    return _absolute_path(rest, base)


def _absolute_path(value: str, base: str) -> str:
    return os.path.normpath(os.path.join(base, os.path.expanduser(value)))


def _toml_string(value: str) -> str:
    """A TOML basic string.

    >>> print(_toml_string('a "b" \\ c'))
    "a \\"b\\" \\\\ c"
    """
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise PermanentError(f"{value!r} is not UTF-8, which a config file cannot hold") from None
    out = []
    for ch in value:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


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
    try:
        pw = getpass.getpass(prompt)
        if confirm and getpass.getpass("enter password again: ") != pw:
            raise PermanentError("passwords do not match")
    except EOFError:  # Ctrl-D at the prompt
        raise PermanentError("no password given (end of input at the prompt)") from None
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
