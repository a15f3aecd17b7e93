"""The distributed stages in memory (no broker): the chunk, pack and commit stages chained
by hand, with a local repository, and the barrier rules they follow."""

from __future__ import annotations

import hashlib
import io
import itertools
import os
from datetime import datetime, timezone
from pathlib import Path

import pytest

from corestate.agents.agent import scan
from corestate.connectors.url import open_backend
from corestate.pipeline.chunk import ChunkStage, chunk_stream
from corestate.pipeline.commit import CommitStage
from corestate.pipeline.pack import PackStage
from corestate.pipeline.stage import Emit, RejectedEventError
from corestate.repository.backend import Kind
from corestate.repository.pack import BlobType
from corestate.repository.repository import Repository
from corestate.schemas.codec import decode, encode
from corestate.schemas.events import (BarrierAck, Chunk, DataSegment, Event, FileBegin, FileEnd,
                                      FileManifest, NodeMeta, SnapshotMarker)
from tests.conftest import PASSWORD

POS = itertools.count()  # record positions, as a runner gives them

T = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
META = NodeMeta(type="file", mode=0o644, mtime=1, atime=1, ctime=1, uid=0, gid=0, size=0)


def marker(kind: str, partitions: int, source: int | None = None, sid: str = "s1") -> SnapshotMarker:
    return SnapshotMarker(host="h", snapshot_id=sid, kind=kind, paths=("/srv",),  # type: ignore[arg-type]
                          partition_count=partitions, time=T, source_partition=source)


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return Repository.init(open_backend(str(tmp_path / "repo")), PASSWORD)


def test_chunker_reassembles_segments_and_a_reread_starts_over() -> None:
    stage = ChunkStage(chunk_partitions=4)
    data = os.urandom(2_500_000)
    ev = dict(host="h", snapshot_id="s1", path=b"/srv/f")
    out: list[Emit] = []
    begin = next(POS)
    out += stage.handle(0, begin, FileBegin(node=META, **ev))
    out += stage.handle(0, next(POS), DataSegment(seq=0, offset=0, data=b"stale" * 100, **ev))
    # the open file holds its partition from its begin: none of it may be committed yet
    assert stage.settled(0) == begin - 1 and stage.settled(1) is None
    for seq, off in enumerate(range(0, len(data), 1 << 20)):  # the re-read starts at seq 0
        out += stage.handle(0, next(POS), DataSegment(seq=seq, offset=off, data=data[off:off + (1 << 20)], **ev))
    end = next(POS)
    out += stage.handle(0, end, FileEnd(size=len(data), segments=3, consistent=True, **ev))
    assert stage.settled(0) == end
    chunks = [e.event for e in out if isinstance(e.event, Chunk)]
    assert b"".join(c.data for c in chunks) == data
    assert [c.data for c in chunks] == list(chunk_stream(io.BytesIO(data)))
    [manifest] = [e.event for e in out if isinstance(e.event, FileManifest)]
    assert manifest.blobs == tuple(c.blob_id for c in chunks) and manifest.node.size == len(data)
    # the end marker goes to every chunks partition and, keyed by snapshot, to files
    fwd = list(stage.handle(2, next(POS), marker("end", 3)))
    assert [(e.topic, e.partition) for e in fwd] == [("chunks", 0), ("chunks", 1), ("chunks", 2),
                                                     ("chunks", 3), ("files", None)]
    assert {e.event.source_partition for e in fwd} == {2} and fwd[-1].key == b"s1"  # type: ignore[union-attr]


def test_chunker_rejects_segments_out_of_order() -> None:
    stage = ChunkStage(chunk_partitions=1)
    ev = dict(host="h", snapshot_id="s1", path=b"/srv/f")
    list(stage.handle(0, next(POS), FileBegin(node=META, **ev)))
    with pytest.raises(RejectedEventError, match="expected 0"):
        list(stage.handle(0, next(POS), DataSegment(seq=1, offset=5, data=b"x", **ev)))
    with pytest.raises(RejectedEventError, match="announced"):
        list(stage.handle(0, next(POS), FileEnd(size=9, segments=2, consistent=True, **ev)))


def test_packer_acknowledges_only_with_markers_from_every_captures_partition(repo: Repository) -> None:
    stage = PackStage(repo, chunk_partitions=2)
    data = os.urandom(10_000)
    blob = hashlib.sha256(data).digest()
    chunk = Chunk(blob_id=blob, snapshot_id="s1", data=data, source_partition=0)
    assert list(stage.handle(1, next(POS), chunk)) == [] and list(stage.handle(1, next(POS), chunk)) == []
    assert not repo.has_blob(blob, BlobType.DATA)  # not durable yet
    assert list(stage.handle(1, next(POS), marker("end", 2, source=0))) == []
    [ack] = list(stage.handle(1, next(POS), marker("end", 2, source=1)))
    # the chunk counts once (its second copy is deduplicated) in the bytes the run added
    assert ack.topic == "stored" and ack.event == BarrierAck(snapshot_id="s1", packer_partition=1,
                                                             durable=True, partition_count=2,
                                                             bytes_added=10_000)
    assert repo.has_blob(blob, BlobType.DATA) and stage.blobs_stored == 1  # stored once
    with pytest.raises(RejectedEventError, match="does not match"):
        list(stage.handle(1, next(POS), Chunk(blob_id=blob, snapshot_id="s1", data=b"other", source_partition=0)))
    stage.close()


def test_a_packer_with_an_empty_share_stores_nothing_the_repository_holds(repo: Repository) -> None:
    """A tree backed up embedded, then distributed: the packer's share starts empty (a
    new consumer group), but the blobs already in the repository are not stored again."""
    from corestate.pipeline.index_share import IndexShare
    from corestate.pipeline.packer import Packer

    data = os.urandom(10_000)
    blob = hashlib.sha256(data).digest()
    packer = Packer(repo)
    packer.add_plain(blob, BlobType.DATA, data)
    packer.flush()
    packer.close()
    repo.flush_index()
    packs_before = len(list(repo.backend.list(Kind.DATA)))
    stage = PackStage(repo, chunk_partitions=1, share=IndexShare({}, set()))
    list(stage.handle(0, next(POS), Chunk(blob_id=blob, snapshot_id="s1", data=data, source_partition=0)))
    [ack] = list(stage.handle(0, next(POS), marker("end", 1, source=0)))
    assert ack.topic == "stored" and stage.blobs_stored == 0
    assert len(list(repo.backend.list(Kind.DATA))) == packs_before
    stage.close()


def test_a_packer_gives_up_a_barrier_whose_agent_died_between_its_markers(repo: Repository) -> None:
    import time

    stage = PackStage(repo, chunk_partitions=1, abandon_after=60)
    pos = next(POS)
    list(stage.handle(0, pos, marker("end", 2, source=0)))  # the marker of captures partition 1 never comes
    list(stage.flush())
    assert stage.settled(0) == pos - 1  # held: the marker lives in memory only
    list(stage.tick(time.monotonic() + 30))
    assert stage.settled(0) == pos - 1
    list(stage.tick(time.monotonic() + 61))
    assert stage.settled(0) == pos  # given up: the offsets move on
    stage.close()


def test_the_three_stages_chained_commit_a_snapshot_only_after_every_ack(tmp_path: Path,
                                                                         repo: Repository) -> None:
    src = tmp_path / "srv"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "a.bin").write_bytes(os.urandom(1_500_000))
    (src / "b.txt").write_text("hello\n")
    captures: list[Event] = [marker("begin", 1)]
    scan([str(src)], "h", "s1", captures.append)
    captures.append(replace_paths(marker("end", 1), str(src)))
    chunker, packer, committer = ChunkStage(2), PackStage(repo, 2), CommitStage(repo)
    to_chunks: list[Emit] = []
    to_files: list[Emit] = []
    for ev in captures:
        for e in chunker.handle(0, next(POS), decode(encode(ev))):  # through the wire format, too
            (to_chunks if e.topic == "chunks" else to_files).append(e)
    acks = []
    for e in to_chunks:
        part = e.partition if e.partition is not None else e.event.blob_id[0] % 2  # type: ignore[union-attr]
        acks += packer.handle(part, next(POS), e.event)
    assert len(acks) == 2
    done: list[Emit] = []
    for e in to_files:
        done += committer.handle(0, next(POS), e.event)
    done += committer.handle(0, next(POS), acks[0].event)
    assert done == [] and not committer.idle()  # one packer partition has not acknowledged
    done += committer.handle(0, next(POS), acks[1].event)
    [committed] = [e.event for e in done]
    assert committer.idle() and committed.files == 2  # type: ignore[union-attr]
    snap = repo.load_snapshot(committed.restic_id)  # type: ignore[union-attr]
    assert snap.hostname == "h" and snap.paths == [str(src)]
    node = None
    tree = snap.tree
    for name in os.fsencode(str(src)).strip(b"/").split(b"/"):  # absolute paths nest
        node = next(n for n in repo.load_tree(tree) if n.name == name)
        tree = node.subtree  # type: ignore[assignment]
    names = sorted(n.name for n in repo.load_tree(tree))
    assert names == [b"b.txt", b"sub"]


def replace_paths(m: SnapshotMarker, path: str) -> SnapshotMarker:
    from dataclasses import replace
    return replace(m, paths=(path,))


def test_a_snapshot_whose_blobs_are_missing_is_rejected_not_committed(repo: Repository) -> None:
    stage = CommitStage(repo)
    manifest = FileManifest(snapshot_id="s1", path=b"/srv/f", node=META, blobs=(b"\x07" * 32,))
    for ev in (manifest, marker("end", 1, source=0)):
        assert list(stage.handle(0, next(POS), ev)) == []
    with pytest.raises(RejectedEventError, match="not in the index"):
        list(stage.handle(0, next(POS), BarrierAck(snapshot_id="s1", packer_partition=0, durable=True,
                                        partition_count=1)))
    assert stage.idle() and repo.list_snapshots() == []


def test_a_snapshot_that_lacks_a_manifest_its_agent_sent_is_rejected_not_committed(
        repo: Repository) -> None:
    """The agent's end markers count the entries it sent: a run whose manifests fall
    short (one lost on the way) is dead-lettered, never committed without the file."""
    from dataclasses import replace

    stage = CommitStage(repo)
    ack = BarrierAck(snapshot_id="s1", packer_partition=0, durable=True, partition_count=1)
    end = replace(marker("end", 1, source=0), entries=2)
    list(stage.handle(0, next(POS), FileManifest(snapshot_id="s1", path=b"/srv/a", node=META, blobs=())))
    list(stage.handle(0, next(POS), end))
    with pytest.raises(RejectedEventError, match="1 of the 2 entries"):
        list(stage.handle(0, next(POS), ack))
    assert stage.idle() and repo.list_snapshots() == []
    # with every manifest in, the same run commits
    for path in (b"/srv/a", b"/srv/b"):
        list(stage.handle(0, next(POS), FileManifest(snapshot_id="s1", path=path, node=META, blobs=())))
    list(stage.handle(0, next(POS), end))
    [done] = list(stage.handle(0, next(POS), ack))
    assert done.topic == "snapshots" and len(repo.list_snapshots()) == 1


def test_an_abandoned_snapshot_expires_and_the_committer_is_idle_again(repo: Repository) -> None:
    import time

    stage = CommitStage(repo, abandon_after=60)
    manifest = FileManifest(snapshot_id="dead-run", path=b"/srv/f", node=META, blobs=())
    pos = next(POS)
    list(stage.handle(0, pos, manifest))  # its agent died: no end marker will come
    list(stage.tick(time.monotonic() + 30))
    assert not stage.idle() and stage.settled(0) == pos - 1
    list(stage.tick(time.monotonic() + 61))
    assert stage.idle() and stage.settled(0) == pos


def test_the_agent_scan_sends_ancestors_entries_and_segments_in_order(tmp_path: Path) -> None:
    import socket as so

    src = tmp_path / "srv"
    (src / "d").mkdir(parents=True)
    (src / "d" / "big").write_bytes(os.urandom((1 << 20) + 10))
    s = so.socket(so.AF_UNIX)
    s.bind(str(src / "sock"))  # restic records no sockets
    s.close()
    events: list[Event] = []
    summary = scan([str(src / "d"), str(src)], "h", "s1", events.append)
    begins = [e.path for e in events if isinstance(e, FileBegin)]
    anc = [os.fsencode("/" + "/".join(str(src).strip("/").split("/")[:i]))
           for i in range(1, len(str(src).strip("/").split("/")))]
    assert begins == anc + [os.fsencode(str(p)) for p in (src, src / "d", src / "d" / "big")]
    segs = [e for e in events if isinstance(e, DataSegment)]
    assert [(g.seq, g.offset, len(g.data)) for g in segs] == [(0, 0, 1 << 20), (1, 1 << 20, 10)]
    [end] = [e for e in events if isinstance(e, FileEnd) and e.path.endswith(b"/big")]
    assert (end.size, end.segments, end.consistent) == ((1 << 20) + 10, 2, True)
    assert summary.files == 1 and summary.errors == []


# -- incremental runs (CommitStage onto a parent) --------------------------------------

def commit_run(repo: Repository, captures: list[Event], partitions: int = 2) -> list[Emit]:
    """Chain one run's capture events through the three stages; what the committer emits."""
    chunker, packer, committer = ChunkStage(partitions), PackStage(repo, partitions), CommitStage(repo)
    to_files: list[Emit] = []
    acks: list[Emit] = []
    for ev in captures:
        for e in chunker.handle(0, next(POS), decode(encode(ev))):
            if e.topic == "files":
                to_files.append(e)
            else:
                part = e.partition if e.partition is not None else e.event.blob_id[0] % partitions  # type: ignore[union-attr]
                acks += packer.handle(part, next(POS), e.event)
    packer.close()
    out: list[Emit] = []
    for e in [*to_files, *acks]:
        out += committer.handle(0, next(POS), e.event)
    return out


def run_events(src: Path, sid: str, increment: object = None) -> list[Event]:
    from dataclasses import replace

    from corestate.agents.agent import Increment, scan_changes

    m = replace(marker("end", 1, sid=sid), paths=(str(src),))
    if isinstance(increment, Increment):
        m = replace(m, parent=increment.parent, rescanned=tuple(sorted(increment.rescanned)),
                    removed=tuple(sorted(increment.removed)))
    events: list[Event] = [replace(m, kind="begin")]
    if isinstance(increment, Increment):
        scan_changes([str(src)], "h", sid, events.append, increment)
    else:
        scan([str(src)], "h", sid, events.append)
    events.append(m)
    return events


def snapshot_nodes(repo: Repository, restic_id: str) -> dict[bytes, tuple[object, ...]]:
    """Every node of a snapshot but its atime (reading a file changes it)."""
    from corestate.repository.walk import walk

    snap = repo.load_snapshot(restic_id)
    return {path: (n.type, n.mode, n.size, n.mtime, n.uid, n.linktarget,
                   tuple(n.content or ()) if n.type == "file" else None)
            for path, n in walk(repo, snap.tree)}


@pytest.mark.parametrize("watcher_kind", ["inotify", "fanotify"])
def test_an_incremental_run_is_assembled_onto_its_parent(tmp_path: Path, repo: Repository,
                                                         watcher_kind: str) -> None:
    from corestate.agents.agent import plan
    from corestate.agents.watch_loop import Changes
    from corestate.errors import PermanentError
    from corestate.kernel.watch import Watcher
    from corestate.kernel.watch.fanotify import FanotifyWatcher
    from corestate.kernel.watch.inotify import InotifyWatcher

    src = tmp_path / "srv"
    for d in ("keep/sub", "edit", "old/inner", "quiet", "dswap/x"):
        (src / d).mkdir(parents=True)
    (src / "big.bin").write_bytes(os.urandom(3 << 20))
    (src / "keep" / "sub" / "k.txt").write_text("kept\n")
    (src / "edit" / "f.txt").write_text("version 1\n")
    (src / "gone.txt").write_text("to be deleted\n")
    (src / "old" / "a.txt").write_text("moved along\n")
    (src / "old" / "inner" / "b.txt").write_text("deep\n")
    (src / "quiet" / "q.txt").write_text("untouched\n")
    (src / "swap").write_text("a file, then a directory\n")
    (src / "dswap" / "x" / "y.txt").write_text("a directory, then a file\n")
    os.link(src / "keep" / "sub" / "k.txt", src / "keep" / "hard")
    roots = [os.fsencode(str(src))]
    if watcher_kind == "fanotify":
        try:
            watching: Watcher = FanotifyWatcher(roots)
        except PermanentError as exc:
            pytest.fail(f"fanotify must work here (root, Linux >= 5.9): {exc}")
    else:
        watching = InotifyWatcher(roots)
    with watching as watcher:
        [first] = [e.event for e in commit_run(repo, run_events(src, "s1"))]
        assert first.files == 10  # type: ignore[union-attr]
        (src / "edit" / "f.txt").write_text("version 2, longer\n")
        os.chmod(src / "edit", 0o700)
        (src / "swap").unlink()
        (src / "swap").mkdir()
        (src / "swap" / "in.txt").write_text("inside\n")
        for sub in ("dswap/x/y.txt", "dswap/x", "dswap"):
            (src / sub).unlink() if sub.endswith(".txt") else (src / sub).rmdir()
        (src / "dswap").write_bytes(b"now a file\n")
        with open(os.fsencode(str(src)) + b"/caf\xe9.txt", "wb") as f:
            f.write(b"latin-1 name\n")
        (src / "gone.txt").unlink()
        (src / "old").rename(src / "new")
        (src / "new" / "inner" / "c.txt").write_text("added in the moved dir\n")
        (src / "fresh" / "deeper").mkdir(parents=True)
        (src / "fresh" / "deeper" / "x.txt").write_text("new subtree\n")
        changes = Changes()
        while (batch := watcher.poll(0.5)) is not None:
            changes.add(batch)
    increment = plan(changes, [str(src)], first.restic_id)  # type: ignore[union-attr]
    assert increment is not None
    root = os.fsencode(str(src))
    assert increment.removed == {root + b"/gone.txt", root + b"/old"}
    assert {root + b"/new", root + b"/new/inner", root + b"/fresh", root + b"/fresh/deeper",
            root + b"/swap"} == increment.rescanned  # new and moved-in subtrees, whole
    assert root + b"/edit/f.txt" in increment.entries and root + b"/quiet" not in increment.entries
    captures = run_events(src, "s2", increment)
    sent = {e.path for e in captures if isinstance(e, FileBegin)}
    # the big file beside the deleted one is not read again, nor anything untouched
    assert root + b"/big.bin" not in sent and root + b"/quiet/q.txt" not in sent
    assert root + b"/keep/sub/k.txt" not in sent and root + b"/new/a.txt" in sent
    [second] = [e.event for e in commit_run(repo, captures)]
    snap = repo.load_snapshot(second.restic_id)  # type: ignore[union-attr]
    assert snap.parent == first.restic_id  # type: ignore[union-attr]
    # exactly what a full run of the same tree gives
    [full] = [e.event for e in commit_run(repo, run_events(src, "s3"))]
    assert second.files == full.files == 12  # type: ignore[union-attr]
    got = snapshot_nodes(repo, second.restic_id)  # type: ignore[union-attr]
    assert got == snapshot_nodes(repo, full.restic_id)  # type: ignore[union-attr]
    assert root + b"/new/inner/b.txt" in got and root + b"/old" not in got
    assert root + b"/gone.txt" not in got and root + b"/fresh/deeper/x.txt" in got


def test_an_incremental_run_whose_parent_is_gone_is_rejected(tmp_path: Path, repo: Repository) -> None:
    from dataclasses import replace

    stage = CommitStage(repo)
    end = replace(marker("end", 1, source=0), parent="ab" * 32, rescanned=(b"/srv",))
    assert list(stage.handle(0, next(POS), FileManifest(snapshot_id="s1", path=b"/srv/f", node=META,
                                             blobs=()))) == []
    assert list(stage.handle(0, next(POS), end)) == []
    with pytest.raises(RejectedEventError, match="its parent abababab"):
        list(stage.handle(0, next(POS), BarrierAck(snapshot_id="s1", packer_partition=0, durable=True,
                                        partition_count=1)))
    assert stage.idle() and repo.list_snapshots() == []


def test_assembly_onto_a_parent_merges_removes_and_lets_a_captured_file_win() -> None:
    from corestate.pipeline.assemble import Parent, assemble, count_files
    from corestate.repository.tree import decode_tree

    d = NodeMeta(type="dir", mode=0o755 | (1 << 31), mtime=2, atime=2, ctime=2, uid=0, gid=0)
    stored: dict[bytes, bytes] = {}

    def store(tree_id: bytes, blob: bytes, nodes: list) -> None:  # type: ignore[type-arg]
        stored[tree_id] = blob

    def load(tree_id: bytes) -> list:  # type: ignore[type-arg]
        return decode_tree(stored[tree_id])

    blob = (b"\x01" * 32,)
    parent = assemble({b"/s": d, b"/s/x": d, b"/s/x/a": META, b"/s/y": d, b"/s/y/b": META,
                       b"/s/z": META}, {b"/s/x/a": blob, b"/s/y/b": blob, b"/s/z": blob}, store)
    walked: dict[bytes, int] = {}
    inc = assemble({b"/s": d, b"/s/x": META}, {b"/s/x": blob}, store,  # x: a dir, now a file
                   Parent(parent.root, load,
                          lambda t: count_files(t, load, walked),
                          removed={b"/s/x/a", b"/s/z"}))
    want = assemble({b"/s": d, b"/s/x": META, b"/s/y": d, b"/s/y/b": META},
                    {b"/s/x": blob, b"/s/y/b": blob}, store)
    assert inc.root == want.root and inc.files == want.files == 2
    assert walked  # y was taken whole: its files counted from its stored tree, not rebuilt
