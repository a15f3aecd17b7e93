"""Repository locations: the string a user types and the backend it names.

A *location* is either a plain filesystem path or ``scheme:rest``, spelled as restic
spells them so the same string names the same repository in both tools:

- ``/srv/repo``, ``~/repo``, ``relative/repo``: a local directory (``~`` is expanded);
- ``local:PATH``: the same, explicitly; needed when a relative path has a colon before
  its first slash (``local:backup:2024``), which would otherwise read as a scheme.

*Planned* schemes (``s3:``, ``azure:``, ``gs:``) are recognised so the user is told they
are not available yet rather than that they are unknown.

Every backend :func:`open_backend` returns is wrapped in
:class:`~corestate.connectors.retry.RetryBackend`.
"""

from __future__ import annotations

import os
import re

from corestate.connectors.local import LocalBackend
from corestate.connectors.retry import RetryBackend
from corestate.errors import PermanentError
from corestate.repository.backend import Backend

PLANNED_SCHEMES = ("s3", "azure", "gs")
SUPPORTED_FORMS = "a directory path (/srv/repo, ~/repo) or local:PATH"

# A scheme is a letter then letters, digits, "+", "." or "-" (RFC 3986), so a path that
# starts with "/", "." or "~" never has one.
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*):(.*)", re.DOTALL)


def parse_url(url: str) -> tuple[str, str]:
    """Split a location into ``(scheme, rest)``; a plain path has the scheme ``local``.

    Pure: it neither expands ``~`` nor checks that the scheme is supported.

    >>> parse_url("/srv/backups/repo")
    ('local', '/srv/backups/repo')
    >>> parse_url("~/repo")
    ('local', '~/repo')
    >>> parse_url("local:backup:2024")
    ('local', 'backup:2024')
    >>> parse_url("./backup:2024")
    ('local', './backup:2024')
    >>> parse_url("s3:s3.amazonaws.com/bucket/repo")
    ('s3', 's3.amazonaws.com/bucket/repo')
    >>> parse_url("GS:bucket:/repo")
    ('gs', 'bucket:/repo')
    """
    match = _SCHEME.fullmatch(url)
    if match is None:
        return "local", url
    return match.group(1).lower(), match.group(2)


def open_backend(url: str) -> Backend:
    """The backend for a location, wrapped to retry transient failures.

    Raises :class:`~corestate.errors.PermanentError` for an empty location, a planned
    scheme, or an unknown one.
    """
    scheme, rest = parse_url(url)
    if scheme == "local":
        if not rest:
            raise PermanentError(f"no repository location given; use {SUPPORTED_FORMS}")
        return RetryBackend(LocalBackend(os.path.expanduser(rest)))
    if scheme in PLANNED_SCHEMES:
        raise PermanentError(
            f"the {scheme}: backend is not available yet; use {SUPPORTED_FORMS} for now"
        )
    raise PermanentError(
        f"unknown repository location scheme {scheme!r} in {url!r}; supported forms are "
        f"{SUPPORTED_FORMS} (s3:, azure: and gs: are planned); for a relative path that "
        f"contains a colon write local:{url}"
    )
