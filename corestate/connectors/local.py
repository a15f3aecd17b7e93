"""The local backend: a repository in a directory on this machine, in restic's layout.

Terms:

- *root*: the repository directory. Every file lives below it at
  :func:`~corestate.repository.backend.object_path`; ``data`` is split into the 256
  subdirectories ``data/00`` .. ``data/ff`` by the first two hex digits of a name.
- *temporary*: a file named ``.tmp-*`` that :meth:`LocalBackend.write` fills before
  renaming it over its final name. One that is left behind means a writer died mid-write.
  Temporaries are never listed; :meth:`LocalBackend.remove_stale_temporaries` deletes
  those old enough that no live writer can still own them (``prune`` calls it).

Durability: a write fsyncs the temporary, renames it into place with :func:`os.replace`
(atomic: readers see the old file, the new file, or nothing, never a part), then fsyncs
the directory so the rename itself survives a power cut.

Errors from the OS are translated onto the error tree: a missing file is
:class:`~corestate.errors.NotFoundError`; permission, not-a-directory, read-only and
full-disk errors are :class:`~corestate.errors.PermanentError`; anything else (``EIO``,
``ETIMEDOUT`` on a network mount, ...) is :class:`~corestate.errors.RetryableError`.
"""

from __future__ import annotations

import errno
import os
import tempfile
import time
from collections.abc import Iterator

from corestate.errors import CoreStateError, NotFoundError, PermanentError, RetryableError
from corestate.repository.backend import FileInfo, Kind, object_path

TEMP_PREFIX = ".tmp-"
DIRECTORY_MODE = 0o700  # restic's: the repository is private even though it is encrypted
# Files are 0o600 (what tempfile.mkstemp creates): owner-writable, so prune can delete
# them without a chmod first, as restic does today.

_DIRECTORY_KINDS = tuple(kind for kind in Kind if kind is not Kind.CONFIG)

# Errors a retry cannot fix, with the reason shown to the user.
_PERMANENT_REASONS = {
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOTDIR: "a component of the path is not a directory",
    errno.EISDIR: "it is a directory",
    errno.EEXIST: "it exists and is not a directory",
    errno.EROFS: "read-only file system",
    errno.ENAMETOOLONG: "file name too long",
    errno.EDQUOT: "disk quota exceeded",
}


def _translate(err: OSError, action: str, path: str) -> CoreStateError:
    """The error-tree error for an OS error raised while ``action`` (e.g. "writing") ``path``."""
    if err.errno == errno.ENOENT:
        return NotFoundError(f"{path} does not exist")
    if err.errno == errno.ENOSPC:
        return PermanentError(f"no space left on device {action} {path}")
    reason = _PERMANENT_REASONS.get(err.errno) if err.errno is not None else None
    if reason is not None:
        return PermanentError(f"{action} {path} failed: {reason}")
    return RetryableError(f"{action} {path} failed: {err.strerror or err}")


class LocalBackend:
    """A :class:`~corestate.repository.backend.Backend` on the directory ``root``.

    ``list(Kind.CONFIG)`` yields one file named ``config`` when it exists; for the config
    file the ``name`` argument of the other methods is ignored, as in ``object_path``.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        # Absolute, so a later chdir in the process cannot move the repository.
        self._root = os.path.abspath(os.fspath(root))

    def location(self) -> str:
        return self._root

    def exists(self) -> bool:
        return os.path.isdir(self._root)

    def create(self) -> None:
        """Make the root and the layout; refuse if a repository (a config) is already there."""
        if os.path.lexists(os.path.join(self._root, "config")):
            # Same guard as restic: re-initialising must never look like it succeeded.
            raise PermanentError(f"a repository already exists at {self._root}")
        try:  # the root first, so a failure names the directory the user gave
            os.makedirs(self._root, mode=DIRECTORY_MODE, exist_ok=True)
        except OSError as err:
            reason = _PERMANENT_REASONS.get(err.errno or 0) or err.strerror or str(err)
            raise PermanentError(f"cannot create the repository directory {self._root}: "
                                 f"{reason}") from err
        directories = [os.path.join(self._root, kind.value) for kind in _DIRECTORY_KINDS]
        directories += [os.path.join(self._root, "data", f"{i:02x}") for i in range(256)]
        for directory in directories:
            try:
                os.makedirs(directory, mode=DIRECTORY_MODE, exist_ok=True)
            except OSError as err:
                raise _translate(err, "creating", directory) from err

    def list(self, kind: Kind) -> Iterator[FileInfo]:
        """Every file of ``kind``, skipping temporaries; a missing directory is empty."""
        if kind is Kind.CONFIG:
            path = os.path.join(self._root, "config")
            try:
                return iter([FileInfo(Kind.CONFIG, "config", os.stat(path).st_size)])
            except FileNotFoundError:
                return iter(())
            except OSError as err:
                raise _translate(err, "listing", path) from err
        top = os.path.join(self._root, kind.value)
        directories = _subdirectories(top) if kind is Kind.DATA else [top]
        found: list[FileInfo] = []
        for directory in directories:
            found.extend(_scan(kind, directory))
        # Collected eagerly so errors surface at the call, not half-way through a loop.
        return iter(found)

    def stat(self, kind: Kind, name: str) -> FileInfo:
        path = self._path(kind, name)
        try:
            return FileInfo(kind, name, os.stat(path).st_size)
        except OSError as err:
            raise _translate(err, "checking", path) from err

    def read(self, kind: Kind, name: str, offset: int = 0, length: int | None = None) -> bytes:
        if offset < 0 or (length is not None and length < 0):
            raise ValueError(f"bad range: offset={offset}, length={length}")
        path = self._path(kind, name)
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as err:
            raise _translate(err, "reading", path) from err
        try:
            end = os.fstat(fd).st_size
            if length is not None:
                end = min(end, offset + length)
            chunks = []
            position = offset
            # pread may return less than asked (over 2 GiB, or on some network mounts).
            while position < end:
                chunk = os.pread(fd, end - position, position)
                if not chunk:
                    break
                chunks.append(chunk)
                position += len(chunk)
            return b"".join(chunks)
        except OSError as err:
            raise _translate(err, "reading", path) from err
        finally:
            os.close(fd)

    def write(self, kind: Kind, name: str, data: bytes) -> None:
        path = self._path(kind, name)
        directory = os.path.dirname(path)
        try:
            fd, temporary = self._create_temporary(directory)
        except OSError as err:
            raise _translate(err, "writing", path) from err
        replaced = False
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temporary, path)
            replaced = True
            _fsync_directory(directory)
        except BaseException as exc:
            if not replaced:
                try:
                    os.unlink(temporary)
                except OSError:
                    pass  # remove_stale_temporaries will get it; the write error matters more
            if isinstance(exc, OSError):
                raise _translate(exc, "writing", path) from exc
            raise

    def delete(self, kind: Kind, name: str) -> None:
        path = self._path(kind, name)
        try:
            os.remove(path)
        except OSError as err:
            raise _translate(err, "deleting", path) from err

    def close(self) -> None:
        """Nothing to release: no handle outlives a call."""

    def remove_stale_temporaries(self, older_than_seconds: float) -> int:
        """Delete temporaries last modified more than ``older_than_seconds`` ago.

        Younger ones may belong to a writer that is still running, so they are kept.
        Returns how many were removed.
        """
        cutoff = time.time() - older_than_seconds
        tops = [os.path.join(self._root, kind.value) for kind in _DIRECTORY_KINDS]
        directories = [self._root, *tops, *_subdirectories(os.path.join(self._root, "data"))]
        removed = 0
        for directory in directories:
            try:
                with os.scandir(directory) as entries:
                    candidates = [e for e in entries if e.name.startswith(TEMP_PREFIX)]
            except FileNotFoundError:
                continue
            except OSError as err:
                raise _translate(err, "removing temporaries in", directory) from err
            for entry in candidates:
                try:
                    if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                        os.unlink(entry.path)
                        removed += 1
                except FileNotFoundError:
                    continue  # renamed into place by its writer, or removed by another prune
                except OSError as err:
                    raise _translate(err, "removing", entry.path) from err
        return removed

    def _path(self, kind: Kind, name: str) -> str:
        # Names come from hashes, but a bad one must not escape the root or hide as a
        # temporary that list() skips and remove_stale_temporaries() deletes.
        if kind is not Kind.CONFIG and (
            not name
            or name in (".", "..")
            or any(c in name for c in "/\\\0")
            or name.startswith(TEMP_PREFIX)
        ):
            raise PermanentError(f"invalid {kind.value} file name {name!r}")
        return os.path.join(self._root, object_path(kind, name))

    def _create_temporary(self, directory: str) -> tuple[int, str]:
        try:
            return tempfile.mkstemp(prefix=TEMP_PREFIX, dir=directory)
        except FileNotFoundError:
            # A layout made by another tool may lack a data subdirectory; a missing root
            # means there is no repository, which must not be created by a write.
            if not os.path.isdir(self._root):
                raise NotFoundError(f"no repository at {self._root}") from None
            os.makedirs(directory, mode=DIRECTORY_MODE, exist_ok=True)
            return tempfile.mkstemp(prefix=TEMP_PREFIX, dir=directory)


def _subdirectories(top: str) -> list[str]:
    """The directories directly inside ``top`` (none if ``top`` is missing)."""
    try:
        with os.scandir(top) as entries:
            return [entry.path for entry in entries if entry.is_dir()]
    except FileNotFoundError:
        return []
    except OSError as err:
        raise _translate(err, "listing", top) from err


def _scan(kind: Kind, directory: str) -> list[FileInfo]:
    """The regular files of ``kind`` in ``directory``, temporaries excluded."""
    found = []
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.name.startswith(TEMP_PREFIX):
                    continue
                try:
                    if entry.is_file():
                        found.append(FileInfo(kind, entry.name, entry.stat().st_size))
                except FileNotFoundError:
                    continue  # deleted since the scan began (a concurrent prune)
    except FileNotFoundError:
        return []
    except OSError as err:
        raise _translate(err, "listing", directory) from err
    return found


def _fsync_directory(directory: str) -> None:
    """Make a rename in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
