"""A :class:`~corestate.kernel.watch.watcher.Watcher` on Linux fanotify: one mark per
filesystem instead of a watch per directory.

Terms (the watcher's own are in :mod:`corestate.kernel.watch.watcher`):

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
(events outside the roots are never noted: they neither end a wait nor prolong a batch); resolving a handle costs
a few system calls on a cache miss; and it needs CAP_SYS_ADMIN (marks) plus
CAP_DAC_READ_SEARCH (``open_by_handle_at``), Linux 5.9+ and a filesystem that can
decode file handles (ext4, xfs, btrfs, tmpfs do; procfs, sysfs do not).

Limitations: a filesystem mounted at several places reports paths through the mount of
the first root on it; a deleted directory's events are dropped when its handle no longer
resolves (its parent's deletion event marks the parent dirty). ``FAN_Q_OVERFLOW`` (the
queue holds 16384 events) sets ``overflow`` and empties the path cache.
"""

from __future__ import annotations

import collections
import ctypes
import errno
import functools
import logging
import os
import struct
from collections.abc import Callable, Iterable

from corestate.errors import PermanentError
from corestate.kernel import libc
from corestate.kernel.watch.watcher import BatchBuilder, QueueWatcher, is_under

log = logging.getLogger(__name__)

FAN_CLASS_NOTIF = 0x00000000
FAN_CLOEXEC = 0x00000001
FAN_NONBLOCK = 0x00000002
FAN_REPORT_DIR_FID = 0x00000400
FAN_REPORT_NAME = 0x00000800
FAN_REPORT_DFID_NAME = FAN_REPORT_DIR_FID | FAN_REPORT_NAME
FAN_MARK_ADD = 0x00000001
FAN_MARK_FILESYSTEM = 0x00000100
# The same fsnotify bits as inotify's, so watcher.KIND_BITS names them.
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


def _root_mask(mask: int) -> int:
    """An event naming a root in its parent, as the root's own event (as inotify has it)."""
    out = mask & (FAN_ATTRIB | FAN_CREATE | FAN_MOVED_TO)
    if mask & FAN_DELETE:
        out |= FAN_DELETE_SELF
    if mask & FAN_MOVED_FROM:
        out |= FAN_MOVE_SELF
    return out


class FanotifyWatcher(QueueWatcher):
    """Watches ``roots`` through one fanotify mark per filesystem; see the module docstring.

    The constructor creates the group and places the marks, raising
    :class:`~corestate.errors.PermanentError` with the reason when it cannot; from then
    on events are queued, so starting has nothing left to do. ``excluded`` is asked
    about directories (and, through the cache, about their ancestors).

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp, FanotifyWatcher([os.fsencode(tmp)]) as w:
    ...     open(os.path.join(tmp, "f"), "w").close()
    ...     batch = w.poll(5.0)
    ...     batch is not None and batch.dirty_dirs == {os.fsencode(tmp)}
    True
    """

    def __init__(self, roots: Iterable[bytes],
                 excluded: Callable[[bytes], bool] = lambda p: False) -> None:
        self._mark = libc.function("fanotify_mark")
        self._name_to_handle = libc.function("name_to_handle_at")
        self._open_by_handle = libc.function("open_by_handle_at")
        fd = int(libc.function("fanotify_init")(
            FAN_CLASS_NOTIF | FAN_REPORT_DFID_NAME | FAN_CLOEXEC | FAN_NONBLOCK,
            os.O_RDONLY | os.O_LARGEFILE))
        if fd < 0:
            err = ctypes.get_errno()
            raise PermanentError(f"cannot create a fanotify group: {os.strerror(err)}."
                                 f"{_INIT_HINTS.get(err, '')}")
        super().__init__(fd)
        self._mounts: dict[bytes, int] = {}  # fsid -> descriptor for open_by_handle_at
        self._excluded = excluded
        self._roots: list[bytes] = []
        self._prefixes: list[tuple[bytes, bytes]] = []  # (real path, path as given)
        self._paths: collections.OrderedDict[bytes, bytes | None] = collections.OrderedDict()
        self._excluded_tree: Callable[[bytes], bool] = functools.lru_cache(
            maxsize=PATH_CACHE_SIZE)(self._excluded_uncached)
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
                continue  # as with inotify: a missing root is simply not watched
            self._roots.append(root)
            self._prefixes.append((real, root))
            if st.st_dev in devices:
                continue
            devices.add(st.st_dev)
            if self._mark(self._fd, FAN_MARK_ADD | FAN_MARK_FILESYSTEM, MARK_MASK, AT_FDCWD,
                          real) < 0:
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
        if self._name_to_handle(AT_FDCWD, real, buf, ctypes.byref(mount_id), 0) < 0:
            err = ctypes.get_errno()
            raise PermanentError(f"{os.fsdecode(real)}: no file handles: {os.strerror(err)}")
        size = struct.unpack_from("=I", buf.raw)[0]
        resolved, err = self._open_handle(fsid, buf.raw[:8 + size])
        if resolved != real:
            raise PermanentError(
                f"cannot resolve file handles on the filesystem of {os.fsdecode(real)}: "
                f"{os.strerror(err) if err else repr(resolved)}. open_by_handle_at needs "
                "CAP_DAC_READ_SEARCH.")

    def _release(self) -> None:
        for fd in self._mounts.values():
            os.close(fd)
        self._mounts.clear()
        self._paths.clear()

    # -- events ---------------------------------------------------------------------

    def _read(self, batch: BatchBuilder) -> None:
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
                self._event(batch, mask, buf[offset + meta_len:offset + length])
                offset += length

    def _event(self, batch: BatchBuilder, mask: int, info: bytes) -> None:
        if mask & FAN_Q_OVERFLOW:
            batch.lost()
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
                    self._on_self(batch, mask, fsid, handle)
                else:
                    self._on_entry(batch, mask, fsid, handle, name)
                return
            if not length:
                return
            pos += length

    def _on_entry(self, batch: BatchBuilder, mask: int, fsid: bytes, handle: bytes,
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
                batch.note(entry, entry, _root_mask(mask))
                if mask & FAN_ONDIR and mask & FAN_MOVED_TO:
                    batch.dirty.update(self._subdirs(entry, recursive=True))
            return
        if not self._inside(directory):
            return
        batch.note(directory, entry, mask)
        if mask & FAN_ONDIR and mask & (FAN_CREATE | FAN_MOVED_TO):
            batch.dirty.update(self._subdirs(entry, recursive=bool(mask & FAN_MOVED_TO)))

    def _on_self(self, batch: BatchBuilder, mask: int, fsid: bytes, handle: bytes) -> None:
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
            batch.note(directory, path, FAN_ATTRIB)

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
        fd = int(self._open_by_handle(mount, handle, os.O_PATH | os.O_CLOEXEC))
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
        for key in [k for k, p in self._paths.items() if p is not None and is_under(p, prefix)]:
            del self._paths[key]

    def _given(self, real: bytes) -> bytes:
        """A real path spelled through the root that contains it, as the caller named it."""
        for prefix, root in self._prefixes:
            if is_under(real, prefix):
                rest = real[len(prefix):].lstrip(b"/")
                return os.path.join(root, rest) if rest else root
        return real

    def _inside(self, directory: bytes) -> bool:
        """Whether events in ``directory`` are reported: under a root, not excluded."""
        return any(is_under(directory, r) for r in self._roots) and not self._excluded_tree(directory)

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

