"""Restoring a snapshot into a directory, the way ``restic restore --target`` does.

Terms:

- *snapshot path*: a node's absolute path inside the snapshot (bytes, see
  :mod:`corestate.repository.walk`). restic nests the full backed-up path, so a file
  backed up as ``/home/u/a.txt`` is restored to ``<target>/home/u/a.txt``.
- *destination*: ``target`` joined with the snapshot path, always built as bytes so
  names that are not UTF-8 come back unchanged.
- *content*: a file's data blobs in order; the file is their concatenation.
- *zero blob*: a data blob whose plaintext is all zero bytes. It is not written: the
  writer skips over it (``pwrite`` past the end leaves a hole) and the file is
  truncated to its final size at the end, so sparse files stay sparse.
- *zero block*: a file-aligned :data:`HOLE_BLOCK` of zero bytes inside a blob that
  also holds data (a chunk that spans the edge of a hole). It is skipped like a zero
  blob, so holes come back as holes wherever they start and end.
- *include pattern*: a restic filter pattern. It is split at ``/`` and its components
  are matched (``fnmatch``) against consecutive components of a snapshot path: an
  absolute pattern from the root, a relative one anywhere (``*.txt`` matches base
  names). A pattern that matches a directory selects everything below it; ``**``
  matches any number of components. A directory is restored if it is selected or if
  anything below it is.
- *hardlink*: a file node with ``links > 1``; the first one restored is written, later
  nodes with the same ``(device_id, inode)`` become ``os.link`` to it.

The steps, as in restic 0.14:

1. Walk the snapshot in tree order; create directories (mode 0700 for now), symlinks,
   fifos and devices in the walking thread; hand each regular file to a bounded thread
   pool that creates it, writes its blobs at their offsets, truncates it and sets its
   metadata (owner, mode incl. setuid/setgid/sticky, xattrs, atime/mtime in ns).
2. When every file is written, create the hardlinks.
3. Set directories' metadata, deepest first, so writing children cannot move their
   times. Sockets are skipped, as restic does.

Damage is reported, not fatal: a file whose blob cannot be loaded, or that cannot be
written, is deleted and listed in :attr:`RestoreResult.errors`, and the restore goes on.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from corestate.errors import IntegrityError, NotFoundError
from corestate.repository.repository import Repository
from corestate.repository.snapshot import Snapshot
from corestate.repository.tree import Node, posix_mode
from corestate.repository.walk import walk

Progress = Callable[[int, int], None]
PROGRESS_INTERVAL = 0.25  # seconds between progress calls
_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_NO_XATTR_SUPPORT = {errno.ENOTSUP, errno.EOPNOTSUPP}
HOLE_BLOCK = 4096  # the unit of holes: zero blocks this size (file-aligned) are not written
_ZERO_BLOCK = bytes(HOLE_BLOCK)


@dataclass
class RestoreResult:
    """What a restore did. ``files`` counts every restored non-directory (regular files,
    hardlinks, symlinks, fifos, devices); ``bytes_written`` is the content size of the
    regular files written, holes of sparse files included; ``errors`` lists
    ``(destination path, message)`` for everything that could not be restored."""

    files: int = 0
    dirs: int = 0
    bytes_written: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)


class IncludeFilter:
    """restic's ``--include`` semantics over snapshot paths.

    >>> f = IncludeFilter(['/home/u/docs/*.txt', 'keep'])
    >>> f.matches(b'/home/u/docs/a.txt'), f.matches(b'/home/u/docs/a.md')
    (True, False)
    >>> f.matches(b'/srv/keep/deep/file'), f.may_match_below(b'/home'), f.may_match_below(b'/srv')
    (True, True, True)
    >>> IncludeFilter(['/home/u/*.txt']).may_match_below(b'/etc')
    False
    """

    def __init__(self, patterns: list[str]) -> None:
        self._patterns: list[tuple[bool, list[bytes]]] = []
        for raw in patterns:
            pat = os.fsencode(raw)
            if pat:
                self._patterns.append((pat.startswith(b"/"), _components(pat)))

    def matches(self, path: bytes) -> bool:
        """Whether ``path`` (or a directory above it) is selected by a pattern."""
        parts = _components(path)
        for absolute, pat in self._patterns:
            starts = [0] if absolute else range(max(len(parts), 1))
            if any(_match_prefix(pat, parts[i:]) for i in starts):
                return True
        return False

    def may_match_below(self, dir_path: bytes) -> bool:
        """Whether something below directory ``dir_path`` may match a pattern."""
        parts = _components(dir_path)
        return any(not absolute or _may_lead(pat, parts) for absolute, pat in self._patterns)


def _components(path: bytes) -> list[bytes]:
    return [p for p in path.split(b"/") if p]


def _match_prefix(pat: list[bytes], parts: list[bytes]) -> bool:
    """Whether ``pat`` matches the first components of ``parts`` (the rest is free)."""
    if not pat:
        return True
    if pat[0] == b"**":
        return any(_match_prefix(pat[1:], parts[i:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatch.fnmatchcase(parts[0], pat[0]) and _match_prefix(pat[1:], parts[1:])


def _may_lead(pat: list[bytes], parts: list[bytes]) -> bool:
    """Whether a path below the directory ``parts`` could match the absolute ``pat``."""
    for i, comp in enumerate(pat):
        if comp == b"**" or i >= len(parts):
            return True
        if not fnmatch.fnmatchcase(parts[i], comp):
            return False
    return True


def data_runs(data: bytes, offset: int) -> Iterator[tuple[int, int]]:
    """The ``(start, end)`` ranges of ``data`` (a blob that starts at file ``offset``)
    that must be written: all of it but its zero blocks, so a hole that shares a blob
    with data comes back as a hole. Blocks are :data:`HOLE_BLOCK` bytes at multiples of
    it in the file, so what is skipped is whole file system blocks.

    >>> block = bytes(HOLE_BLOCK)
    >>> list(data_runs(b"ab" + block + block + b"cd", HOLE_BLOCK - 2))
    [(0, 2), (8194, 8196)]
    >>> list(data_runs(b"x" * 10, 0))
    [(0, 10)]
    """
    length = len(data)
    if data.find(_ZERO_BLOCK) < 0:
        yield 0, length  # no zero block anywhere: the common case, found in C
        return
    view = memoryview(data)
    run_start = -1
    start = 0
    while start < length:
        end = min(length, start + HOLE_BLOCK - (offset + start) % HOLE_BLOCK)
        if view[start:end] == _ZERO_BLOCK[:end - start]:
            if run_start >= 0:
                yield run_start, start
                run_start = -1
        elif run_start < 0:
            run_start = start
        start = end
    if run_start >= 0:
        yield run_start, length


def _safe_name(name: bytes) -> bool:
    """A name a hostile tree could use to escape the target is refused."""
    return name not in (b"", b".", b"..") and b"/" not in name and b"\0" not in name


def _message(action: str, exc: OSError) -> str:
    return f"{action}: {exc.strerror or exc}"


@dataclass(slots=True)
class _Dir:
    """A directory on the walk's current path from the root."""

    path: bytes  # snapshot path
    dest: bytes
    node: Node
    selected: bool
    enter: bool = True
    created: bool = False
    fresh: bool = False  # made by this restore, so it started empty
    failed: bool = False


class _Restorer:
    def __init__(self, repo: Repository, target: bytes, include: IncludeFilter | None,
                 progress: Progress | None, workers: int) -> None:
        self.repo = repo
        self.target = target
        self.include = include
        self.progress = progress
        self.workers = max(1, workers)
        self.result = RestoreResult()
        self.is_root = os.geteuid() == 0
        self._creds = (os.geteuid(), os.getegid())
        self._umask = os.umask(0o022)  # read it (there is no getter) ...
        os.umask(self._umask)  # ... and put it back
        self._lock = threading.Lock()
        self._last_progress = 0.0
        self._zero_blobs: dict[bytes, int] = {}  # blob id -> length, for zero blobs
        self._first_link: dict[tuple[int, int], bytes] = {}  # (device, inode) -> dest
        self._links: list[tuple[bytes, bytes]] = []  # (dest, dest of the first link)
        self._failed: set[bytes] = set()  # dests whose content could not be restored
        self._stack: list[_Dir] = []
        self._dirs: list[_Dir] = []  # created, in creation order (parents first)
        self._crashes: list[BaseException] = []

    # -- bookkeeping ----------------------------------------------------------------------
    def error(self, dest: bytes, message: str) -> None:
        with self._lock:
            self.result.errors.append((os.fsdecode(dest), message))

    def advance(self, files: int = 0, nbytes: int = 0, force: bool = False) -> None:
        with self._lock:
            self.result.files += files
            self.result.bytes_written += nbytes
            now = time.monotonic()
            if self.progress is not None and (force or now - self._last_progress >= PROGRESS_INTERVAL):
                self._last_progress = now
                self.progress(self.result.files, self.result.bytes_written)

    # -- the walk -------------------------------------------------------------------------
    def run(self, tree_id: bytes) -> RestoreResult:
        os.makedirs(self.target, 0o700, exist_ok=True)  # restic's mode for a new target
        slots = threading.BoundedSemaphore(self.workers * 2)  # memory stays bounded
        with ThreadPoolExecutor(self.workers, thread_name_prefix="restore") as pool:
            def done(future: Future[None]) -> None:
                slots.release()
                crash = future.exception()  # a bug, not damage: re-raised below
                if crash is not None:
                    self._crashes.append(crash)

            for path, node in walk(self.repo, tree_id, b"/", self._descend, self._tree_error):
                while self._stack and not path.startswith(self._stack[-1].path + b"/"):
                    self._stack.pop()
                if self._stack and not self._stack[-1].enter:
                    continue  # below a directory that failed
                dest = self.target + path
                selected = (self.include is None or (bool(self._stack) and self._stack[-1].selected)
                            or self.include.matches(path))
                if not _safe_name(node.name):
                    self.error(dest, f"refusing unsafe name {node.name!r} in the snapshot")
                    if node.type == "dir":
                        self._stack.append(_Dir(path, dest, node, False, enter=False))
                    continue
                if node.type == "dir":
                    entry = _Dir(path, dest, node, selected)
                    entry.enter = selected or self.include is None or self.include.may_match_below(path)
                    self._stack.append(entry)
                    if selected:
                        entry.enter = self._make_parents()
                    continue
                if not selected or node.type == "socket" or not self._make_parents():
                    continue
                if node.type == "file":
                    if self._is_later_link(dest, node):
                        continue
                    slots.acquire()
                    fresh = bool(self._stack) and self._stack[-1].fresh
                    pool.submit(self._restore_file, dest, node, fresh).add_done_callback(done)
                else:
                    self._restore_special(dest, node)
        if self._crashes:
            raise self._crashes[0]
        for dest, first in self._links:
            self._restore_link(dest, first)
        for entry in reversed(self._dirs):
            self._set_metadata(entry.dest, entry.node)
        self.advance(force=True)
        return self.result

    def _descend(self, path: bytes, node: Node) -> bool:
        return bool(self._stack) and self._stack[-1].path == path and self._stack[-1].enter

    def _tree_error(self, path: bytes, exc: IntegrityError | NotFoundError) -> None:
        self.error(self.target + path, f"directory contents lost: {exc.message}")

    def _make_parents(self) -> bool:
        """Create the directories on the walk's current path that do not exist yet;
        False if one cannot be created."""
        for entry in self._stack:
            if entry.failed:
                return False
            if entry.created:
                continue
            try:
                self._clear(entry.dest, keep_dir=True)  # a symlink here must not be followed
                if not os.path.lexists(entry.dest):
                    os.mkdir(entry.dest, 0o700)
                    entry.fresh = True
            except OSError as exc:
                entry.failed, entry.enter = True, False
                self.error(entry.dest, _message("creating directory", exc))
                return False
            entry.created = True
            self._dirs.append(entry)
            with self._lock:
                self.result.dirs += 1
        return True

    # -- nodes ------------------------------------------------------------------------------
    @staticmethod
    def _clear(dest: bytes, keep_dir: bool = False) -> None:
        """Make room at ``dest``: an existing non-directory is removed; an existing
        directory stays (``keep_dir``) or is an error."""
        try:
            st = os.lstat(dest)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            if keep_dir:
                return
            raise IsADirectoryError(errno.EISDIR, "a directory is in the way", dest)
        os.unlink(dest)

    def _is_later_link(self, dest: bytes, node: Node) -> bool:
        """Record a hardlinked file; True if an earlier node already has its inode."""
        if node.links < 2 or not node.inode:
            return False
        key = (node.device_id, node.inode)
        first = self._first_link.get(key)
        if first is None:
            self._first_link[key] = dest
            return False
        self._links.append((dest, first))
        return True

    def _restore_special(self, dest: bytes, node: Node) -> None:
        """Create a symlink, fifo or device node and set its metadata."""
        try:
            self._clear(dest)
            if node.type == "symlink":
                os.symlink(node.linktarget, dest)
            elif node.type == "fifo":
                os.mkfifo(dest, 0o600)
            elif node.type in ("dev", "chardev"):
                kind = stat.S_IFMT(posix_mode(node.mode, node.type))
                os.mknod(dest, kind | 0o600, node.device)
            else:
                self.error(dest, f"cannot restore node of unknown type {node.type!r}")
                return
        except OSError as exc:
            self.error(dest, _message(f"creating {node.type}", exc))
            return
        self._set_metadata(dest, node)
        self.advance(files=1)

    def _restore_link(self, dest: bytes, first: bytes) -> None:
        if first in self._failed:
            self.error(dest, f"not restored: it is a hardlink of {os.fsdecode(first)}, "
                             "which could not be restored")
            return
        try:
            self._clear(dest)
            os.link(first, dest)
        except OSError as exc:
            self.error(dest, _message("creating hardlink", exc))
            return
        self.advance(files=1)

    def _restore_file(self, dest: bytes, node: Node, fresh: bool = False) -> None:
        """Write one regular file (in a pool thread); on failure delete what was written.

        In a directory this restore created (``fresh``) nothing can be in the way, so
        the file is created exclusively with its final permission bits, and owner and
        mode are only set when creating it did not already give them."""
        mode = posix_mode(node.mode, node.type) & 0o7777
        try:
            if fresh:
                fd = os.open(dest, _NEW_FLAGS, mode & 0o777)
            else:
                self._clear(dest)
                fd = os.open(dest, _OPEN_FLAGS, 0o600)
        except OSError as exc:
            self._failed.add(dest)
            self.error(dest, _message("creating file", exc))
            return
        message = ""
        try:
            try:
                size, written = self._write_content(fd, node)
                if written != size or not fresh:  # a trailing hole, or an old longer file
                    os.ftruncate(fd, size)
            except (IntegrityError, NotFoundError) as exc:
                message = exc.message
            except OSError as exc:
                message = _message("writing", exc)
            if not message:
                owner_ok = fresh and (node.uid, node.gid) == self._creds
                mode_ok = fresh and mode == mode & 0o777 & ~self._umask
                self._set_metadata(dest, node, fd, owner_ok, mode_ok)
        finally:
            os.close(fd)
        if message:
            self._failed.add(dest)
            try:
                os.unlink(dest)
            except OSError:
                pass
            self.error(dest, message)
        else:
            self.advance(files=1)

    def _write_content(self, fd: int, node: Node) -> tuple[int, int]:
        """Write the file's blobs at their offsets, skipping zero blobs; returns its size
        and the end of the last bytes actually written."""
        pos = 0
        written = 0
        for blob_id in node.content or []:
            length = self._zero_blobs.get(blob_id)
            if length is None:
                data = self.repo.load_blob(blob_id)
                length = len(data)
                # Cheap first/last byte test before the full comparison.
                if length and not data[0] and not data[-1] and data == bytes(length):
                    self._zero_blobs[blob_id] = length
                else:
                    view = memoryview(data)
                    for start, end in data_runs(data, pos):
                        done = start
                        while done < end:
                            done += os.pwrite(fd, view[done:end], pos + done)
                        written = pos + end
                    del view
                del data  # one blob per worker in memory
            pos += length
            self.advance(nbytes=length)
        return pos, written

    # -- metadata ---------------------------------------------------------------------------
    def _set_metadata(self, dest: bytes, node: Node, fd: int | None = None,
                      owner_ok: bool = False, mode_ok: bool = False) -> None:
        """Owner, mode, xattrs and times, in that order (chown clears setuid bits and
        setting xattrs must not move the times). Failures are reported, the node kept."""
        is_link = node.type == "symlink"
        try:
            try:
                if owner_ok:
                    pass
                elif fd is not None:
                    os.fchown(fd, node.uid, node.gid)
                else:
                    os.chown(dest, node.uid, node.gid, follow_symlinks=False)
            except PermissionError:
                if self.is_root:
                    raise
            if not is_link and not mode_ok:
                mode = posix_mode(node.mode, node.type) & 0o7777
                if fd is not None:
                    os.fchmod(fd, mode)
                else:
                    os.chmod(dest, mode)
            for name, value in node.xattrs:
                try:
                    if fd is not None:
                        os.setxattr(fd, name, value)
                    else:
                        os.setxattr(dest, name, value, follow_symlinks=False)
                except OSError as exc:
                    # Linux refuses user.* attributes on symlinks with EPERM.
                    if exc.errno not in _NO_XATTR_SUPPORT and not (is_link and exc.errno == errno.EPERM):
                        raise
            times = (node.atime, node.mtime)
            if fd is not None:
                os.utime(fd, ns=times)
            else:
                os.utime(dest, ns=times, follow_symlinks=False)
        except OSError as exc:
            self.error(dest, _message("setting metadata", exc))


def restore(repo: Repository, snapshot: Snapshot, target: str,
            include: list[str] | None = None, progress: Progress | None = None,
            workers: int = 4) -> RestoreResult:
    """Restore ``snapshot`` below the directory ``target`` (created if missing).

    ``include`` restricts the restore to matching snapshot paths (see
    :class:`IncludeFilter`); ``progress(files_done, bytes_done)`` is called now and
    then from any thread, and once at the end; ``workers`` files are written at once.
    Files already at the destination are overwritten. Raises only if the snapshot's
    root tree cannot be read; everything else that fails is in the result's ``errors``.
    """
    repo.load_index()
    restorer = _Restorer(repo, os.fsencode(os.path.abspath(target)),
                         IncludeFilter(include) if include else None, progress, workers)
    return restorer.run(snapshot.tree)


__all__ = ["IncludeFilter", "RestoreResult", "restore", "walk"]
