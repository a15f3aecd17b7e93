"""Restoring a snapshot into a directory, the way ``restic restore --target`` does.

Terms:

- *snapshot path*: a node's absolute path inside the snapshot (bytes, see
  :mod:`corestate.repository.walk`). restic nests the full backed-up path, so a file
  backed up as ``/home/u/a.txt`` is restored to ``<target>/home/u/a.txt``.
- *destination*: ``target`` joined with the snapshot path, always built as bytes so
  names that are not UTF-8 come back unchanged.
- *content*: a file's data blobs in order; the file is their concatenation.
- *zero block*: a file-aligned block of zero bytes (:data:`~corestate.restore.writer.HOLE_BLOCK`);
  it is not written (``pwrite`` past it leaves a hole) and the file is truncated to its
  final size at the end, so holes come back as holes wherever they start and end.
- *include pattern*: a restic filter pattern, see :mod:`corestate.restore.include`.
- *hardlink*: a file node with ``links > 1``; the first one restored is written, later
  nodes with the same ``(device_id, inode)`` become ``os.link`` to it.
- *existing entry*: something already at a destination (the target need not be empty).
  The *overwrite policy* (:class:`Overwrite`, restic 0.17's ``--overwrite``) decides
  whether it is replaced; directories are always kept and restored into.
- *extra entry*: something in a restored directory of the target that the snapshot does
  not hold there. It is kept, or removed with ``delete`` (restic's ``--delete``); with
  include patterns only extra entries the patterns select are touched.

The steps (restic's restorer works the same way):

1. Walk the snapshot in tree order; create directories (mode 0700 for now), symlinks,
   fifos and devices; *plan* each regular file's content: every blob at its offset
   (:mod:`corestate.restore.writer`). A file in a directory this restore created is
   offered to the writer as a *whole file*; other files are created (empty) here.
2. Create the offered files whose blobs are not all in one pack; write the plan: each
   pack holding needed blobs is read once, by worker processes on every core, and each
   blob written at every offset that needs it; a worker creates, writes and finishes
   each whole file of its pack in one ``open``.
3. Truncate each other file to its size (a trailing hole) and set its metadata (owner,
   mode incl. setuid/setgid/sticky, xattrs, atime/mtime in ns,
   :mod:`corestate.restore.metadata`); create the hardlinks.
4. Set directories' metadata, deepest first, so writing children cannot move their
   times. Sockets are skipped, as restic does.

Extra entries of a directory are counted (or removed) once the walk has left it, and
those of the target itself at the end; never in a directory whose contents could not
be read from the snapshot, and with ``delete`` never after a refused unsafe name.

Damage is reported, not fatal: a file whose blob cannot be loaded from any copy, or
that cannot be written, is deleted and listed in :attr:`RestoreResult.errors`, and the
restore goes on.
"""

from __future__ import annotations

import enum
import errno
import hashlib
import os
import shutil
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from corestate.errors import IntegrityError, NotFoundError, PermanentError
from corestate.repository.repository import Repository
from corestate.restore import metadata, writer
from corestate.restore.include import IncludeFilter
from corestate.restore.metadata import Meta
from corestate.restore.writer import Whole, data_runs
from corestate.repository.snapshot import Snapshot
from corestate.repository.tree import Node, posix_mode
from corestate.repository.walk import walk

Progress = Callable[[int, int], None]
PROGRESS_INTERVAL = 0.25  # seconds between progress calls
_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_FINISH_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC


class Overwrite(enum.Enum):
    """What to do with an existing entry where the snapshot has a file (restic 0.17).

    - ``always``: replace it, unless it is a regular file whose content already equals
      the snapshot's (read and hashed blob by blob): then only its metadata is set.
    - ``if-changed``: the same, but a regular file whose size and modification time
      equal the snapshot's is taken as equal without reading it.
    - ``if-newer``: replace it only if the snapshot's modification time is newer.
    - ``never``: keep it as it is.
    """

    ALWAYS = "always"
    IF_CHANGED = "if-changed"
    IF_NEWER = "if-newer"
    NEVER = "never"


@dataclass
class RestoreResult:
    """What a restore did. ``files`` counts every restored non-directory (regular files,
    hardlinks, symlinks, fifos, devices), ``unchanged`` files included; ``bytes_written``
    is the content size of the regular files written, holes of sparse files included;
    ``errors`` lists ``(destination path, message)`` for everything that could not be
    restored. About the target's existing entries: ``replaced`` were removed to restore
    the snapshot's entry, ``unchanged`` files already held the snapshot's content (only
    their metadata was set), ``skipped`` were kept by the overwrite policy, ``deleted``
    extra entries were removed (a directory counts once) and ``extra`` were kept.
    ``selected`` counts the nodes the include patterns selected (all, without them).
    ``pack_reads`` is the bytes read per pack (worker processes read them, so a
    recording backend in this process does not see it)."""

    files: int = 0
    dirs: int = 0
    bytes_written: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)
    pack_reads: dict[str, int] = field(default_factory=dict)
    replaced: int = 0
    unchanged: int = 0
    skipped: int = 0
    deleted: int = 0
    extra: int = 0
    selected: int = 0

    @property
    def touched_existing(self) -> bool:
        """Whether the target held anything this restore replaced, kept or removed."""
        return bool(self.replaced or self.unchanged or self.skipped or self.deleted or self.extra)


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
    lost: bool = False  # its contents could not be read from the snapshot
    names: set[bytes] = field(default_factory=set)  # its children in the snapshot


class _File(NamedTuple):
    """A regular file being restored: what finishing it needs, and no more (a tree
    node keeps the JSON it was read from: holding 100,000 of them cost ~200 MiB)."""

    dest: bytes
    size: int
    content: list[bytes]
    meta: Meta
    fresh: bool


class _Restorer:
    def __init__(self, repo: Repository, target: bytes, include: IncludeFilter | None,
                 progress: Progress | None, workers: int | None, overwrite: Overwrite,
                 delete: bool) -> None:
        self.repo = repo
        self.target = target
        self.include = include
        self.overwrite = overwrite
        self.delete = delete
        self._sweep_ok = True  # False once an unsafe name is seen: extras are not trusted
        self._target_existed = os.path.lexists(target)
        self._target_made = False
        self._root_names: set[bytes] = set()
        self.progress = progress
        self.workers = workers
        self.result = RestoreResult()
        self.is_root = os.geteuid() == 0
        self._creds = (os.geteuid(), os.getegid())
        self._umask = os.umask(0o022)  # read it (there is no getter) ...
        os.umask(self._umask)  # ... and put it back
        self._lock = threading.Lock()
        self._last_progress = 0.0
        self._plan = writer.Plan()
        self._files: list[_File] = []  # planned, by plan index
        self._unplanned: set[bytes] = set()  # planned files with a blob not in the index
        self._first_link: dict[tuple[int, int], bytes] = {}  # (device, inode) -> dest
        self._links: list[tuple[bytes, bytes, Node]] = []  # (dest, dest of the first link, node)
        self._failed: set[bytes] = set()  # dests whose content could not be restored
        self._uncreated: set[int] = set()  # planned files that could not be created
        self._stack: list[_Dir] = []
        self._dirs: list[_Dir] = []  # created, in creation order (parents first)

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
        for path, node in walk(self.repo, tree_id, b"/", self._descend, self._tree_error):
            while self._stack and not path.startswith(self._stack[-1].path + b"/"):
                self._leave(self._stack.pop())
            if self._stack and not self._stack[-1].enter:
                continue  # below a directory that failed
            (self._stack[-1].names if self._stack else self._root_names).add(node.name)
            dest = self.target + path
            selected = (self.include is None or (bool(self._stack) and self._stack[-1].selected)
                        or self.include.matches(path))
            if not _safe_name(node.name):
                self.error(dest, f"refusing unsafe name {node.name!r} in the snapshot")
                self._sweep_ok = False
                if node.type == "dir":
                    self._stack.append(_Dir(path, dest, node, False, enter=False))
                continue
            if selected and node.type != "socket":
                self.result.selected += 1
            if node.type == "dir":
                entry = _Dir(path, dest, node, selected, lost=node.subtree is None)
                entry.enter = selected or self.include is None or self.include.may_match_below(path)
                self._stack.append(entry)
                if selected:
                    entry.enter = self._make_parents()
                continue
            if not selected or node.type == "socket" or not self._make_parents():
                continue
            if node.type == "file":
                if not self._is_later_link(dest, node):
                    self._plan_file(dest, node, bool(self._stack) and self._stack[-1].fresh)
            else:
                self._restore_special(dest, node)
        while self._stack:
            self._leave(self._stack.pop())
        if self._target_existed and (self.include is None or self.result.selected):
            self._sweep(self.target, b"", self._root_names)
        self._create_unplanned_wholes()
        written = writer.write(self.repo, self._plan, self.workers,
                               lambda files, n: self.advance(files, n))
        self.result.pack_reads = written.reads
        for index, file in enumerate(self._files):
            dest = file.dest
            if index in self._uncreated:
                continue  # could not be created (reported)
            if index in written.lost:
                self._failed.add(dest)
                self.error(dest, written.lost[index])
            elif index in written.meta_errors:
                self.error(dest, written.meta_errors[index])  # finished, and counted
            elif not self._plan.whole(index) or index in written.failed:
                self._finish_file(file, written.failed.get(index))
        for dest, first, node in self._links:
            self._restore_link(dest, first, node)
        for entry in reversed(self._dirs):
            self._set_metadata(entry.dest, entry.node)
        self.advance(force=True)
        return self.result

    def _descend(self, path: bytes, node: Node) -> bool:
        return bool(self._stack) and self._stack[-1].path == path and self._stack[-1].enter

    def _tree_error(self, path: bytes, exc: IntegrityError | NotFoundError) -> None:
        """A damaged entry or a subtree that cannot be loaded (``exc`` says which)."""
        if self._stack and self._stack[-1].path == path:
            self._stack[-1].lost = True  # its contents are unknown: nothing to sweep
        if self.include is None or self.include.matches(path) or self.include.may_match_below(path):
            self.error(self.target + path, exc.message)

    def _leave(self, entry: _Dir) -> None:
        """The walk is past ``entry``: deal with its extra entries."""
        if entry.created and entry.enter and not entry.fresh and not entry.lost:
            self._sweep(entry.dest, entry.path, entry.names)
        entry.names = set()  # the entry stays (for its metadata), its names need not

    def _sweep(self, dest_dir: bytes, snap_dir: bytes, names: set[bytes]) -> None:
        """Count, or with ``delete`` remove, the entries of ``dest_dir`` that are not
        among ``names`` (the directory's children in the snapshot) and that the include
        patterns select."""
        try:
            on_disk = os.listdir(dest_dir)
        except OSError as exc:
            self.error(dest_dir, _message("listing", exc))
            return
        for name in on_disk:
            if name in names or (self.include is not None
                                 and not self.include.matches(snap_dir + b"/" + name)):
                continue
            if not (self.delete and self._sweep_ok):
                with self._lock:
                    self.result.extra += 1
                continue
            dest = dest_dir + b"/" + name
            try:
                self._remove(dest)
            except OSError as exc:
                self.error(dest, _message("deleting (not in the snapshot)", exc))
                continue
            with self._lock:
                self.result.deleted += 1

    @staticmethod
    def _remove(dest: bytes) -> None:
        """Remove ``dest``, a whole directory tree included (never following symlinks)."""
        if stat.S_ISDIR(os.lstat(dest).st_mode):
            shutil.rmtree(dest)
        else:
            os.unlink(dest)

    def _make_parents(self) -> bool:
        """Create the directories on the walk's current path that do not exist yet;
        False if one cannot be created."""
        if not self._target_made:
            try:
                os.makedirs(self.target, 0o700, exist_ok=True)  # restic's mode for a new target
            except OSError as exc:
                raise PermanentError(f"cannot create the target directory "
                                     f"{os.fsdecode(self.target)}: {exc.strerror or exc}") from None
            self._target_made = True
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
    def _clear(self, dest: bytes, keep_dir: bool = False) -> None:
        """Make room at ``dest``: an existing non-directory is removed; an existing
        directory stays (``keep_dir``), is removed with ``delete``, or is an error."""
        try:
            st = os.lstat(dest)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            if keep_dir:
                return
            if not self.delete:
                raise IsADirectoryError(errno.EISDIR, "a directory is in the way "
                                        "(--delete replaces it)", dest)
            shutil.rmtree(dest)
        else:
            os.unlink(dest)
        with self._lock:
            self.result.replaced += 1

    def _keep_existing(self, dest: bytes, node: Node) -> bool:
        """Whether the overwrite policy keeps what is at ``dest`` (counted as skipped)."""
        if self.overwrite in (Overwrite.ALWAYS, Overwrite.IF_CHANGED):
            return False
        try:
            st = os.lstat(dest)
        except FileNotFoundError:
            return False
        if self.overwrite is Overwrite.IF_NEWER and node.mtime > st.st_mtime_ns:
            return False
        with self._lock:
            self.result.skipped += 1
        return True

    def _already_restored(self, dest: bytes, node: Node) -> bool:
        """With ``always`` or ``if-changed``: if ``dest`` is a regular file that already
        holds the node's content, set its metadata and count it as unchanged."""
        if self.overwrite not in (Overwrite.ALWAYS, Overwrite.IF_CHANGED):
            return False
        try:
            fd = os.open(dest, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return False  # missing, a symlink, unreadable: restored as usual
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size != node.size:
                return False
            trusted = self.overwrite is Overwrite.IF_CHANGED and st.st_mtime_ns == node.mtime
            if not trusted and not self._same_content(fd, node):
                return False
            self._set_metadata(dest, node, fd)
        finally:
            os.close(fd)
        with self._lock:
            self.result.unchanged += 1
        self.advance(files=1)
        return True

    def _same_content(self, fd: int, node: Node) -> bool:
        """Whether the open file holds exactly the node's blobs (each read and hashed)."""
        pos = 0
        for blob_id in node.content or []:
            location = self.repo.index.lookup(blob_id)
            if location is None:
                return False
            length = location.blob.plaintext_length
            try:
                data = os.pread(fd, length, pos)
            except OSError:
                return False
            if len(data) != length or hashlib.sha256(data).digest() != blob_id:
                return False
            pos += length
        return pos == node.size

    def _is_later_link(self, dest: bytes, node: Node) -> bool:
        """Record a hardlinked file; True if an earlier node already has its inode."""
        if node.links < 2 or not node.inode:
            return False
        key = (node.device_id, node.inode)
        first = self._first_link.get(key)
        if first is None:
            self._first_link[key] = dest
            return False
        self._links.append((dest, first, node))
        return True

    def _restore_special(self, dest: bytes, node: Node) -> None:
        """Create a symlink, fifo or device node and set its metadata."""
        if self._keep_existing(dest, node):
            return
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

    def _restore_link(self, dest: bytes, first: bytes, node: Node) -> None:
        if first in self._failed:
            self.error(dest, f"not restored: it is a hardlink of {os.fsdecode(first)}, "
                             "which could not be restored")
            return
        existing, linked = _lstat(dest), _lstat(first)
        if existing is not None and linked is not None and os.path.samestat(existing, linked):
            self.advance(files=1)  # already this link
            return
        if existing is not None and self._keep_existing(dest, node):
            return
        try:
            self._clear(dest)
            os.link(first, dest)
        except OSError as exc:
            self.error(dest, _message("creating hardlink", exc))
            return
        self.advance(files=1)

    def _plan_file(self, dest: bytes, node: Node, fresh: bool) -> None:
        """Plan a regular file's content.

        In a directory this restore created (``fresh``) nothing can be in the way: the
        file is offered to the writer as a whole file (a worker creates it exclusively
        with its final permission bits, writes and finishes it) and only created here if
        its blobs are in several packs (:meth:`_create_unplanned_wholes`). Elsewhere
        the overwrite policy decides, and the file is created (empty) here."""
        meta = Meta.of(node)
        if fresh:
            index = self._plan.add_file(dest, Whole(
                node.size, meta, owner_ok=(node.uid, node.gid) == self._creds,
                mode_ok=meta.mode == meta.mode & 0o777 & ~self._umask))
        else:
            if self._keep_existing(dest, node) or self._already_restored(dest, node):
                return
            try:
                self._clear(dest)
                os.close(os.open(dest, _OPEN_FLAGS, 0o600))
            except OSError as exc:
                self._failed.add(dest)
                self.error(dest, _message("creating file", exc))
                return
            index = self._plan.add_file(dest)
        self._files.append(_File(dest, node.size, node.content or [], meta, fresh))
        offset = 0
        for blob_id in node.content or []:
            where = self.repo.index.lookup(blob_id)
            if where is None:
                self._unplanned.add(dest)  # the fallback names what is missing
                self._plan.keep(index)
                break
            self._plan.place(where.pack, where.blob, index, offset)
            offset += where.blob.plaintext_length

    def _create_unplanned_wholes(self) -> None:
        """Create the fresh files no worker finishes (empty, in several packs, or with
        a blob missing from the index), before the writer opens them."""
        for index, file in enumerate(self._files):
            if not file.fresh or self._plan.whole(index):
                continue
            try:
                os.close(os.open(file.dest, _NEW_FLAGS, file.meta.mode & 0o777))
            except OSError as exc:
                self._uncreated.add(index)
                self._failed.add(file.dest)
                self.error(file.dest, _message("creating file", exc))

    def _finish_file(self, file: _File, failed: str | None) -> None:
        """After the plan ran: a file it could not write is written again blob by blob
        (another copy of a damaged blob may restore it) or removed; then the file is
        truncated to its size and its metadata set."""
        dest, meta = file.dest, file.meta
        mode = meta.mode
        message = ""
        try:  # a whole file the writer failed may not exist: created with its mode
            fd = os.open(dest, _FINISH_FLAGS, mode & 0o777)
        except OSError as exc:
            self._failed.add(dest)
            self.error(dest, _message("opening the restored file", exc))
            return
        try:
            try:
                if failed is not None or dest in self._unplanned:
                    self._write_content(fd, file.content)
                os.ftruncate(fd, file.size)
            except (IntegrityError, NotFoundError) as exc:
                message = exc.message
            except OSError as exc:
                message = _message("writing", exc)
            if not message:
                owner_ok = file.fresh and (meta.uid, meta.gid) == self._creds
                mode_ok = file.fresh and mode == mode & 0o777 & ~self._umask
                self._set_metadata(dest, meta, fd, owner_ok, mode_ok)
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

    def _write_content(self, fd: int, content: list[bytes]) -> None:
        """Write the file's blobs at their offsets, one at a time, each from any copy
        (the fallback for a file the plan could not write)."""
        pos = 0
        for blob_id in content:
            data = self.repo.load_blob(blob_id)
            view = memoryview(data)
            for start, end in data_runs(data, pos):
                while start < end:
                    start += os.pwrite(fd, view[start:end], pos + start)
            del view
            pos += len(data)

    # -- metadata ---------------------------------------------------------------------------
    def _set_metadata(self, dest: bytes, node: Node | Meta, fd: int | None = None,
                      owner_ok: bool = False, mode_ok: bool = False) -> None:
        """Set the node's metadata (:func:`~corestate.restore.metadata.apply`); a failure
        is reported, the node kept."""
        meta = node if isinstance(node, Meta) else Meta.of(node)
        try:
            metadata.apply(dest, meta, fd, owner_ok, mode_ok, self.is_root)
        except OSError as exc:
            self.error(dest, _message("setting metadata", exc))


def _lstat(path: bytes) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except OSError:
        return None


def restore(repo: Repository, snapshot: Snapshot, target: str,
            include: list[str] | None = None, progress: Progress | None = None,
            workers: int | None = None, overwrite: Overwrite = Overwrite.ALWAYS,
            delete: bool = False) -> RestoreResult:
    """Restore ``snapshot`` below the directory ``target`` (created when something is
    selected and it is missing).

    ``include`` restricts the restore to matching snapshot paths (see
    :class:`IncludeFilter`); ``progress(files_done, bytes_done)`` is called now and
    then, and once at the end; ``workers`` worker processes write the content (default:
    one per core; 0: this process).
    Existing entries are dealt with by ``overwrite``; extra entries are kept, or
    removed with ``delete``. Raises only if the snapshot's root tree cannot be read or
    the target cannot be created; everything else that fails is in the result's
    ``errors``.
    """
    repo.load_index()
    restorer = _Restorer(repo, os.fsencode(os.path.abspath(target)),
                         IncludeFilter(include) if include else None, progress, workers,
                         overwrite, delete)
    return restorer.run(snapshot.tree)


__all__ = ["Overwrite", "RestoreResult", "restore"]
