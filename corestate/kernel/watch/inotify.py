"""A :class:`~corestate.kernel.watch.watcher.Watcher` on Linux inotify: a watch on every
directory under the roots.

Terms (the watcher's own are in :mod:`corestate.kernel.watch.watcher`):

- *watch*: an inotify watch on one directory, named by the kernel's watch descriptor
  (*wd*). inotify is not recursive, so every directory under a root has its own watch,
  added when the watcher starts (a walk of the roots) or when a directory appears.
- *watch limit*: ``/proc/sys/fs/inotify/max_user_watches``. Directories past it are
  *unwatched*; a warning says once how to raise the limit.
- *queue limit*: ``/proc/sys/fs/inotify/max_queued_events``, fixed when the watcher is
  made. Past it events are lost (*overflow*); the watcher then re-walks its roots so
  that its watches match the tree again.

A new directory is watched before it is listed, so nothing created in it between the
two is missed, and every directory found in it is dirty. Moves: the kernel reports a
rename as IN_MOVED_FROM in the old parent and IN_MOVED_TO in the new one, with the same
*cookie*. A pair within one batch is a rename inside the tree: the moved subtree keeps
its watches and only their paths change. An IN_MOVED_FROM without its IN_MOVED_TO left
the tree, so its watches are removed; an IN_MOVED_TO without an IN_MOVED_FROM came in
from outside, so its subtree is walked and watched.

Limitations: a deleted or moved root is reported once and not watched again; the same
directory reachable by two paths (bind mounts) has one watch, reported under the path
seen last.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import struct
from collections.abc import Callable, Iterable

from corestate.errors import PermanentError
from corestate.kernel import libc
from corestate.kernel.watch.watcher import BatchBuilder, QueueWatcher, is_under

log = logging.getLogger(__name__)

IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_UNMOUNT = 0x00002000
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_EXCL_UNLINK = 0x04000000
IN_ISDIR = 0x40000000

WATCH_MASK = (IN_CREATE | IN_CLOSE_WRITE | IN_MODIFY | IN_ATTRIB | IN_DELETE | IN_DELETE_SELF
              | IN_MOVED_FROM | IN_MOVED_TO | IN_MOVE_SELF | IN_DONT_FOLLOW | IN_ONLYDIR
              | IN_EXCL_UNLINK)
MAX_USER_WATCHES = "/proc/sys/fs/inotify/max_user_watches"

_SELF_EVENTS = IN_DELETE_SELF | IN_MOVE_SELF | IN_ATTRIB | IN_UNMOUNT
# Directories that vanish or deny access are an ordinary part of a live tree.
_QUIET_ERRNOS = frozenset({errno.ENOENT, errno.ENOTDIR, errno.EACCES})
_EVENT_HEADER = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len
_READ_SIZE = 64 * 1024
_READS_PER_DRAIN = 16


class InotifyWatcher(QueueWatcher):
    """Watches every directory under ``roots``; see the module docstring.

    ``excluded(path)`` is asked about each absolute directory path before it is watched.
    ``max_watches`` caps the number of watches, behaving like the kernel limit (a knob
    for tests).

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp, InotifyWatcher([os.fsencode(tmp)]) as w:
    ...     open(os.path.join(tmp, "f"), "w").close()
    ...     batch = w.poll(5.0)
    ...     batch is not None and batch.dirty_dirs == {os.fsencode(tmp)}
    True
    """

    def __init__(self, roots: Iterable[bytes], excluded: Callable[[bytes], bool] = lambda p: False,
                 max_watches: int | None = None) -> None:
        self._add_watch = libc.function("inotify_add_watch")
        self._rm_watch = libc.function("inotify_rm_watch")
        fd = int(libc.function("inotify_init1")(os.O_NONBLOCK | os.O_CLOEXEC))
        if fd < 0:
            err = ctypes.get_errno()
            hint = (" Too many inotify instances: raise /proc/sys/fs/inotify/max_user_instances"
                    " (sysctl fs.inotify.max_user_instances=1024)." if err == errno.EMFILE else "")
            raise PermanentError(f"cannot create an inotify instance: {os.strerror(err)}.{hint}")
        super().__init__(fd)
        self._roots = [os.path.abspath(os.fsencode(r)) for r in roots]
        self._excluded = excluded
        self._max_watches = max_watches
        self._wd_to_path: dict[int, bytes] = {}
        self._path_to_wd: dict[bytes, int] = {}
        self._unwatched: set[bytes] = set()
        self._pending_moves: dict[int, bytes] = {}  # cookie -> source of an IN_MOVED_FROM
        self._warned = False

    @property
    def watched_dirs(self) -> frozenset[bytes]:
        """Directories that currently have a watch."""
        return frozenset(self._path_to_wd)

    @property
    def unwatched(self) -> frozenset[bytes]:
        """Directories that could not be watched and must be scanned periodically."""
        return frozenset(self._unwatched)

    def _begin(self) -> None:
        for root in self._roots:
            self._add_tree(root)

    def _release(self) -> None:
        self._wd_to_path.clear()
        self._path_to_wd.clear()

    def _settle(self, batch: BatchBuilder) -> None:
        if self._pending_moves:
            # Both halves of a rename are queued together: a missing IN_MOVED_TO may
            # simply not have been read yet.
            self._read(batch)
        for source in self._pending_moves.values():
            self._forget_tree(source)  # moved out of the tree
        self._pending_moves.clear()
        if batch.overflow:
            self._resync()

    # -- events ---------------------------------------------------------------------

    def _read(self, batch: BatchBuilder) -> None:
        for _ in range(_READS_PER_DRAIN):
            try:
                buf = os.read(self._fd, _READ_SIZE)
            except BlockingIOError:
                return
            offset = 0
            while offset + _EVENT_HEADER.size <= len(buf):
                wd, mask, cookie, length = _EVENT_HEADER.unpack_from(buf, offset)
                start = offset + _EVENT_HEADER.size
                name = buf[start:start + length].split(b"\0", 1)[0]
                offset = start + length
                self._event(batch, wd, mask, cookie, name)

    def _event(self, batch: BatchBuilder, wd: int, mask: int, cookie: int, name: bytes) -> None:
        if mask & IN_Q_OVERFLOW:
            batch.lost()
            return
        base = self._wd_to_path.get(wd)
        if base is None:
            return  # a watch already dropped: moved out, deleted or resynced away
        if mask & IN_IGNORED:
            self._drop_wd(wd)
            return
        if not name:
            # An event on the watched directory itself. Its parent's watch reports the
            # same change by name, except for a root, whose parent is not watched.
            if base in self._roots and mask & _SELF_EVENTS:
                batch.note(base, base, mask)
                if mask & IN_MOVE_SELF:
                    self._forget_tree(base)
            return
        path = os.path.join(base, name)
        batch.note(base, path, mask)
        if not mask & IN_ISDIR:
            return
        if mask & IN_CREATE:
            batch.dirty.update(self._add_tree(path))
        elif mask & IN_MOVED_FROM:
            self._pending_moves[cookie] = path
        elif mask & IN_MOVED_TO:
            source = self._pending_moves.pop(cookie, None)
            if source is not None:
                self._rebase(source, path)
            if self._excluded(path):
                self._forget_tree(path)
            batch.dirty.update(self._add_tree(path))
        elif mask & IN_DELETE:
            self._forget_tree(path)

    # -- the wd <-> path map ----------------------------------------------------------

    def _add_tree(self, top: bytes, seen: set[int] | None = None) -> list[bytes]:
        """Watch ``top`` and every directory below it (watch first, then list, so that
        nothing created in between is missed); return the directories found."""
        found: list[bytes] = []
        stack = [top]
        while stack:
            path = stack.pop()
            if self._excluded(path) or not self._watch(path, seen):
                continue
            found.append(path)
            try:
                with os.scandir(path) as entries:
                    for entry in entries:
                        try:
                            if entry.is_dir(follow_symlinks=False):
                                stack.append(entry.path)
                        except OSError:
                            continue
            except OSError as exc:
                log.debug("cannot list %s: %s", os.fsdecode(path), exc)
        return found

    def _watch(self, path: bytes, seen: set[int] | None) -> bool:
        """Watch ``path``, or record it as unwatched; False if it vanished or is denied."""
        if (self._max_watches is not None and path not in self._path_to_wd
                and len(self._wd_to_path) >= self._max_watches):
            self._out_of_watches(path, f"max_watches={self._max_watches}")
            return True
        wd = int(self._add_watch(self._fd, path, WATCH_MASK))
        if wd < 0:
            err = ctypes.get_errno()
            if err in _QUIET_ERRNOS:
                log.debug("not watching %s: %s", os.fsdecode(path), os.strerror(err))
                return False
            if err == errno.ENOSPC:
                self._out_of_watches(path, f"{MAX_USER_WATCHES} = {_read_limit()}")
            else:
                log.warning("cannot watch %s (%s); it will be scanned periodically instead",
                            os.fsdecode(path), os.strerror(err))
                self._unwatched.add(path)
            return True
        old_path = self._wd_to_path.get(wd)
        if old_path is not None and old_path != path and self._path_to_wd.get(old_path) == wd:
            del self._path_to_wd[old_path]  # same directory, now found at a new path
        old_wd = self._path_to_wd.get(path)
        if old_wd is not None and old_wd != wd:
            self._drop_wd(old_wd)  # another directory used to be at this path
            self._rm_watch(self._fd, old_wd)
        self._wd_to_path[wd] = path
        self._path_to_wd[path] = wd
        self._unwatched.discard(path)
        if seen is not None:
            seen.add(wd)
        return True

    def _out_of_watches(self, path: bytes, limit: str) -> None:
        self._unwatched.add(path)
        if not self._warned:
            self._warned = True
            log.warning(
                "out of inotify watches (%s) after %d watched directories: %s and further "
                "directories are not watched and are only picked up by periodic scans. Raise "
                "the kernel limit %s, e.g. `sysctl fs.inotify.max_user_watches=1048576` "
                "(persist it in /etc/sysctl.d/), then restart.",
                limit, len(self._wd_to_path), os.fsdecode(path), MAX_USER_WATCHES)

    def _drop_wd(self, wd: int) -> None:
        path = self._wd_to_path.pop(wd, None)
        if path is not None and self._path_to_wd.get(path) == wd:
            del self._path_to_wd[path]

    def _forget_tree(self, prefix: bytes) -> None:
        """Remove the watches on ``prefix`` and below, which left the tree."""
        for wd in [wd for wd, p in self._wd_to_path.items() if is_under(p, prefix)]:
            self._drop_wd(wd)
            self._rm_watch(self._fd, wd)  # EINVAL if already gone: harmless
        self._unwatched = {p for p in self._unwatched if not is_under(p, prefix)}

    def _rebase(self, old: bytes, new: bytes) -> None:
        """Re-path the watches of a subtree renamed from ``old`` to ``new``."""
        moved = [(wd, p) for wd, p in self._wd_to_path.items() if is_under(p, old)]
        for wd, _ in moved:
            self._drop_wd(wd)
        for wd, p in moved:
            renamed = new + p[len(old):]
            self._wd_to_path[wd] = renamed
            self._path_to_wd[renamed] = wd
        self._unwatched = {new + p[len(old):] if is_under(p, old) else p for p in self._unwatched}

    def _resync(self) -> None:
        """After lost events: re-walk the roots and drop watches no longer in the tree."""
        seen: set[int] = set()
        self._unwatched.clear()
        for root in self._roots:
            self._add_tree(root, seen)
        for wd in [wd for wd in self._wd_to_path if wd not in seen]:
            self._drop_wd(wd)
            self._rm_watch(self._fd, wd)


def _read_limit() -> str:
    try:
        with open(MAX_USER_WATCHES) as f:
            return f.read().strip()
    except OSError:
        return "unknown"
