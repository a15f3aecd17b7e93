"""Repository locations: the string a user types and the backend it names.

A *location* is either a plain filesystem path or ``scheme:rest``, spelled as restic
spells them so the same string names the same repository in both tools:

- ``/srv/repo``, ``~/repo``, ``relative/repo``: a local directory (``~`` is expanded);
- ``local:PATH``: the same, explicitly; needed when a relative path has a colon before
  its first slash (``local:backup:2024``), which would otherwise read as a scheme;
- ``s3:http[s]://HOST[:PORT]/BUCKET[/PREFIX]``: an S3-compatible store at that endpoint
  (the scheme says whether TLS is used); ``s3:HOST/BUCKET[/PREFIX]`` is the same over
  https (``s3:s3.amazonaws.com/BUCKET`` for AWS);
- ``azure:CONTAINER:/PREFIX``: a container of the Azure storage account named by the
  environment (see :mod:`corestate.connectors.azure`);
- ``gs:BUCKET:/PREFIX``: a Google Cloud Storage bucket.

The *bucket* (an Azure *container*) is the repository's root; the *prefix* is a path
inside it, empty for the whole bucket. Credentials never appear in a location: each
store takes them from the variables its own tools use (``AWS_*``, ``AZURE_*``,
``GOOGLE_APPLICATION_CREDENTIALS``), and a location with a user name or password in it
is refused without being echoed.

Every backend :func:`open_backend` returns is wrapped in
:class:`~corestate.connectors.retry.RetryBackend`; remote ones retry for longer (a store
restarting or throttling for a minute does not stop a backup), upload packs in the
background, several at once (:class:`~corestate.connectors.writebehind.WriteBehindBackend`),
and read packs in windows of a few MiB
(:class:`~corestate.connectors.readahead.ReadAheadBackend`).
"""

from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from corestate.connectors.local import LocalBackend
from corestate.connectors.retry import RetryBackend
from corestate.errors import PermanentError
from corestate.repository.backend import Backend

SUPPORTED_FORMS = ("a directory path (/srv/repo, ~/repo), local:PATH, "
                   "s3:http[s]://HOST[:PORT]/BUCKET[/PREFIX], s3:HOST/BUCKET[/PREFIX], "
                   "azure:CONTAINER:/PREFIX or gs:BUCKET:/PREFIX")

# Remote stores: 12 attempts with backoff capped at 30 s ride out about 1.5 to 3 minutes
# of an unreachable or throttling store (see RetryBackend.backoff).
REMOTE_ATTEMPTS = 12

# A scheme is a letter then letters, digits, "+", "." or "-" (RFC 3986), so a path that
# starts with "/", "." or "~" never has one.
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*):(.*)", re.DOTALL)
# What S3, GCS and Azure all accept (Azure: no dots, checked by the service).
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.\-_]{1,220}[a-z0-9]")


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


@dataclass(frozen=True)
class Location:
    """A parsed repository location (see the module doc). ``endpoint`` is ``host[:port]``
    of an S3 store and ``secure`` whether it is reached over TLS; ``path`` is a local
    directory. ``str()`` gives the location back as restic writes it.

    >>> loc = parse_location("s3:http://127.0.0.1:7070/backups/laptop/")
    >>> loc.endpoint, loc.secure, loc.bucket, loc.prefix
    ('127.0.0.1:7070', False, 'backups', 'laptop')
    >>> str(loc)
    's3:http://127.0.0.1:7070/backups/laptop'
    >>> str(parse_location("s3:s3.amazonaws.com/backups"))
    's3:https://s3.amazonaws.com/backups'
    >>> parse_location("azure:photos:/2024//repo").prefix
    '2024/repo'
    >>> str(parse_location("gs:archive:/"))
    'gs:archive:/'
    """

    scheme: str
    path: str = ""
    endpoint: str = ""
    secure: bool = True
    bucket: str = ""
    prefix: str = ""

    def __str__(self) -> str:
        if self.scheme == "local":
            return self.path
        if self.scheme == "s3":
            tail = f"/{self.prefix}" if self.prefix else ""
            return f"s3:{'https' if self.secure else 'http'}://{self.endpoint}/{self.bucket}{tail}"
        return f"{self.scheme}:{self.bucket}:/{self.prefix}"

    def key(self, relative: str) -> str:
        """The object name of ``relative`` (a path in restic's layout) in the bucket."""
        return f"{self.prefix}/{relative}" if self.prefix else relative

    def where(self, key: str | None = None) -> str:
        """An object (or the location itself) named for messages: the location, then the
        key's path inside it.

        >>> parse_location("gs:bkt:/repo").where("repo/config")
        'gs:bkt:/repo/config'
        """
        if not key:
            return str(self)
        inside = key[len(self.prefix) + 1:] if self.prefix and key.startswith(self.prefix + "/") else key
        return f"{str(self).rstrip('/')}/{inside}"


def _clean_prefix(prefix: str) -> str:
    """A prefix without leading, trailing or doubled slashes; ``.``/``..`` refused."""
    parts = [p for p in prefix.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise PermanentError(f"a repository prefix may not contain '.' or '..': {prefix!r}")
    return posixpath.join(*parts) if parts else ""


def _check_bucket(scheme: str, bucket: str, url: str) -> str:
    word = "container" if scheme == "azure" else "bucket"
    if not bucket:
        raise PermanentError(f"no {word} name in {url!r}; the forms are {SUPPORTED_FORMS}")
    if not _BUCKET.fullmatch(bucket):
        raise PermanentError(f"{bucket!r} is not a valid {word} name: 3 to 63 lower-case "
                             "letters, digits, '-' or '.', starting and ending with a letter "
                             "or digit")
    return bucket


def parse_location(url: str) -> Location:
    """A location parsed and checked (see the module doc).

    Raises :class:`~corestate.errors.PermanentError` naming what is wrong; a location
    that carries credentials is refused without repeating it.
    """
    scheme, rest = parse_url(url)
    if scheme == "local":
        if not rest:
            raise PermanentError(f"no repository location given; use {SUPPORTED_FORMS}")
        return Location("local", path=rest)
    if scheme == "s3":
        if rest.startswith(("http://", "https://")):
            parts = urlsplit(rest)
            if "@" in parts.netloc:
                raise PermanentError("the S3 location contains credentials; remove them and set "
                                     "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY instead")
            endpoint, secure, path = parts.netloc, parts.scheme == "https", parts.path
            if parts.query or parts.fragment:
                raise PermanentError(f"an S3 location takes no query or fragment: {url!r}")
        else:
            endpoint, _, path = rest.removeprefix("//").partition("/")
            secure = True
            if "@" in endpoint:
                raise PermanentError("the S3 location contains credentials; remove them and set "
                                     "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY instead")
        if not endpoint:
            raise PermanentError(f"no S3 endpoint in {url!r}; the forms are {SUPPORTED_FORMS}")
        bucket, _, prefix = path.lstrip("/").partition("/")
        return Location("s3", endpoint=endpoint, secure=secure,
                        bucket=_check_bucket("s3", bucket, url), prefix=_clean_prefix(prefix))
    if scheme in ("azure", "gs"):
        bucket, _, prefix = rest.partition(":")
        return Location(scheme, bucket=_check_bucket(scheme, bucket, url),
                        prefix=_clean_prefix(prefix))
    raise PermanentError(
        f"unknown repository location scheme {scheme!r}; the forms are {SUPPORTED_FORMS}; "
        f"for a relative path that contains a colon write local:PATH"
    )


def open_backend(url: str) -> Backend:
    """The backend for a location, wrapped to retry transient failures (and, for object
    stores, to upload packs in the background and read them in windows).

    Raises :class:`~corestate.errors.PermanentError` for a location that does not parse,
    or whose store's client library is not installed (naming the extra to install).
    """
    loc = parse_location(url)
    if loc.scheme == "local":
        return RetryBackend(LocalBackend(os.path.expanduser(loc.path)))
    inner: Backend
    if loc.scheme == "s3":
        from corestate.connectors.s3 import S3Backend

        inner = S3Backend(loc)
    elif loc.scheme == "azure":
        from corestate.connectors.azure import AzureBackend

        inner = AzureBackend(loc)
    else:
        from corestate.connectors.gcs import GCSBackend

        inner = GCSBackend(loc)
    from corestate.connectors.readahead import ReadAheadBackend
    from corestate.connectors.writebehind import WriteBehindBackend

    retrying = RetryBackend(inner, attempts=REMOTE_ATTEMPTS, base_delay=0.5, max_delay=30.0)
    return WriteBehindBackend(ReadAheadBackend(retrying))
