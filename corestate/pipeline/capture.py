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

A *safe open* reads the file the scan found and nothing else, though the user who owns
the directory may replace entries between the scan's ``lstat`` and the read (a backup
run as root must not store a root-only file that a symlink put in place points to):
the open never follows a symlink (``O_NOFOLLOW``) nor blocks (``O_NONBLOCK``: a fifo
put in place opens at once), and the descriptor's ``fstat`` must match the scan's
device, inode and type. A mismatch means the entry *changed*: it is looked at again
and taken as what it now is (another file is read, a symlink or fifo recorded as
such). A file must also really be where its path says, below its source path
(:class:`Sources`): a directory above it replaced by a symlink is refused.

>>> m = ExcludeMatcher(["*.tmp", "/data/**/cache", "node_modules"])
>>> [m.excluded(p) for p in (b"/a/x.tmp", b"/data/a/b/cache", b"/w/node_modules", b"/w/src")]
[True, True, True, False]
"""

from __future__ import annotations

import errno
import fnmatch
import grp
import os
import pwd
import re
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, fields
from functools import lru_cache

from corestate.kernel.reflink import clone_for_read, reflinks_known
from corestate.pipeline.listings import Entry
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


def inside_repository(path: str, location: str) -> bool:
    """Whether ``path`` is, or lies inside, the repository kept in the directory
    ``location`` (a remote repository's location is no directory here: False).

    Such a path cannot be backed up into that repository: the walk leaves the
    repository out (else every backup would store the packs of the one before), so its
    snapshot would hold none of its files. A symlink there, being recorded and not
    followed, is not inside.

    >>> [inside_repository(p, r) for p, r in [("/etc/x", "/etc"), ("/etcx", "/etc"), ("/a", "s3:b")]]
    [True, False, False]
    """
    if not os.path.isabs(location) or not os.path.isdir(location):
        return False
    repo = os.path.realpath(location)
    parent, name = os.path.split(os.path.abspath(path))
    real = os.path.join(os.path.realpath(parent), name)
    return real == repo or real.startswith(repo.rstrip("/") + "/")


def node_from_stat(name: bytes, path: bytes, st: os.stat_result,
                   known: Node | Entry | None = None) -> Node:
    """A tree node for an entry (without ``content``/``subtree``, filled in later).

    ``known`` is a node recorded earlier for the same path (the parent snapshot's): when
    its type, inode, device and ctime are the fresh ones, its extended attributes are
    taken instead of asked of the kernel, since setting or removing one changes ctime
    (restic's rule for content, applied to xattrs: it saves two system calls a file)."""
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
    if ntype == "symlink":
        node.xattrs = []
    elif (known is not None and known.ctime == node.ctime and known.inode == node.inode
          and known.device_id == node.device_id and known.type == ntype):
        node.xattrs = list(known.xattrs)
    else:
        node.xattrs = _xattrs(path)
    return node


def _same(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_size, a.st_mtime_ns, a.st_ctime_ns) == (b.st_size, b.st_mtime_ns, b.st_ctime_ns)


def unchanged(old: Node | Entry, st: os.stat_result) -> bool:
    """Whether a regular file's ``lstat`` matches its node in the parent snapshot
    (restic's rule: same size, mtime, ctime and inode). Taken from the stat alone: an
    unchanged file costs no fresh node."""
    return (old.type == "file" and old.content is not None and stat.S_ISREG(st.st_mode)
            and old.size == st.st_size and old.mtime == st.st_mtime_ns
            and old.ctime == st.st_ctime_ns and old.inode == st.st_ino)


@dataclass
class ReadOutcome:
    """The result of reading one file: ``consistent`` is False if it never settled.

    ``st`` is the ``fstat`` of what was read (after the read). ``replaced`` says the
    path held another regular file than the scan found, which was read instead (the
    scanned node given to :func:`read_consistently` then describes that file)."""

    st: os.stat_result
    attempts: int
    consistent: bool
    cloned: bool = False  # read from a reflink clone
    replaced: bool = False


class EntryChanged(OSError):
    """The entry at a path is no longer the regular file the scan found there.

    ``node`` is what it is now, to record in its place (a symlink, a fifo, a device
    node), or None where nothing can be recorded in its place: it became a directory
    or a socket, it kept being replaced, or the path now leads somewhere else than
    where it was listed (a directory above it was replaced by a symlink). The message
    says which."""

    def __init__(self, path: bytes, why: str, node: Node | None = None) -> None:
        super().__init__(None, why, os.fsdecode(path))
        self.node = node


class Sources:
    """Where the source paths of one run really are, resolved once at its start.

    A symlink *above* a source path is the user's choice and is followed (``/home`` may
    be a link to ``/data/home``); one met *below* it while reading is not: the walk
    records symlinks, never follows them, so a file whose open path went through one was
    reached through a directory replaced after it was listed. :func:`open_scanned`
    compares where an opened file really is (``/proc/self/fd``) with :meth:`real`.

    >>> Sources([b"/"]).real(b"/etc/passwd"), Sources([b"/nonexistent/x"]).real(b"/y")
    (b'/etc/passwd', None)
    """

    def __init__(self, paths: Iterable[str | bytes]) -> None:
        roots = {}
        for p in paths:
            path = os.path.abspath(os.fsencode(p))
            parent, name = os.path.split(path)
            roots[path] = os.path.join(os.path.realpath(parent), name) if name else b"/"
        self._roots = sorted(roots.items(), key=lambda kv: len(kv[0]), reverse=True)

    def real(self, path: bytes) -> bytes | None:
        """Where ``path`` (below a source path) must really be; None if outside them."""
        for root, real in self._roots:
            if path == root:
                return real
            if path.startswith(root.rstrip(b"/") + b"/"):
                return real.rstrip(b"/") + path[len(root.rstrip(b"/")):]
        return None


# Never blocks (a fifo swapped in opens at once, a lease is not waited for), never
# follows a symlink in the last component, never makes a terminal ours.
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC
_LEASE_WAITS = (0.05, 0.1, 0.2, 0.4, 0.8, 1.6)  # a write lease: its holder gets time to let go


def _open(path: bytes, flags: int = _OPEN_FLAGS) -> int:
    """Open ``path`` with ``flags``, without touching its atime where allowed
    (``O_NOATIME`` needs ownership or CAP_FOWNER: EPERM otherwise)."""
    for wait in (*_LEASE_WAITS, None):
        try:
            try:
                return os.open(path, flags | os.O_NOATIME)
            except PermissionError as exc:
                if exc.errno != errno.EPERM:
                    raise
                return os.open(path, flags)
        except BlockingIOError:  # another process holds a write lease on it
            if wait is None:
                raise
            time.sleep(wait)
    raise AssertionError("unreachable")


def _is(path: bytes, dev: int, ino: int) -> bool:
    """Whether ``path`` still is the regular file (``dev``, ``ino``)."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) == (dev, ino)


def _where(fd: int) -> bytes | None:
    """Where the open file ``fd`` is (None without ``/proc``)."""
    try:
        return os.readlink(b"/proc/self/fd/%d" % fd)
    except OSError:
        return None


def open_scanned(path: bytes, dev: int, ino: int, sources: Sources | None = None
                 ) -> tuple[int, os.stat_result] | None:
    """Open the regular file the scan found at ``path`` (device ``dev``, inode ``ino``)
    for reading: its fd and ``fstat``, or None if ``path`` is something else now.

    The open never follows a symlink in the last component and never blocks (a fifo
    or device swapped in is opened without waiting, then refused by its type); the
    descriptor is accepted only if device, inode and type match the scan. With
    ``sources``, the file must also really be where ``path`` says (see
    :class:`Sources`); if it is not, :class:`EntryChanged` is raised. OSError where the
    scanned file itself cannot be opened (permission denied); None where it is gone.
    """
    try:
        fd = _open(path)
    except OSError:
        if _is(path, dev, ino):
            raise  # the scanned file itself refuses
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != (dev, ino):
            os.close(fd)
            return None
        expected = sources.real(path) if sources is not None else None
        where = _where(fd) if expected is not None else None
        if where is not None and where != expected:
            raise EntryChanged(path, "a directory above it was replaced by a symlink while "
                               "it was read; not saved")
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def list_names(path: bytes, scanned: Node | None = None, sources: Sources | None = None
               ) -> list[bytes]:
    """The entry names of the directory ``path``, sorted, listed without touching its
    atime where allowed (the listing must not itself change what the next snapshot
    records) and without following a symlink put in its place.

    With ``scanned`` (its node from the scan), it must still be that directory; with
    ``sources``, it must really be where ``path`` says (see :class:`Sources`).
    :class:`EntryChanged` otherwise; OSError where it cannot be listed."""
    try:
        fd = _open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK
                   | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise EntryChanged(path, "no longer a directory when it was listed; not "
                               "saved") from None
        raise
    try:
        st = os.fstat(fd)
        if scanned is not None and (st.st_dev, st.st_ino) != (scanned.device_id, scanned.inode):
            raise EntryChanged(path, "replaced by another directory before it was listed; "
                               "not saved")
        expected = sources.real(path) if sources is not None else None
        where = _where(fd) if expected is not None else None
        if where is not None and where != expected:
            raise EntryChanged(path, "a directory above it was replaced by a symlink while "
                               "it was listed; not saved")
        with os.scandir(fd) as it:
            return sorted(os.fsencode(e.name) for e in it)
    finally:
        os.close(fd)


def _refresh(node: Node, fresh: Node) -> None:
    for f in fields(Node):
        setattr(node, f.name, getattr(fresh, f.name))


class ConsistentRead:
    """A consistent read of the regular file ``path``, as a loop the caller drives:
    each item is ``(fd, stat)`` for one attempt, to be read whole before the next is
    asked for (an attempt after the first means the file changed underfoot: start
    over). After the loop, :attr:`outcome` tells how it went. See
    :func:`read_consistently` for ``dev``, ``scanned`` and ``sources``."""

    def __init__(self, path: bytes, dev: int | None = None, scanned: Node | None = None,
                 sources: Sources | None = None) -> None:
        self.path = path
        self.dev = dev
        self.scanned = scanned
        self.sources = sources
        self.outcome: ReadOutcome | None = None

    def __iter__(self) -> Iterator[tuple[int, os.stat_result]]:
        path, scanned = self.path, self.scanned
        ident = (scanned.device_id, scanned.inode) if scanned is not None \
            and scanned.type == "file" else None
        replaced = False
        looks = 0
        attempt = 0
        while True:
            if ident is None:
                looks += 1
                if looks > READ_ATTEMPTS:
                    raise EntryChanged(path, f"replaced {READ_ATTEMPTS} times while it was "
                                       "read; not saved")
                now = os.lstat(path)
                ident = (now.st_dev, now.st_ino)
                if scanned is not None and (scanned.device_id, scanned.inode, scanned.type) != (
                        now.st_dev, now.st_ino, node_type(now.st_mode)):
                    fresh = node_from_stat(scanned.name, path, now)
                    if not stat.S_ISREG(now.st_mode):
                        keep = not stat.S_ISDIR(now.st_mode) and not stat.S_ISSOCK(now.st_mode)
                        raise EntryChanged(path, f"replaced by a {fresh.type} while it was read",
                                           fresh if keep else None)
                    _refresh(scanned, fresh)
                    replaced = True
                elif not stat.S_ISREG(now.st_mode):
                    raise EntryChanged(path, f"not a regular file but a {node_type(now.st_mode)}")
            opened = open_scanned(path, *ident, self.sources)
            if opened is None:
                ident = None  # re-scan: what is there now?
                continue
            attempt += 1
            fd, before = opened
            try:
                if self.dev is None or reflinks_known(self.dev) is not False:
                    with clone_for_read(fd, os.path.dirname(path)) as clone:
                        if clone is not None:
                            yield clone, before
                            self.outcome = ReadOutcome(before, attempt, True, cloned=True,
                                                       replaced=replaced)
                            return
                yield fd, before
                after = os.fstat(fd)
            finally:
                os.close(fd)
            if _same(before, after) or attempt >= READ_ATTEMPTS:
                self.outcome = ReadOutcome(after, attempt, _same(before, after),
                                           replaced=replaced)
                return


def read_consistently(path: bytes, consume: Callable[[int, os.stat_result], None],
                      dev: int | None = None, *, scanned: Node | None = None,
                      sources: Sources | None = None) -> ReadOutcome:
    """Call ``consume(fd, stat)`` on a consistent view of the regular file ``path``.

    ``scanned`` is the node the scan made of it (without one, the file is looked at
    here first). The file is opened with :func:`open_scanned`, so what is read is the
    file the scan found; if the path holds another entry by then, it is looked at
    again (*re-scanned*) and taken as what it is now: another regular file is read
    instead (``scanned`` is updated to it in place and ``replaced`` set), anything else
    raises :class:`EntryChanged` carrying its node. A path replaced again and again
    raises :class:`EntryChanged` too; FileNotFoundError once it is gone.

    Where the filesystem can clone (reflinks), the view is a clone of the opened file:
    one read, consistent by construction, and the recorded metadata is never newer
    than the content. Otherwise the live file is read and the read is repeated while
    it changes underfoot (``consume`` must start over each time). ``dev`` skips the
    clone attempt on filesystems already known not to clone. Other OSErrors
    (unreadable) propagate."""
    reading = ConsistentRead(path, dev, scanned, sources)
    for fd, st in reading:
        consume(fd, st)
    assert reading.outcome is not None
    return reading.outcome
