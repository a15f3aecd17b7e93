"""The config file: the user's defaults for the repository and its password file (not
the repository's own ``config``).

Terms:

- *config file*: TOML at ``$CORESTATE_CONFIG``, else
  ``$XDG_CONFIG_HOME/corestate/config.toml``, else ``~/.config/corestate/config.toml``.
  Two settings, both optional; relative paths are relative to the file's directory and
  ``~`` is expanded; any other key, or a value that is not a non-empty string, is an
  error naming the file::

      repository = "~/.local/share/corestate/repo"   # a path or a URL, as for --repo
      password-file = "password"                      # used only with that repository

- *the config file's repository*: a location naming the same local directory (however
  spelt: relative, ``~``, ``local:``) or the same URL.

``deploy/quickstart.sh`` and ``corestate config --save`` write it; how commands fall back
to it is in :mod:`corestate.cli.context`.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass

from corestate.connectors.url import parse_url
from corestate.errors import PermanentError


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
    r"""A TOML basic string.

    >>> print(_toml_string('a "b" \\ c'))
    "a \"b\" \\ c"
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
