"""The host agent of distributed mode: scan paths and publish capture events.

Terms:

- a *run* is one scan of the source paths; its *snapshot id* (``<host>-<ns>-<random>``)
  names every event of it, and the worker that commits it writes one restic snapshot;
- the *capture stream* of a run, in order: a ``begin`` :class:`SnapshotMarker` on every
  captures partition; per entry (every ancestor directory of a source path, then each
  source path and everything below it, depth-first in name order) a :class:`FileBegin`
  with the entry's metadata, for a regular file its content as :class:`DataSegment` s of
  at most 1 MiB (``seq`` from 0; a file re-read because it changed underfoot starts again
  at ``seq`` 0), and a :class:`FileEnd`; an entry that cannot be read after its
  FileBegin is withdrawn with a :class:`Delete`; finally an ``end`` marker on every
  partition. Markers carry the paths and tags of the snapshot;
- a *full* run captures everything below the paths; an *incremental* run (its markers
  name a ``parent``: the restic id of the committed snapshot it builds on) captures
  only what changed since the parent: each entry an event named that still exists (a
  directory's metadata only, unless it was created or moved in: then its whole subtree,
  whose directories the markers list as *rescanned*), and the directories on the way
  to it; the markers list the *removed* entries, those named that are gone (deleted or
  renamed away). The committer takes everything else from the parent
  (:mod:`corestate.pipeline.assemble`), so an unchanged file is never read again, not
  even beside a changed one. The agent sends no :class:`Delete` or :class:`Rename` for
  changes;
- the *changes* since a run began (:class:`~corestate.agents.watch_loop.Changes`, kept
  by the watch loop shared with protect) are the watcher's batches accumulated: dirty
  directories, named entries, and the paths created or moved in. :func:`plan` turns
  them into an :class:`Increment`. A directory that lost
  more than ``MAX_REMOVED_PER_DIR`` entries is rescanned instead. When the changes
  cannot be expressed (a source path itself deleted or replaced, a watched directory
  moved, an overflow of the watcher's queue, lists too long for a marker), the run is
  full. Directories the watcher could not watch are rescanned whole every
  ``unwatched_rescan`` seconds.

:func:`scan` and :func:`scan_changes` produce the stream through a callback;
:func:`publish_run` brackets it with markers and sends it to a :class:`CaptureSink`,
returning only when every record is acknowledged; :func:`publish_changed` is one run of
an agent that does not watch (``--once``): the changes since its last run come from
comparing two walks (:mod:`corestate.agents.last_run`); :func:`watch` publishes a full run,
then a run after every batch of changes: incremental on the previous run once the
:class:`CommitSource` shows it committed (it waits up to ``parent_wait`` seconds for
that), else full. With an :class:`~corestate.agents.sentinel.AgentSentinel` it also
feeds the batches and the commits to the anomaly detector, whose alerts go to the sink.
This module imports no Kafka client: the sink and the source of distributed mode are
:mod:`corestate.connectors.kafka_agent`'s.
"""

from __future__ import annotations

import logging
import os
import socket
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Protocol

from corestate.agents import last_run
from corestate.agents.watch_loop import MAX_NAMED, Cadence, Changes, WatchLoop
from corestate.errors import PermanentError, RetryableError
from corestate.pipeline.assemble import meta_from_node
from corestate.pipeline.capture import (EntryChanged, ExcludeMatcher, Sources, list_names,
                                        node_from_stat, read_consistently)
from corestate.schemas.events import (MAX_SEGMENT, DataSegment, Delete, Event, FileBegin,
                                      FileEnd, SnapshotCommitted, SnapshotMarker)

if TYPE_CHECKING:
    from corestate.agents.sentinel import AgentSentinel

log = logging.getLogger("corestate.agents.agent")

RESCAN_BYTES = 256 * 1024  # most path bytes a marker lists; more makes the run full
MAX_REMOVED_PER_DIR = 256  # more removed entries: the directory is listed whole instead


@dataclass
class ScanSummary:
    snapshot_id: str = ""
    entries: int = 0
    files: int = 0
    bytes: int = 0
    records: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)
    inconsistent: list[str] = field(default_factory=list)
    parent: str | None = None  # restic id an incremental run builds on; None: full
    rescanned: int = 0  # directories an incremental run listed


@dataclass(frozen=True)
class Increment:
    """What makes a run incremental (see the module docstring): the restic id of its
    parent, the directories it lists whole, the entries it captures one by one (a
    directory's metadata only) and the paths it reports gone."""

    parent: str
    rescanned: frozenset[bytes] = frozenset()
    entries: frozenset[bytes] = frozenset()
    removed: frozenset[bytes] = frozenset()


def new_snapshot_id(host: str) -> str:
    return f"{host}-{time.time_ns()}-{uuid.uuid4().hex[:8]}"


def _ancestors(path: bytes) -> list[bytes]:
    parts = [p for p in path.split(b"/") if p]
    return [b"/" + b"/".join(parts[:i]) for i in range(1, len(parts))]


def _within(path: bytes, root: bytes) -> bool:
    return path == root or path.startswith(root.rstrip(b"/") + b"/")


def _is_dir(path: bytes) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _is_file(path: bytes) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _roots(paths: Iterable[str]) -> list[bytes]:
    return sorted({os.fsencode(os.path.abspath(p)) for p in paths})


class _Scanner:
    """Sends the capture events of single entries, listings and whole subtrees, each
    entry at most once."""

    def __init__(self, host: str, snapshot_id: str, send: Callable[[Event], None],
                 excludes: list[str] | None, summary: ScanSummary) -> None:
        self.host, self.snapshot_id, self.send, self.summary = host, snapshot_id, send, summary
        self.matcher = ExcludeMatcher(excludes or [])
        self.sources: Sources | None = None  # set by _start_run
        self.done: set[bytes] = set()

    def entry(self, path: bytes) -> os.stat_result | None:
        """FileBegin, content and FileEnd of one entry (not what is below it)."""
        host, snapshot_id, send, summary = self.host, self.snapshot_id, self.send, self.summary
        self.done.add(path)
        try:
            st = os.lstat(path)
            node = node_from_stat(os.path.basename(path), path, st)
        except FileNotFoundError:
            return None
        except OSError as exc:
            summary.errors.append((os.fsdecode(path), exc.strerror or str(exc)))
            return None
        if stat.S_ISSOCK(st.st_mode):
            return None  # restic records no sockets
        send(FileBegin(host=host, snapshot_id=snapshot_id, path=path, node=meta_from_node(node)))
        summary.entries += 1
        if not stat.S_ISREG(st.st_mode):
            send(FileEnd(host=host, snapshot_id=snapshot_id, path=path, size=0, segments=0,
                         consistent=True))
            return st
        sent = [0, 0]  # segments, bytes of the current read
        begun = node.inode

        def consume(fd: int, _st: os.stat_result) -> None:
            nonlocal begun
            if node.inode != begun:  # another file was put there: announce that one
                begun = node.inode
                send(FileBegin(host=host, snapshot_id=snapshot_id, path=path,
                               node=meta_from_node(node)))
            sent[0] = sent[1] = 0
            while True:
                data = os.read(fd, MAX_SEGMENT)
                if not data:
                    return
                send(DataSegment(host=host, snapshot_id=snapshot_id, path=path, seq=sent[0],
                                 offset=sent[1], data=data))
                sent[0] += 1
                sent[1] += len(data)

        try:
            outcome = read_consistently(path, consume, scanned=node, sources=self.sources)
        except OSError as exc:
            if isinstance(exc, EntryChanged) and exc.node is not None:  # as what it is now
                send(FileBegin(host=host, snapshot_id=snapshot_id, path=path,
                               node=meta_from_node(exc.node)))
                send(FileEnd(host=host, snapshot_id=snapshot_id, path=path, size=0, segments=0,
                             consistent=True))
                return None
            summary.errors.append((os.fsdecode(path), exc.strerror or str(exc)))
            send(Delete(host=host, snapshot_id=snapshot_id, path=path))  # withdraw the entry
            return None
        if not outcome.consistent:
            summary.inconsistent.append(os.fsdecode(path))
        send(FileEnd(host=host, snapshot_id=snapshot_id, path=path, size=sent[1],
                     segments=sent[0], consistent=outcome.consistent))
        summary.files += 1
        summary.bytes += sent[1]
        return st

    def once(self, path: bytes) -> None:
        if path not in self.done:
            self.entry(path)

    def _names(self, path: bytes) -> list[bytes] | None:
        try:
            return list_names(path, sources=self.sources)
        except OSError as exc:
            self.summary.errors.append((os.fsdecode(path), exc.strerror or str(exc)))
            return None

    def listing(self, path: bytes) -> None:
        """The entries of one directory (a directory's own entries are not listed)."""
        for name in self._names(path) or ():
            full = path.rstrip(b"/") + b"/" + name
            if full not in self.done and not self.matcher.excluded(full):
                self.entry(full)

    def tree(self, root: bytes) -> None:
        """``root`` and everything below it, depth-first in name order."""
        stack = [root]
        while stack:
            path = stack.pop()
            if path in self.done or (path != root and self.matcher.excluded(path)):
                continue
            st = self.entry(path)
            if st is not None and stat.S_ISDIR(st.st_mode):
                names = self._names(path)
                if names is not None:
                    stack.extend(path.rstrip(b"/") + b"/" + n for n in reversed(names))


def _check_roots(roots: list[bytes]) -> None:
    for root in roots:
        if not os.path.lexists(root):
            raise PermanentError(f"{os.fsdecode(root)}: no such file or directory")


def _start_run(paths: list[str], host: str, snapshot_id: str, send: Callable[[Event], None],
               excludes: list[str] | None, summary: ScanSummary | None
               ) -> tuple[_Scanner, list[bytes]]:
    """A scanner for one run and its source paths, checked, after sending the
    directories above each source path."""
    scanner = _Scanner(host, snapshot_id, send, excludes,
                       summary if summary is not None else ScanSummary(snapshot_id=snapshot_id))
    roots = _roots(paths)
    _check_roots(roots)
    scanner.sources = Sources(roots)
    for root in roots:
        for anc in _ancestors(root):
            scanner.once(anc)
    return scanner, roots


def scan(paths: list[str], host: str, snapshot_id: str, send: Callable[[Event], None],
         excludes: list[str] | None = None, summary: ScanSummary | None = None) -> ScanSummary:
    """Send the capture events of every entry of ``paths`` (without markers): a full run."""
    scanner, roots = _start_run(paths, host, snapshot_id, send, excludes, summary)
    for root in roots:
        scanner.tree(root)
    return scanner.summary


def scan_changes(paths: list[str], host: str, snapshot_id: str, send: Callable[[Event], None],
                 increment: Increment, excludes: list[str] | None = None,
                 summary: ScanSummary | None = None) -> ScanSummary:
    """Send the capture events of an incremental run (without markers): every source
    path that is no regular file (a directory's metadata), the changed entries and the
    entries of the rescanned directories, each with the directories on the way to it."""
    scanner, roots = _start_run(paths, host, snapshot_id, send, excludes, summary)
    summary = scanner.summary
    for root in roots:
        if root in increment.entries or not _is_file(root):
            scanner.once(root)  # a directory's metadata, a changed file, a symlink...
    for path in sorted(increment.entries | increment.rescanned):
        for anc in _ancestors(path):
            if any(_within(anc, r) for r in roots):
                scanner.once(anc)
        scanner.once(path)
    for directory in sorted(increment.rescanned):
        scanner.listing(directory)
    summary.parent = increment.parent
    summary.rescanned = len(increment.rescanned)
    return summary


def plan(changes: Changes, paths: list[str], parent: str,
         excluded: Callable[[bytes], bool] = lambda p: False) -> Increment | None:
    """The incremental run onto ``parent`` that captures ``changes``; None when only a
    full run is right."""
    if changes.full:
        return None
    roots = _roots(paths)
    if not all(os.path.lexists(r) for r in roots):
        return None

    def root_of(path: bytes) -> bytes | None:
        """The source path ``path`` is in, if it is not excluded on the way."""
        inside = [r for r in roots if _within(path, r)]
        if not inside:
            return None  # e.g. a sibling of a source path that is a file
        root = max(inside, key=len)
        up = path
        while up != root:
            if excluded(up):
                return None
            up = os.path.dirname(up)
        return root

    rescanned: set[bytes] = set()
    entries: set[bytes] = set()
    removed: set[bytes] = set()
    for path in changes.named | changes.subtrees | changes.dirty:
        root = root_of(path)
        if root is None:
            continue
        try:
            st = os.lstat(path)
        except OSError:
            st = None
        if path == root:
            if st is None or path in changes.subtrees:
                return None  # a source path gone or replaced: a full run says what it is
            if not stat.S_ISDIR(st.st_mode):
                entries.add(path)  # a source path that is a file and changed
            continue
        if st is None:
            if _is_dir(os.path.dirname(path)):
                removed.add(path)  # else an ancestor is gone (or replaced) too
        elif stat.S_ISDIR(st.st_mode) and path in changes.subtrees:
            rescanned.update(_subdirs(path, excluded))
        else:
            entries.add(path)
    # A directory that lost many entries is listed whole instead.
    lost: dict[bytes, list[bytes]] = {}
    for path in removed:
        lost.setdefault(os.path.dirname(path), []).append(path)
    for directory, paths_gone in lost.items():
        if directory in rescanned or len(paths_gone) > MAX_REMOVED_PER_DIR:
            rescanned.add(directory)
            removed.difference_update(paths_gone)
    if sum(len(p) + 2 for p in rescanned | removed) > RESCAN_BYTES:
        return None
    return Increment(parent, frozenset(rescanned), frozenset(entries), frozenset(removed))


def _subdirs(top: bytes, excluded: Callable[[bytes], bool]) -> list[bytes]:
    """``top`` and every directory below it, not excluded ones."""
    found: list[bytes] = []
    stack = [top]
    while stack:
        path = stack.pop()
        if path != top and excluded(path):
            continue
        found.append(path)
        try:
            with os.scandir(path) as it:
                stack.extend(e.path for e in it if e.is_dir(follow_symlinks=False))
        except OSError:
            continue
    return found


class CaptureSink(Protocol):
    """Where an agent's runs and alerts go (distributed mode: a Kafka producer,
    :class:`corestate.connectors.kafka_agent.CapturePublisher`)."""

    partitions: int  # of the captures topic: a marker goes to every one

    def send(self, event: Event, partition: int | None = None) -> None:
        """Queue a capture event (by its key's partition unless one is given)."""
        ...

    def publish_alert(self, event: Event, on_delivery: Callable[[Any, Any], None]) -> None:
        """Queue an alert; ``on_delivery(err, msg)`` tells how it went."""
        ...

    def settle(self, timeout: float = 300.0) -> None:
        """Return once everything queued is acknowledged; raise if any was not."""
        ...

    def poll(self) -> None:
        """Serve delivery reports without waiting."""
        ...


class CommitSource(Protocol):
    """The snapshots the workers committed (distributed mode: ``<prefix>.snapshots``,
    :class:`corestate.connectors.kafka_agent.CommitFeed`)."""

    def poll(self, timeout: float = 0.0) -> list[SnapshotCommitted]:
        ...

    def close(self) -> None:
        ...


def publish_run(sink: CaptureSink, paths: list[str], host: str,
                excludes: list[str] | None = None, tags: list[str] | None = None,
                timeout: float = 300.0, increment: Increment | None = None) -> ScanSummary:
    """Scan ``paths`` (fully, or incrementally given an ``increment``) and publish the
    run, bracketed by markers on every partition; returns when every record is
    acknowledged, else raises."""
    summary = ScanSummary(snapshot_id=new_snapshot_id(host))

    ends = 0  # FileEnd events: the manifests the committer must receive

    def send(event: Event, partition: int | None = None) -> None:
        nonlocal ends
        sink.send(event, partition)
        summary.records += 1
        ends += isinstance(event, FileEnd)

    started = datetime.now(timezone.utc)
    abspaths = [os.path.abspath(p) for p in paths]

    def markers(kind: str) -> None:
        for p in range(sink.partitions):
            send(SnapshotMarker(host=host, snapshot_id=summary.snapshot_id, kind=kind,  # type: ignore[arg-type]
                                paths=tuple(abspaths), partition_count=sink.partitions,
                                time=started, tags=tuple(tags or ()),
                                parent=increment.parent if increment else None,
                                rescanned=tuple(sorted(increment.rescanned)) if increment else (),
                                removed=tuple(sorted(increment.removed)) if increment else (),
                                excludes=tuple(excludes or ()),
                                entries=ends if kind == "end" else None),
                 partition=p)

    markers("begin")
    if increment is None:
        scan(paths, host, summary.snapshot_id, send, excludes, summary)
    else:
        scan_changes(paths, host, summary.snapshot_id, send, increment, excludes, summary)
    markers("end")
    sink.settle(timeout)
    return summary


def publish_once(sink: CaptureSink, paths: list[str], host: str | None = None,
                 excludes: list[str] | None = None, tags: list[str] | None = None,
                 timeout: float = 300.0) -> ScanSummary:
    """Scan ``paths`` once and publish the run (see :func:`publish_run`)."""
    return publish_run(sink, paths, host or socket.gethostname(), excludes, tags, timeout)


def publish_changed(sink: CaptureSink, feed: CommitSource, paths: list[str], host: str,
                    state_dir: str, excludes: list[str] | None = None,
                    tags: list[str] | None = None, timeout: float = 300.0,
                    full: bool = False) -> ScanSummary:
    """One run of an agent that is not watching (``--once``): only what changed since
    its last run (:mod:`corestate.agents.last_run`, kept in ``state_dir``), onto the
    snapshot the workers committed for that run; a full run when there is no last run,
    when it was not committed (it is sent again), when too much changed, or when
    ``full``."""
    matcher = ExcludeMatcher(excludes or [])
    key = last_run.run_key(paths, excludes or [])
    last = None if full else last_run.load(state_dir, key)
    now = last_run.walk(paths, matcher.excluded)
    increment = None
    if last is not None:
        parent = _committed_as(feed, last.snapshot_id)
        if parent is None:
            log.warning("the last run (%s) has no committed snapshot: sending everything",
                        last.snapshot_id)
        else:
            named = last_run.changes_since(last.entries, now)
            if len(named) <= MAX_NAMED:
                increment = plan(Changes(named=named), paths, parent, matcher.excluded)
    summary = publish_run(sink, paths, host, excludes, tags, timeout, increment)
    last_run.save(state_dir, last_run.LastRun(key, summary.snapshot_id, now))
    return summary


def _committed_as(feed: CommitSource, snapshot_id: str, timeout: float = 2.0) -> str | None:
    """The restic id of the snapshot committed for run ``snapshot_id``, read off the
    whole commit history; None if there is none."""
    found = None
    while True:
        events = feed.poll(timeout)
        for event in events:
            if event.snapshot_id == snapshot_id:
                found = event.restic_id
        if not events:
            return found


class _RunTaker:
    """The watch loop's point taker for the agent: a point is a published run,
    incremental on the previous one once the feed shows it committed."""

    def __init__(self, paths: list[str], publisher: CaptureSink, feed: CommitSource,
                 host: str, excludes: list[str] | None, tags: list[str] | None,
                 excluded: Callable[[bytes], bool], on_run: Callable[[ScanSummary], None],
                 sentinel: AgentSentinel | None, parent_wait: float) -> None:
        self.paths, self.publisher, self.feed, self.host = paths, publisher, feed, host
        self.excludes, self.tags, self.excluded = excludes, tags, excluded
        self.on_run, self.sentinel, self.parent_wait = on_run, sentinel, parent_wait
        self.last: ScanSummary | None = None  # the last run published
        self.last_done = 0.0  # monotonic time it was acknowledged
        self.last_restic: str | None = None  # its restic id, once committed
        self.unsent: list[Event] = []  # alerts to publish again

    def ready(self, changes: Changes) -> bool:
        waiting = (self.last is not None and not changes.full and self.last_restic is None
                   and time.monotonic() - self.last_done < self.parent_wait)
        return not waiting

    def take(self, changes: Changes) -> None:
        increment = None
        if self.last_restic is not None:
            increment = plan(changes, self.paths, self.last_restic, self.excluded)
        summary = publish_run(self.publisher, self.paths, self.host, self.excludes, self.tags,
                              increment=increment)
        self.last, self.last_done, self.last_restic = summary, time.monotonic(), None
        if self.sentinel is not None:
            self.sentinel.on_run(summary.snapshot_id)
        self.on_run(summary)

    def failed(self, exc: Exception) -> None:
        pass  # the loop logs it and makes the next run full

    def tick(self) -> None:
        for event in self.feed.poll():
            if self.last is not None and event.snapshot_id == self.last.snapshot_id:
                self.last_restic = event.restic_id
            if self.sentinel is not None:
                self.sentinel.on_committed(event)
        if self.sentinel is not None:
            self.sentinel.tick()
            self.unsent.extend(self.sentinel.drain())
        self.send_alerts()
        self.publisher.poll()

    def send_alerts(self) -> None:
        for alert in self.unsent[:]:
            self.unsent.remove(alert)
            self.publisher.publish_alert(alert, self._delivered(alert))

    def _delivered(self, event: Event) -> Callable[[Any, Any], None]:
        def report(err: Any, _msg: Any) -> None:
            if err is not None:
                log.error("alert not delivered (%s); trying again", err)
                self.unsent.append(event)
        return report


def watch(paths: list[str], publisher: CaptureSink, feed: CommitSource, host: str,
          stop: threading.Event, excludes: list[str] | None = None,
          tags: list[str] | None = None,
          on_run: Callable[[ScanSummary], None] = lambda s: None,
          sentinel: AgentSentinel | None = None, parent_wait: float = 60.0,
          unwatched_rescan: float = 60.0, retry_after: float = 5.0) -> None:
    """Publish a full run, then one whenever something under ``paths`` changes, until
    ``stop`` is set (see the module docstring), on the watch loop shared with protect
    (:mod:`corestate.agents.watch_loop`).

    A run waits until the previous one is committed (at most ``parent_wait`` seconds
    after it was published) so that it can build on it; a run that fails to publish
    (brokers away) is tried again ``retry_after`` seconds later, as a full run.
    ``sentinel`` (optional) gets every batch, every run and every commit; its alerts
    go to ``publisher``. ``feed`` tells which runs were committed."""
    matcher = ExcludeMatcher(excludes or [])
    taker = _RunTaker(paths, publisher, feed, host, excludes, tags, matcher.excluded, on_run,
                      sentinel, parent_wait)
    loop = WatchLoop(paths, matcher.excluded, taker,
                     Cadence(interval=0.0, unwatched_rescan=unwatched_rescan,
                             retry_after=retry_after, coalesce=0.5),
                     on_batch=sentinel.on_batch if sentinel is not None else None)
    try:
        loop.run(stop)
    finally:
        feed.close()
        if sentinel is not None:
            sentinel.close()  # announces alerts still waiting for a commit
            taker.unsent.extend(sentinel.drain())
        taker.send_alerts()
        try:
            publisher.settle(30.0)
        except RetryableError as exc:
            log.error("alerts not delivered at exit: %s", exc)
