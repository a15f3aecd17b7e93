"""Filesystem-wide change watching on Linux fanotify, through ctypes on libc.

:class:`FanotifyWatcher` has the interface of :class:`~corestate.kernel.watch.Watcher`
and reports the same :class:`~corestate.kernel.watch.ChangeBatch`; :func:`open_watcher`
picks one of the two. Terms are those of :mod:`corestate.kernel.watch`, plus:

- *filesystem mark*: one fanotify mark (``FAN_MARK_FILESYSTEM``) on a whole filesystem
  (one per distinct ``st_dev`` among the roots). It reports every change anywhere on
  that filesystem, through every mount of it.
- *file handle*: the kernel's persistent name for an inode (``struct file_handle``). With
  ``FAN_REPORT_DFID_NAME`` an event carries the handle of the *parent directory* and the
  entry's name, or the name ``.`` for an event on a directory itself. The handle is
  turned into a path with ``open_by_handle_at`` and ``/proc/self/fd``; paths are cached
  per handle (bounded LRU) and the cache forgets a directory's subtree when it is moved
  and its handle when it is deleted, so paths are those the directories have when the
  events are read.

Trade-off against inotify: one mark per filesystem instead of one watch per directory,
so there is no watch limit, no walk at start-up and no race with directories created
and filled at once (there is nothing to add a watch to). In exchange the events of the
whole filesystem arrive, including those outside the roots, and must be filtered by path
(events outside the roots never reach a :class:`ChangeBatch`); resolving a handle costs
a few system calls on a cache miss; and it needs CAP_SYS_ADMIN (marks) plus
CAP_DAC_READ_SEARCH (``open_by_handle_at``), Linux 5.9+ and a filesystem that can
decode file handles (ext4, xfs, btrfs, tmpfs do; procfs, sysfs do not).

Limitations: a filesystem mounted at several places reports paths through the mount of
the first root on it; a deleted directory's events are dropped when its handle no longer
resolves (its parent's deletion event marks the parent dirty). ``FAN_Q_OVERFLOW`` (the
queue holds 16384 events) sets ``overflow`` and empties the path cache. Not thread-safe.
"""

from __future__ import annotations

import collections
import ctypes
import errno
import functools
import logging
import math
import os
import select
import struct
import sys
import time
from collections.abc import Callable, Iterable
from types import TracebackType

from corestate.errors import PermanentError
from corestate.kernel.watch import COALESCE_MAX, COALESCE_QUIET, ChangeBatch, Watcher, _Accumulator, _under

log = logging.getLogger("corestate.kernel.fanotify")

FAN_CLASS_NOTIF = 0x00000000
FAN_CLOEXEC = 0x00000001
FAN_NONBLOCK = 0x00000002
FAN_REPORT_DIR_FID = 0x00000400
FAN_REPORT_NAME = 0x00000800
FAN_REPORT_DFID_NAME = FAN_REPORT_DIR_FID | FAN_REPORT_NAME
FAN_MARK_ADD = 0x00000001
FAN_MARK_FILESYSTEM = 0x00000100
# fsnotify shares its event bits between inotify and fanotify, so watch.py's kind names
# (keyed by IN_* bits) apply to these as they are.
FAN_MODIFY = 0x00000002
FAN_ATTRIB = 0x00000004
FAN_CLOSE_WRITE = 0x00000008
FAN_MOVED_FROM = 0x00000040
FAN_MOVED_TO = 0x00000080
FAN_CREATE = 0x00000100
FAN_DELETE = 0x00000200
FAN_DELETE_SELF = 0x00000400
FAN_MOVE_SELF = 0x00000800
FAN_Q_OVERFLOW = 0x00004000
FAN_EVENT_ON_CHILD = 0x08000000
FAN_ONDIR = 0x40000000
FAN_EVENT_INFO_TYPE_DFID_NAME = 2
FAN_EVENT_INFO_TYPE_DFID = 3
FANOTIFY_METADATA_VERSION = 3
AT_FDCWD = -100
MAX_HANDLE_SZ = 128

MARK_MASK = (FAN_CREATE | FAN_DELETE | FAN_MOVED_FROM | FAN_MOVED_TO | FAN_MODIFY
             | FAN_CLOSE_WRITE | FAN_ATTRIB | FAN_DELETE_SELF | FAN_MOVE_SELF | FAN_ONDIR
             | FAN_EVENT_ON_CHILD)
PATH_CACHE_SIZE = 8192

_METADATA = struct.Struct("=IBBHQii")  # fanotify_event_metadata: len, vers, -, metadata_len, mask, fd, pid
_INFO = struct.Struct("=BBH8sIi")  # info header (type, -, len), fsid, file_handle (bytes, type)
_READ_SIZE = 64 * 1024
_READS_PER_DRAIN = 16
_INIT_HINTS = {
    errno.EPERM: " It needs CAP_SYS_ADMIN.",
    errno.EINVAL: " FAN_REPORT_DFID_NAME needs Linux 5.9 or later.",
    errno.EMFILE: " Too many fanotify groups: raise fs.fanotify.max_user_groups.",
    errno.ENOSYS: " This kernel was built without fanotify.",
}


@functools.cache
def _libc() -> ctypes.CDLL:
    if not sys.platform.startswith("linux"):
        raise PermanentError(f"fanotify needs Linux; this is {sys.platform}")
    libc = ctypes.CDLL(None, use_errno=True)
    c_int, c_char_p = ctypes.c_int, ctypes.c_char_p
    for name, argtypes in (
            ("fanotify_init", [ctypes.c_uint, ctypes.c_uint]),
            ("fanotify_mark", [c_int, ctypes.c_uint, ctypes.c_uint64, c_int, c_char_p]),
            ("open_by_handle_at", [c_int, c_char_p, c_int]),
            ("name_to_handle_at", [c_int, c_char_p, c_char_p, ctypes.POINTER(c_int), c_int])):
        if not hasattr(libc, name):
            raise PermanentError(f"this C library has no {name}(); fanotify is not usable")
        getattr(libc, name).argtypes = argtypes
        getattr(libc, name).restype = c_int
    return libc


def _root_mask(mask: int) -> int:
    """An event naming a root in its parent, as the root's own event (as watch.py has it)."""
    out = mask & (FAN_ATTRIB | FAN_CREATE | FAN_MOVED_TO)
    if mask & FAN_DELETE:
        out |= FAN_DELETE_SELF
    if mask & FAN_MOVED_FROM:
        out |= FAN_MOVE_SELF
    return out


class FanotifyWatcher:
    """Watches ``roots`` through one fanotify mark per filesystem; see the module docstring.

    The constructor creates the group and places the marks, raising
    :class:`~corestate.errors.PermanentError` with the reason when it cannot; from then
    on events are queued. ``excluded`` is asked about directories as in ``Watcher``;
    ``max_watches`` is accepted for the common interface and unused (there are no
    per-directory watches).

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp, FanotifyWatcher([os.fsencode(tmp)]) as w:
    ...     open(os.path.join(tmp, "f"), "w").close()
    ...     batch = w.poll(5.0)
    ...     batch is not None and batch.dirty_dirs == {os.fsencode(tmp)}
    True
    """

    def __init__(self, roots: Iterable[bytes], excluded: Callable[[bytes], bool] = lambda p: False,
                 max_watches: int | None = None) -> None:
        self._libc = _libc()
        fd = int(self._libc.fanotify_init(
            FAN_CLASS_NOTIF | FAN_REPORT_DFID_NAME | FAN_CLOEXEC | FAN_NONBLOCK,
            os.O_RDONLY | os.O_LARGEFILE))
        if fd < 0:
            err = ctypes.get_errno()
            raise PermanentError(f"cannot create a fanotify group: {os.strerror(err)}."
                                 f"{_INIT_HINTS.get(err, '')}")
        self._fd = fd
        self._mounts: dict[bytes, int] = {}  # fsid -> descriptor for open_by_handle_at
        self._poller = select.poll()
        self._poller.register(fd, select.POLLIN)
        self._excluded = excluded
        self._roots: list[bytes] = []
        self._prefixes: list[tuple[bytes, bytes]] = []  # (real path, path as given)
        self._paths: collections.OrderedDict[bytes, bytes | None] = collections.OrderedDict()
        self._excluded_tree: Callable[[bytes], bool] = functools.lru_cache(
            maxsize=PATH_CACHE_SIZE)(self._excluded_uncached)
        self._started = False
        try:
            self._mark_all([os.path.abspath(os.fsencode(r)) for r in roots])
        except BaseException:
            self.close()
            raise

    def _mark_all(self, roots: list[bytes]) -> None:
        devices: set[int] = set()
        for root in roots:
            try:
                st = os.stat(root)
                real = os.path.realpath(root)
            except (FileNotFoundError, NotADirectoryError) as exc:
                log.debug("not watching %s: %s", os.fsdecode(root), exc)
                continue  # as Watcher: a missing root is simply not watched
            self._roots.append(root)
            self._prefixes.append((real, root))
            if st.st_dev in devices:
                continue
            devices.add(st.st_dev)
            if self._libc.fanotify_mark(self._fd, FAN_MARK_ADD | FAN_MARK_FILESYSTEM, MARK_MASK,
                                        AT_FDCWD, real) < 0:
                err = ctypes.get_errno()
                hint = {errno.EPERM: " It needs CAP_SYS_ADMIN.",
                        errno.ENOSPC: " Too many marks: raise fs.fanotify.max_user_marks.",
                        }.get(err, " Its filesystem cannot report file handles.")
                raise PermanentError(f"cannot mark the filesystem of {os.fsdecode(root)} for "
                                     f"fanotify: {os.strerror(err)}.{hint}")
            try:
                fsid = struct.pack("=Q", os.statvfs(real).f_fsid)
                self._mounts[fsid] = os.open(real, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError as exc:
                raise PermanentError(f"cannot open {os.fsdecode(root)}: {exc}") from exc
            self._check_handles(fsid, real)

    def _check_handles(self, fsid: bytes, real: bytes) -> None:
        """Resolve the root's own handle, as events will be: proves the filesystem decodes
        handles and this process may call open_by_handle_at (CAP_DAC_READ_SEARCH)."""
        buf = ctypes.create_string_buffer(struct.pack("=Ii", MAX_HANDLE_SZ, 0), 8 + MAX_HANDLE_SZ)
        mount_id = ctypes.c_int()
        if self._libc.name_to_handle_at(AT_FDCWD, real, buf, ctypes.byref(mount_id), 0) < 0:
            err = ctypes.get_errno()
            raise PermanentError(f"{os.fsdecode(real)}: no file handles: {os.strerror(err)}")
        size = struct.unpack_from("=I", buf.raw)[0]
        resolved, err = self._open_handle(fsid, buf.raw[:8 + size])
        if resolved != real:
            raise PermanentError(
                f"cannot resolve file handles on the filesystem of {os.fsdecode(real)}: "
                f"{os.strerror(err) if err else resolved!r}. open_by_handle_at needs "
                "CAP_DAC_READ_SEARCH.")

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        """Nothing to walk: the constructor's marks already cover every directory."""
        self._started = True

    def close(self) -> None:
        """Close the group, which drops its marks; idempotent."""
        if self._fd >= 0:
            self._poller.unregister(self._fd)
            os.close(self._fd)
            self._fd = -1
        for fd in self._mounts.values():
            os.close(fd)
        self._mounts.clear()
        self._paths.clear()

    def fileno(self) -> int:
        """The fanotify descriptor: readable when events (maybe not ours) are queued."""
        if self._fd < 0:
            raise ValueError("watcher is closed")
        return self._fd

    def __enter__(self) -> FanotifyWatcher:
        if not self._started:
            self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    @property
    def watched_dirs(self) -> frozenset[bytes]:
        """The roots: the filesystem marks cover each of them and everything below."""
        return frozenset(self._roots)

    @property
    def unwatched(self) -> frozenset[bytes]:
        """Always empty: there is no watch limit to run into."""
        return frozenset()

    # -- polling --------------------------------------------------------------------

    def poll(self, timeout: float, coalesce: float = COALESCE_MAX) -> ChangeBatch | None:
        """Wait up to ``timeout`` seconds for events under the roots; return them
        coalesced, or None. After the first such event, reading goes on until none has
        come for ``COALESCE_QUIET`` seconds, for at most ``coalesce`` seconds. Events
        elsewhere on the filesystem neither end the wait nor extend the batch."""
        if self._fd < 0:
            raise ValueError("watcher is closed")
        acc = _Accumulator()
        deadline = time.monotonic() + max(0.0, timeout)
        cap = min(coalesce, COALESCE_MAX)
        begin = last = 0.0
        counted = 0
        wait = max(0.0, timeout)
        while True:
            if self._poller.poll(math.ceil(wait * 1000)):
                self._drain(acc)
            now = time.monotonic()
            if not begin:
                if not (acc.events or acc.overflow):
                    if now >= deadline:
                        return None
                    wait = deadline - now
                    continue
                begin = last = now
                counted = acc.events
            elif acc.events != counted:
                counted, last = acc.events, now
            limit = min(begin + cap, last + COALESCE_QUIET)
            if now >= limit:
                break
            wait = limit - now
        return ChangeBatch(dirty_dirs=frozenset(acc.dirty), paths=frozenset(acc.paths),
                           kinds=acc.kinds, overflow=acc.overflow, events=acc.events)

    def _drain(self, acc: _Accumulator) -> None:
        for _ in range(_READS_PER_DRAIN):
            try:
                buf = os.read(self._fd, _READ_SIZE)
            except BlockingIOError:
                return
            offset = 0
            while offset + _METADATA.size <= len(buf):
                length, version, _, meta_len, mask, fd, _ = _METADATA.unpack_from(buf, offset)
                if version != FANOTIFY_METADATA_VERSION:
                    raise PermanentError(f"unknown fanotify metadata version {version}")
                if fd >= 0:
                    os.close(fd)  # not expected with FID reporting; never leak one
                self._event(acc, mask, buf[offset + meta_len:offset + length])
                offset += length

    def _event(self, acc: _Accumulator, mask: int, info: bytes) -> None:
        if mask & FAN_Q_OVERFLOW:
            acc.overflow = True
            acc.events += 1
            self._paths.clear()  # the moves that would have invalidated it are lost
            return
        pos = 0
        while pos + _INFO.size <= len(info):
            kind, _, length, fsid, size, _ = _INFO.unpack_from(info, pos)
            if kind in (FAN_EVENT_INFO_TYPE_DFID_NAME, FAN_EVENT_INFO_TYPE_DFID) and length:
                start = pos + _INFO.size - 8
                handle = info[start:start + 8 + size]
                name = info[start + 8 + size:pos + length].split(b"\0", 1)[0]
                if name in (b"", b"."):
                    self._on_self(acc, mask, fsid, handle)
                else:
                    self._on_entry(acc, mask, fsid, handle, name)
                return
            if not length:
                return
            pos += length

    def _on_entry(self, acc: _Accumulator, mask: int, fsid: bytes, handle: bytes,
                  name: bytes) -> None:
        real_dir = self._resolve(fsid, handle)
        if real_dir is None:
            return  # the directory is gone; its parent's event covers it
        if mask & FAN_ONDIR and mask & FAN_MOVED_FROM:
            self._invalidate(os.path.join(real_dir, name))
        directory = self._given(real_dir)
        entry = os.path.join(directory, name)
        if entry in self._roots:
            if not self._excluded(entry) and _root_mask(mask):
                acc.events += 1
                acc.note(entry, entry, _root_mask(mask))
                if mask & FAN_ONDIR and mask & FAN_MOVED_TO:
                    acc.dirty.update(self._subdirs(entry, recursive=True))
            return
        if not self._inside(directory):
            return
        acc.events += 1
        acc.note(directory, entry, mask)
        if mask & FAN_ONDIR and mask & (FAN_CREATE | FAN_MOVED_TO):
            acc.dirty.update(self._subdirs(entry, recursive=bool(mask & FAN_MOVED_TO)))

    def _on_self(self, acc: _Accumulator, mask: int, fsid: bytes, handle: bytes) -> None:
        """An event on a directory itself (name ``.``). Its moves and deletion also come
        by name from its parent (a root's included); its attribute changes only this way."""
        if mask & FAN_DELETE_SELF:
            self._paths.pop(fsid + handle, None)  # empty when deleted: nothing cached below
        if not mask & FAN_ATTRIB:
            return
        real = self._resolve(fsid, handle)
        if real is None:
            return
        path = self._given(real)
        directory = path if path in self._roots else os.path.dirname(path)  # as inotify
        if self._inside(directory):
            acc.events += 1
            acc.note(directory, path, FAN_ATTRIB)

    # -- paths ----------------------------------------------------------------------

    def _resolve(self, fsid: bytes, handle: bytes) -> bytes | None:
        """The current path of a directory handle (real, not through the roots' symlinks),
        or None if it no longer exists."""
        key = fsid + handle
        if key in self._paths:
            self._paths.move_to_end(key)
            return self._paths[key]
        path, err = self._open_handle(fsid, handle)
        if err not in (0, errno.ESTALE, errno.ENOENT):
            log.debug("cannot resolve a file handle: %s", os.strerror(err))
        self._paths[key] = path
        if len(self._paths) > PATH_CACHE_SIZE:
            self._paths.popitem(last=False)
        return path

    def _open_handle(self, fsid: bytes, handle: bytes) -> tuple[bytes | None, int]:
        mount = self._mounts.get(fsid)
        if mount is None:
            if len(self._mounts) != 1:
                return None, errno.EXDEV
            mount = next(iter(self._mounts.values()))  # fsid as statvfs() shows it may differ
        fd = int(self._libc.open_by_handle_at(mount, handle, os.O_PATH | os.O_CLOEXEC))
        if fd < 0:
            return None, ctypes.get_errno()
        try:
            if os.fstat(fd).st_nlink == 0:
                return None, errno.ENOENT  # deleted, still held open somewhere
            return os.readlink(b"/proc/self/fd/%d" % fd), 0
        finally:
            os.close(fd)

    def _invalidate(self, prefix: bytes) -> None:
        """Forget the cached paths of ``prefix`` and below: that directory moved."""
        for key in [k for k, p in self._paths.items() if p is not None and _under(p, prefix)]:
            del self._paths[key]

    def _given(self, real: bytes) -> bytes:
        """A real path spelled through the root that contains it, as the caller named it."""
        for prefix, root in self._prefixes:
            if _under(real, prefix):
                rest = real[len(prefix):].lstrip(b"/")
                return os.path.join(root, rest) if rest else root
        return real

    def _inside(self, directory: bytes) -> bool:
        """Whether events in ``directory`` are reported: under a root, not excluded."""
        return any(_under(directory, r) for r in self._roots) and not self._excluded_tree(directory)

    def _excluded_uncached(self, path: bytes) -> bool:
        if self._excluded(path):
            return True
        parent = os.path.dirname(path)
        return path not in self._roots and parent != path and self._excluded_tree(parent)

    def _subdirs(self, top: bytes, recursive: bool) -> list[bytes]:
        """``top`` and, if ``recursive``, the directories below it, skipping excluded
        ones: a directory moved in brings its contents without further events."""
        found: list[bytes] = []
        stack = [top]
        while stack:
            path = stack.pop()
            if self._excluded_tree(path):
                continue
            found.append(path)
            if not recursive:
                continue
            try:
                with os.scandir(path) as entries:
                    stack.extend(e.path for e in entries if e.is_dir(follow_symlinks=False))
            except OSError as exc:
                log.debug("cannot list %s: %s", os.fsdecode(path), exc)
        return found


def open_watcher(roots: Iterable[bytes], excluded: Callable[[bytes], bool] = lambda p: False,
                 prefer_fanotify: bool = True) -> FanotifyWatcher | Watcher:
    """A :class:`FanotifyWatcher` if fanotify can mark the filesystem of every root (and
    resolve its file handles), else an inotify :class:`Watcher`, saying why at info level.
    Either is used the same way: ``with open_watcher(roots, excluded) as w: w.poll(...)``."""
    roots = list(roots)
    if prefer_fanotify:
        try:
            return FanotifyWatcher(roots, excluded)
        except (PermanentError, OSError) as exc:
            log.info("watching with inotify (a watch per directory) instead of fanotify: %s", exc)
    return Watcher(roots, excluded)
