"""Setting a restored entry's metadata: owner, mode, extended attributes and times.

Terms:

- a *meta* (:class:`Meta`) is what of a tree node is set on the restored entry, small
  enough to hand to a worker process with each file it finishes
  (:mod:`corestate.restore.writer`);
- the *order* is owner, mode, xattrs, times: ``chown`` clears setuid and setgid bits,
  and setting xattrs must not move the times;
- *known-right* owner or mode (``owner_ok``, ``mode_ok``): a file this restore created
  in a directory it created already has them (the restoring user's owner, its mode
  given to ``open``), so they are not set again.

Who applies it: the restorer for directories, symlinks, special files and files it
finishes itself; the writer's workers for the files they create and finish whole.
"""

from __future__ import annotations

import errno
import os
from typing import NamedTuple

from corestate.repository.tree import Node, posix_mode

_NO_XATTR_SUPPORT = {errno.ENOTSUP, errno.EOPNOTSUPP}


class Meta(NamedTuple):
    """A node's metadata as set on disk (``mode``: the permission bits with setuid,
    setgid and sticky; times in ns)."""

    type: str
    mode: int
    uid: int
    gid: int
    xattrs: tuple[tuple[str, bytes], ...]
    atime: int
    mtime: int

    @classmethod
    def of(cls, node: Node) -> Meta:
        return cls(node.type, posix_mode(node.mode, node.type) & 0o7777, node.uid, node.gid,
                   tuple(node.xattrs), node.atime, node.mtime)


def apply(dest: bytes, meta: Meta, fd: int | None = None, owner_ok: bool = False,
          mode_ok: bool = False, is_root: bool = False) -> None:
    """Set ``meta`` on ``dest`` (through ``fd`` when it is open), in the order above.

    An owner that cannot be set is left as it is unless running as root (restic does
    the same); xattrs the file system does not support are skipped. Raises
    :class:`OSError` for anything else."""
    is_link = meta.type == "symlink"
    try:
        if owner_ok:
            pass
        elif fd is not None:
            os.fchown(fd, meta.uid, meta.gid)
        else:
            os.chown(dest, meta.uid, meta.gid, follow_symlinks=False)
    except PermissionError:
        if is_root:
            raise
    if not is_link and not mode_ok:
        if fd is not None:
            os.fchmod(fd, meta.mode)
        else:
            os.chmod(dest, meta.mode)
    for name, value in meta.xattrs:
        try:
            if fd is not None:
                os.setxattr(fd, name, value)
            else:
                os.setxattr(dest, name, value, follow_symlinks=False)
        except OSError as exc:
            # Linux refuses user.* attributes on symlinks with EPERM.
            if exc.errno not in _NO_XATTR_SUPPORT and not (is_link and exc.errno == errno.EPERM):
                raise
    times = (meta.atime, meta.mtime)
    if fd is not None:
        os.utime(fd, ns=times)
    else:
        os.utime(dest, ns=times, follow_symlinks=False)
