"""Capture: what a file system entry looks like, which entries to skip, and reading a
file's bytes consistently.

*Exclude patterns* are restic-style globs: a pattern without ``/`` matches any single
path component (``*.tmp``, ``node_modules``); a pattern with ``/`` matches the whole
absolute path, where ``**`` spans directories (``/home/*/.cache``, ``**/build/*.o``).

A *consistent read* of a file reads one version of it. Where the filesystem supports
reflinks (btrfs, XFS) the file is cloned and the clone is read. Elsewhere the live file
is read and its size, mtime and ctime must not change meanwhile (``fstat`` before and
after); a read that saw a change is repeated up to :data:`READ_ATTEMPTS` times; if the
file never settles, the last read is kept and the file is flagged *inconsistent* (the
backup warns; the content may mix two versions).

>>> m = ExcludeMatcher(["*.tmp", "/data/**/cache", "node_modules"])
>>> [m.excluded(p) for p in (b"/a/x.tmp", b"/data/a/b/cache", b"/w/node_modules", b"/w/src")]
[True, True, True, False]
"""

from __future__ import annotations

import fnmatch
import grp
import os
import pwd
import re
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache

from corestate.kernel.reflink import clone_for_read, reflinks_known
from corestate.repository.tree import Node, go_mode, node_type

READ_ATTEMPTS = 3


class ExcludeMatcher:
    """Decides whether an absolute path (bytes) is excluded."""

    def __init__(self, patterns: list[str]) -> None:
        self.patterns = list(patterns)
        self._names: list[re.Pattern[bytes]] = []
        self._paths: list[re.Pattern[bytes]] = []
        for p in patterns:
            raw = os.fsencode(p.rstrip("/"))
            if b"/" in raw:
                self._paths.append(re.compile(_glob_regex(raw)))
            else:
                self._names.append(re.compile(fnmatch.translate(p).encode()))

    def excluded(self, path: bytes) -> bool:
        name = path.rsplit(b"/", 1)[-1]
        return (any(r.match(name) for r in self._names)
                or any(r.match(path) for r in self._paths))


def _glob_regex(pattern: bytes) -> bytes:
    """Regex for a path glob: ``**`` any depth, ``*``/``?`` within one component."""
    out = []
    i = 0
    if not pattern.startswith(b"/") and not pattern.startswith(b"**"):
        out.append(b"(?:.*/)?")  # relative patterns match at any depth
    while i < len(pattern):
        c = pattern[i:i + 1]
        if pattern[i:i + 3] == b"**/":
            out.append(b"(?:.*/)?")
            i += 3
        elif pattern[i:i + 2] == b"**":
            out.append(b".*")
            i += 2
        elif c == b"*":
            out.append(b"[^/]*")
            i += 1
        elif c == b"?":
            out.append(b"[^/]")
            i += 1
        else:
            out.append(re.escape(c))
            i += 1
    return b"".join(out) + b"(?:/.*)?$"


@lru_cache(maxsize=1024)
def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return ""


@lru_cache(maxsize=1024)
def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return ""


def _xattrs(path: bytes) -> list[tuple[str, bytes]]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return []
    out = []
    for n in sorted(names):
        try:
            out.append((n, os.getxattr(path, n, follow_symlinks=False)))
        except OSError:
            continue
    return out


def node_from_stat(name: bytes, path: bytes, st: os.stat_result) -> Node:
    """A tree node for an entry (without ``content``/``subtree``, filled in later)."""
    ntype = node_type(st.st_mode)
    node = Node(
        name=name, type=ntype, mode=go_mode(st.st_mode),
        mtime=st.st_mtime_ns, atime=st.st_atime_ns, ctime=st.st_ctime_ns,
        uid=st.st_uid, gid=st.st_gid, user=_user(st.st_uid), group=_group(st.st_gid),
        inode=st.st_ino, device_id=st.st_dev, links=st.st_nlink,
        size=st.st_size if ntype == "file" else 0,
    )
    if ntype == "symlink":
        node.linktarget = os.readlink(path)
    elif ntype in ("dev", "chardev"):
        node.device = st.st_rdev
    node.xattrs = _xattrs(path) if ntype != "symlink" else []
    return node


def unchanged(old: Node, new: Node) -> bool:
    """Whether a file's fresh node matches its node in the parent snapshot (restic's
    rule: same size, mtime, ctime and inode)."""
    return (old.type == "file" and old.content is not None and old.size == new.size
            and old.mtime == new.mtime and old.ctime == new.ctime and old.inode == new.inode)


@dataclass
class ReadOutcome:
    """The result of reading one file: ``consistent`` is False if it never settled."""

    st: os.stat_result
    attempts: int
    consistent: bool
    cloned: bool = False  # read from a reflink clone


def _same(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_size, a.st_mtime_ns, a.st_ctime_ns) == (b.st_size, b.st_mtime_ns, b.st_ctime_ns)


def open_for_read(path: bytes) -> int:
    """An fd for reading ``path`` without following a symlink or touching its atime."""
    try:
        return os.open(path, os.O_RDONLY | os.O_NOATIME | os.O_NOFOLLOW | os.O_CLOEXEC)
    except PermissionError:  # O_NOATIME needs ownership
        return os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)


class ConsistentRead:
    """A consistent read of one file, as a loop the caller drives: each item is
    ``(fd, stat)`` for one attempt, to be read whole before the next item is asked for
    (an attempt after the first means the file changed underfoot: start over). After the
    loop, :attr:`outcome` tells how it went. See :func:`read_consistently`."""

    def __init__(self, path: bytes, dev: int | None = None) -> None:
        self.path = path
        self.dev = dev
        self.outcome: ReadOutcome | None = None

    def __iter__(self) -> Iterator[tuple[int, os.stat_result]]:
        path = self.path
        if self.dev is None or reflinks_known(self.dev) is not False:
            before = os.lstat(path)
            if stat.S_ISREG(before.st_mode):
                with clone_for_read(path) as clone:
                    if clone is not None:
                        yield clone, before
                        self.outcome = ReadOutcome(before, 1, True, cloned=True)
                        return
        attempt = 0
        while True:
            attempt += 1
            fd = open_for_read(path)
            try:
                before = os.fstat(fd)
                if not stat.S_ISREG(before.st_mode):
                    raise OSError(f"{os.fsdecode(path)} is no longer a regular file")
                yield fd, before
                after = os.fstat(fd)
            finally:
                os.close(fd)
            if _same(before, after) or attempt >= READ_ATTEMPTS:
                self.outcome = ReadOutcome(after, attempt, _same(before, after))
                return


def read_consistently(path: bytes, consume: Callable[[int, os.stat_result], None],
                      dev: int | None = None) -> ReadOutcome:
    """Call ``consume(fd, stat)`` on a consistent view of ``path``.

    Where the filesystem can clone (reflinks), the view is a clone taken right after
    ``stat``: one read, consistent by construction, and the recorded metadata is never
    newer than the content. Otherwise the live file is read and the read is repeated
    while it changes underfoot (``consume`` must start over each time). ``dev`` skips
    the clone attempt on filesystems already known not to clone. OSError (unreadable,
    vanished) propagates."""
    reading = ConsistentRead(path, dev)
    for fd, st in reading:
        consume(fd, st)
    assert reading.outcome is not None
    return reading.outcome
