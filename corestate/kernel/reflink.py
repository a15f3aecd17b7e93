"""Point-in-time reads of files that may be written while we read them.

Terms:

- *reflink* (or *clone*): a second inode that shares the source file's data extents,
  made by ``ioctl(dst, FICLONE, src)`` on filesystems with copy-on-write extents (XFS
  with ``reflink=1``, btrfs, bcachefs, OCFS2). It costs metadata only, and once made it
  is a *point-in-time copy*: a later write to the source allocates new extents for the
  source, so the clone keeps the old bytes. The kernel flushes the source's dirty pages
  and holds both inodes' locks while cloning, so the clone never shows a half-done
  ``write()``.
- *fallback*: where no clone can be made (ext4, tmpfs, NFS, a read-only mount, a
  directory we may not write to), :func:`clone_for_read` yields ``None`` and the caller
  reads the live file and verifies it did not change meanwhile (size and mtime before
  and after, re-read on mismatch).

Why: continuous protection reads files that applications are writing. Reading a clone
gives a consistent version in one pass; the fallback needs a second look and may retry.

The clone lives in the source's directory (a clone cannot cross filesystems, and the
same directory is the same mount) as an unlinked file: ``O_TMPFILE`` where the
filesystem supports it, else a ``.corestate-clone-*`` name unlinked right after open.
Either way nothing is left behind when the process dies.

Whether FICLONE works is cached per ``st_dev``, so a filesystem without reflinks costs
one failed ioctl for the life of the process. A device number can be reused by another
filesystem after an unmount; :func:`reset_cache` forgets what was learnt.
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
import stat
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["FICLONE", "CLONE_PREFIX", "clone_for_read", "own_temp", "reflinks_known",
           "reset_cache"]

FICLONE = 0x40049409
"""``_IOW(0x94, 9, int)`` from ``<linux/fs.h>``."""

CLONE_PREFIX = b".corestate-clone-"
"""Name prefix of the short-lived clone file where ``O_TMPFILE`` is not available."""

_O_TMPFILE: int = getattr(os, "O_TMPFILE", 0)

# FICLONE errors meaning "this filesystem cannot clone": cached per device.
_FS_UNSUPPORTED = frozenset({
    errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOTTY, errno.ENOSYS, errno.EXDEV, errno.EINVAL,
})
# Errors of this file or this moment (read-only mount or directory, full disk, swap
# file, immutable flag): fall back for this call, do not condemn the filesystem.
_FALLBACK_ONLY = frozenset({
    errno.EPERM, errno.EACCES, errno.EROFS, errno.ETXTBSY, errno.ENOSPC, errno.EDQUOT,
    errno.EBUSY,
})
# O_TMPFILE errors meaning "not on this filesystem" (EISDIR: kernels before 3.11).
_TMPFILE_UNSUPPORTED = frozenset({errno.EOPNOTSUPP, errno.ENOTSUP, errno.EISDIR, errno.EINVAL})

_reflinks: dict[int, bool] = {}
_no_tmpfile: set[int] = set()

# Inode numbers of the O_TMPFILE files made here lately, for own_temp (bounded).
_OWN_TEMPS = 65536
_own_temps: OrderedDict[int, None] = OrderedDict()
_own_lock = threading.Lock()


def own_temp(name: bytes) -> bool:
    """Whether a directory entry name a watcher reported is one of this process's clone
    files: a :data:`CLONE_PREFIX` name, or ``#<inode>`` (the kernel's name for an
    ``O_TMPFILE`` file) of one made here. Making one is an event in the watched
    directory (fanotify reports its ``close_write``), which must not count as a change
    to protect, or every snapshot that reads a file would cause another one.

    >>> own_temp(CLONE_PREFIX + b"0123abcd"), own_temp(b"#0"), own_temp(b"notes.txt")
    (True, False, False)
    """
    if name.startswith(CLONE_PREFIX):
        return True
    if name[:1] != b"#" or not name[1:].isdigit():
        return False
    with _own_lock:
        return int(name[1:]) in _own_temps


def _remember(ino: int) -> None:
    with _own_lock:
        _own_temps[ino] = None
        _own_temps.move_to_end(ino)
        if len(_own_temps) > _OWN_TEMPS:
            _own_temps.popitem(last=False)


def reflinks_known(dev: int) -> bool | None:
    """What has been learnt about device ``dev``: True (clones work), False (they do
    not), None (not probed yet).

    >>> reset_cache(); reflinks_known(12345) is None
    True
    """
    return _reflinks.get(dev)


def reset_cache() -> None:
    """Forget which filesystems support reflinks (e.g. after a remount)."""
    _reflinks.clear()
    _no_tmpfile.clear()


def _open_temp(directory: bytes, dev: int) -> int:
    """An unlinked, writable file in ``directory``: O_TMPFILE, else create + unlink."""
    if _O_TMPFILE and dev not in _no_tmpfile:
        try:
            fd = os.open(directory, _O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
        except OSError as e:
            if e.errno not in _TMPFILE_UNSUPPORTED:
                raise
            _no_tmpfile.add(dev)
        else:
            try:
                _remember(os.fstat(fd).st_ino)
            except BaseException:
                os.close(fd)
                raise
            return fd
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(16):
        name = os.path.join(directory, CLONE_PREFIX + secrets.token_hex(8).encode())
        try:
            fd = os.open(name, flags, 0o600)
        except FileExistsError:
            continue
        try:
            os.unlink(name)
        except BaseException:
            os.close(fd)
            raise
        return fd
    raise FileExistsError(errno.EEXIST, "no free clone file name", directory)


def _clone(src: int, directory: bytes, dev: int) -> int | None:
    """The fd of a reflink clone of ``src``, or None where none can be made."""
    try:
        dst = _open_temp(directory, dev)
    except OSError as e:
        if e.errno in _FALLBACK_ONLY:
            return None
        raise
    try:
        if os.fstat(dst).st_dev != dev:
            # ``directory`` is not on the source's filesystem (it was replaced by a
            # symlink meanwhile): nothing learnt about ``dev``.
            os.close(dst)
            return None
        fcntl.ioctl(dst, FICLONE, src)
    except OSError as e:
        os.close(dst)
        if e.errno in _FS_UNSUPPORTED:
            # One file's odd case (e.g. an XFS realtime file) must not undo a proven yes.
            if _reflinks.get(dev) is not True:
                _reflinks[dev] = False
            return None
        if e.errno in _FALLBACK_ONLY:
            return None
        raise
    except BaseException:
        os.close(dst)
        raise
    _reflinks[dev] = True
    return dst


@contextmanager
def clone_for_read(src: int, directory: bytes) -> Iterator[int | None]:
    """Yield a read fd of a reflink clone of the open file ``src``, or None.

    ``src`` is a descriptor the caller opened and checked (a path would be opened again,
    and could name another file by then: see :func:`corestate.pipeline.capture.open_scanned`);
    ``directory`` is where it was found, for the short-lived clone file. None means "read
    the live file and verify it" (see the module docstring): the filesystem cannot clone,
    ``src`` is not a regular file, or the clone could not be created here (read-only
    mount or directory, full disk, a directory on another filesystem). The clone is
    closed, and therefore freed, when the block exits. I/O errors propagate as
    :class:`OSError`.

    The clone has its own inode number and times; take metadata from the source.
    """
    st = os.fstat(src)
    clone: int | None = None
    if stat.S_ISREG(st.st_mode) and _reflinks.get(st.st_dev) is not False:
        clone = _clone(src, directory or b".", st.st_dev)
    try:
        yield clone
    finally:
        if clone is not None:
            os.close(clone)
