"""When the worker's roles acknowledge records (so that faust may commit past them),
driven with stand-in faust events over a real local repository: a record is acknowledged
only once everything the stage did with it is durable."""

from __future__ import annotations

import asyncio
import hashlib
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from corestate.connectors.kafka_runner import Role
from corestate.connectors.url import open_backend
from corestate.pipeline.commit import CommitStage
from corestate.pipeline.index_share import IndexShare
from corestate.pipeline.pack import PackStage
from corestate.pipeline.stage import Emit
from corestate.repository.repository import Repository
from corestate.schemas.codec import encode
from corestate.schemas.events import (BarrierAck, Chunk, Event, FileManifest, NodeMeta,
                                      SnapshotMarker)
from tests.conftest import PASSWORD


@dataclass
class Message:
    value: bytes
    partition: int
    offset: int
    topic: str = "t.chunks"
    key: bytes | None = None


@dataclass
class FakeEvent:
    """What Role uses of a faust event: its message and ack()."""

    message: Message
    acked: list[int] = field(default_factory=list)

    def ack(self) -> bool:
        self.acked.append(self.message.offset)
        return True


def chunk_event(offset: int, partition: int = 0) -> FakeEvent:
    data = os.urandom(2000)
    return FakeEvent(Message(encode(Chunk(snapshot_id="s", source_partition=0, data=data,
                                          blob_id=hashlib.sha256(data).digest())),
                             partition, offset))


def end_event(offset: int, source: int, partitions: int = 2, partition: int = 0) -> FakeEvent:
    marker = SnapshotMarker(host="h", snapshot_id="s", kind="end", paths=("/srv",),
                            partition_count=partitions, source_partition=source,
                            time=datetime(2024, 5, 1, tzinfo=timezone.utc))
    return FakeEvent(Message(encode(marker), partition, offset))


class Probe:
    """A role's surroundings, recorded: what it sent and where it sought."""

    def __init__(self) -> None:
        self.sent: list[Event] = []
        self.seeks: list[tuple[str, int, int]] = []

    async def send(self, emit: Emit) -> None:
        self.sent.append(emit.event)

    async def seek(self, topic: str, partition: int, offset: int) -> None:
        self.seeks.append((topic, partition, offset))

    @staticmethod
    def fail(exc: BaseException) -> None:
        raise AssertionError(f"the role failed: {exc}")

    def role(self, name: str, stage: Any, topics: list[str] | None = None) -> Role:
        return Role(name, stage, self.send, self.fail, topics=topics or [], seek=self.seek)


def pack_role(tmp_path: Path, sent: list[Event]) -> Role:
    repo = Repository.init(open_backend(str(tmp_path / "repo")), PASSWORD)
    probe = Probe()
    probe.sent = sent
    return probe.role("pack", PackStage(repo, 1, IndexShare({}, set())))


def test_a_chunk_is_acknowledged_only_after_the_flush_that_made_it_durable(tmp_path: Path) -> None:
    sent: list[Event] = []
    role = pack_role(tmp_path, sent)
    events = [chunk_event(0), chunk_event(1), end_event(2, source=0), end_event(3, source=1)]

    async def run() -> None:
        # partitions arrive (faust sends a revoke first, even with nothing assigned)
        await role.partitions_revoked()
        for e in events[:3]:
            await role.handle(e)
        # nothing durable yet: no chunk and no marker of the incomplete barrier acknowledged
        assert [e.acked for e in events[:3]] == [[], [], []]
        await role.handle(events[3])  # the barrier completes: flush, then acknowledge all

    asyncio.run(run())
    assert [e.acked for e in events] == [[0], [1], [2], [3]]
    assert [type(e).__name__ for e in sent] == ["BarrierAck"]


def test_records_held_at_a_revoke_are_not_acknowledged(tmp_path: Path) -> None:
    role = pack_role(tmp_path, [])
    events = [chunk_event(0), end_event(1, source=0), chunk_event(2)]

    async def run() -> None:
        for e in events:
            await role.handle(e)
        await role.partitions_revoked()  # flushes: the chunks are durable, the marker is not

    asyncio.run(run())
    # the chunk before the barrier's first marker is acknowledged; from the marker on the
    # partition is held (its markers exist only in memory: the new owner must replay them)
    assert [e.acked for e in events] == [[0], [], []]


def test_the_committer_never_compares_offsets_of_its_two_topics(tmp_path: Path) -> None:
    """The committer reads ``files`` and ``stored``: partition 0 of each has offsets of
    its own. A packer's acknowledgement at a low ``stored`` offset must not acknowledge
    a snapshot still waiting for its other packer (its records are in memory only)."""
    repo = Repository.init(open_backend(str(tmp_path / "repo")), PASSWORD)

    role = Probe().role("commit", CommitStage(repo), topics=["t.files", "t.stored"])
    meta = NodeMeta(type="file", mode=0o644, mtime=1, atime=1, ctime=1, uid=0, gid=0)
    manifest = FakeEvent(Message(encode(FileManifest(snapshot_id="s", path=b"/srv/a", node=meta,
                                                     blobs=())), 0, 120, topic="t.files"))
    ack = FakeEvent(Message(encode(BarrierAck(snapshot_id="s", packer_partition=0, durable=True,
                                              partition_count=2)), 0, 3, topic="t.stored"))

    async def run() -> None:
        await role.handle(manifest)
        await role.handle(ack)

    asyncio.run(run())
    assert (manifest.acked, ack.acked) == ([], [])  # the snapshot is not committed yet


def test_a_dead_letter_is_acknowledged_only_after_the_records_before_it(tmp_path: Path) -> None:
    """faust commits the first run of consecutive acknowledged offsets (and lets it start
    one past its last commit): a dead letter acknowledged at once, behind a file still
    open, would let the offset pass the file's begin. It waits for the records before it."""
    from corestate.pipeline.chunk import ChunkStage
    from corestate.schemas.events import FileBegin, FileEnd

    role = Probe().role("chunk", ChunkStage(1))
    meta = NodeMeta(type="dir", mode=0o755, mtime=1, atime=1, ctime=1, uid=0, gid=0)
    ev = dict(host="h", snapshot_id="s", path=b"/srv/d")
    events = [FakeEvent(Message(encode(FileBegin(node=meta, **ev)), 0, 0, topic="t.captures")),
              FakeEvent(Message(b"not an event", 0, 1, topic="t.captures")),
              FakeEvent(Message(encode(FileEnd(size=0, segments=0, consistent=True, **ev)), 0, 2,
                                topic="t.captures"))]

    async def run() -> None:
        await role.handle(events[0])
        await role.handle(events[1])  # dead-lettered while the entry is open
        assert [e.acked for e in events[:2]] == [[], []]
        await role.handle(events[2])

    asyncio.run(run())
    assert [e.acked for e in events] == [[0], [1], [2]] and role.dead_letters == 1


def test_after_a_rebalance_a_record_beyond_the_replay_start_makes_the_role_seek_back(
        tmp_path: Path) -> None:
    """faust-streaming can deliver, after a rebalance, a record past the committed offset
    and drop the ones before it. The role handles nothing out of sequence: it seeks back
    to the first record it did not commit and waits for it."""
    from corestate.pipeline.chunk import ChunkStage
    from corestate.schemas.events import FileBegin, FileEnd, FileManifest as Manifest

    probe = Probe()
    sent, seeks = probe.sent, probe.seeks
    role = probe.role("chunk", ChunkStage(1))
    meta = NodeMeta(type="dir", mode=0o755, mtime=1, atime=1, ctime=1, uid=0, gid=0)
    ev = dict(host="h", snapshot_id="s", path=b"/srv/d")

    def event(offset: int, record: Event) -> FakeEvent:
        return FakeEvent(Message(encode(record), 0, offset, topic="t.captures"))

    async def run() -> None:
        await role.handle(event(0, FileBegin(node=meta, **ev)))  # the entry is open...
        await role.partitions_revoked()                           # ...when partitions move
        await role.handle(event(1, FileEnd(size=0, segments=0, consistent=True, **ev)))
        assert seeks == [("t.captures", 0, 0)] and sent == []     # not handled: reading again
        await role.handle(event(2, FileEnd(size=0, segments=0, consistent=True, **ev)))
        assert len(seeks) == 1                                     # one seek, not one per record
        await role.handle(event(0, FileBegin(node=meta, **ev)))   # the replay
        await role.handle(event(1, FileEnd(size=0, segments=0, consistent=True, **ev)))
        late = event(1, FileEnd(size=0, segments=0, consistent=True, **ev))
        await role.handle(late)  # a record handled already: skipped, and settled
        assert late.acked == [1]

    asyncio.run(run())
    assert [type(e) for e in sent] == [Manifest] and role.dead_letters == 0


def test_a_lane_starts_where_the_consumer_reads_it_from_not_at_its_first_record(
        tmp_path: Path) -> None:
    """After a rebalance faust can hand over a record past the committed offset first. A
    lane this role never read had no expectation to compare it with: the record was
    taken as the lane's start and the ones before it, when they came, were skipped as
    handled. An entry among them got no manifest, no gap was logged, and the committer
    refused the run ("171 of the 172 entries its agent sent arrived"). Told where the
    consumer reads each partition from, the role seeks back instead."""
    from corestate.pipeline.chunk import ChunkStage
    from corestate.schemas.events import FileBegin, FileEnd, FileManifest as Manifest

    probe = Probe()
    sent, seeks = probe.sent, probe.seeks
    role = probe.role("chunk", ChunkStage(1), topics=["t.captures"])
    meta = NodeMeta(type="dir", mode=0o755, mtime=1, atime=1, ctime=1, uid=0, gid=0)

    def event(offset: int, path: bytes, kind: type) -> FakeEvent:
        ev = dict(host="h", snapshot_id="s", path=path)
        record = (FileBegin(node=meta, **ev) if kind is FileBegin
                  else FileEnd(size=0, segments=0, consistent=True, **ev))
        return FakeEvent(Message(encode(record), 0, offset, topic="t.captures"))

    records = [event(3, b"/srv/d", FileBegin), event(4, b"/srv/d", FileEnd),
               event(5, b"/srv/e", FileBegin), event(6, b"/srv/e", FileEnd)]

    async def run() -> None:
        await role.partitions_revoked()  # faust revokes first, even with nothing assigned
        await role.reading_from({("t.captures", 0): 3, ("t.files", 0): 9})  # committed: 3
        await role.handle(event(5, b"/srv/e", FileBegin))  # of a batch fetched before
        assert seeks == [("t.captures", 0, 3)] and sent == []
        for e in records:  # read again from the committed offset
            await role.handle(e)
        # faust seeks again when its table recovery ends: what it replays is handled
        await role.reading_from({("t.captures", 0): 3})
        await role.handle(event(3, b"/srv/d", FileBegin))

    asyncio.run(run())
    assert sorted(e.path for e in sent if isinstance(e, Manifest)) == [b"/srv/d", b"/srv/e"]
    assert [e.acked for e in records] == [[3], [4], [5], [6]]


def test_after_a_rebalance_a_partition_never_committed_is_read_from_its_start() -> None:
    """faust seeks the assigned partitions to their committed offsets before records flow
    again after a rebalance, to read again what it fetched and dropped while its flow was
    paused; aiokafka seeks only offsets above 0, so a partition never committed was not
    sought and those records were never read. The worker seeks it to its earliest offset,
    and each role learns where its partitions are read from."""
    from corestate.connectors.kafka_runner import _read_from_committed
    from corestate.pipeline.chunk import ChunkStage

    @dataclass(frozen=True)
    class TP:
        topic: str
        partition: int

    seeks: list[tuple[TP, int]] = []

    class Consumer:
        async def seek_to_committed(self) -> dict[TP, int | None]:
            return {TP("t.captures", 0): 12, TP("t.captures", 1): None,
                    TP("t.worker-blobs-changelog", 0): None}

        async def earliest_offsets(self, *tps: TP) -> dict[TP, int]:
            return {tp: 0 for tp in tps}

        async def seek(self, tp: TP, offset: int) -> None:
            seeks.append((tp, offset))

    consumer = Consumer()
    role = Probe().role("chunk", ChunkStage(2), topics=["t.captures"])
    _read_from_committed(consumer, [role])
    asyncio.run(consumer.seek_to_committed())  # as faust's perform_seek calls it
    assert seeks == [(TP("t.captures", 1), 0)]
    assert role._next == {0: 12, 1: 0}


def test_a_record_whose_store_write_failed_is_handled_again_not_skipped(tmp_path: Path) -> None:
    """The store goes away while a packer completes a barrier (for longer than the
    backend's own retries): the role retries that record until the store is back. It
    must hand the stage the same record again, not take it as handled and skip it."""
    from tests.pipeline.test_store_outage import OutageBackend

    store = OutageBackend(open_backend(str(tmp_path / "repo")))
    repo = Repository.init(store, PASSWORD)
    probe = Probe()
    sent = probe.sent
    role = probe.role("pack", PackStage(repo, 1, IndexShare({}, set())))
    events = [chunk_event(0), end_event(1, source=0), end_event(2, source=1)]

    async def back_soon() -> None:
        await asyncio.sleep(0.3)
        store.down = False

    async def run() -> None:
        await role.partitions_revoked()
        await role.handle(events[0])
        await role.handle(events[1])
        store.down = True
        await asyncio.gather(role.handle(events[2]), back_soon())  # retried after 1 s

    asyncio.run(run())
    assert [type(e) for e in sent] == [BarrierAck]
    assert [e.acked for e in events] == [[0], [1], [2]]


def test_a_lane_whose_next_record_does_not_come_is_read_again() -> None:
    """Seen in CI: a worker that restored its packer table while the agent published was
    ready with every partition and got nothing for 4 minutes (records fetched while
    faust's flow was paused, dropped, no seek after them). Once the role has been quiet
    for STALL_SECONDS with a partition ending past its lane's next record, the worker
    reads that partition again from there, and says so once a period; a role that is
    handling a record, or whose partitions hold nothing new, is left alone."""
    from corestate.connectors.kafka_runner import STALL_SECONDS, _watch_stalls
    from corestate.pipeline.chunk import ChunkStage

    @dataclass(frozen=True)
    class TP:
        topic: str
        partition: int

    class Consumer:
        flow_active = True

        def __init__(self) -> None:
            self.ends = {TP("t.captures", 0): 7, TP("t.captures", 1): 4, TP("t.alerts", 0): 9}
            self.seeks: list[tuple[TP, int]] = []
            self.asked = 0

        def assignment(self) -> set[TP]:
            return set(self.ends)

        async def highwaters(self, *tps: TP) -> dict[TP, int]:
            self.asked += 1
            return {tp: self.ends[tp] for tp in tps}

        async def seek(self, tp: TP, offset: int) -> None:
            self.seeks.append((tp, offset))

    consumer = Consumer()
    role = Probe().role("chunk", ChunkStage(2), topics=["t.captures"])

    async def run() -> None:
        await role.reading_from({("t.captures", 0): 5, ("t.captures", 1): 4})
        start = role._quiet_since
        await _watch_stalls(consumer, [role], start + STALL_SECONDS / 2)  # not quiet long
        assert consumer.asked == 0 and consumer.seeks == []
        role._busy = 1  # a record in hand (a retry): its lanes wait for it
        await _watch_stalls(consumer, [role], start + STALL_SECONDS)
        assert consumer.seeks == []
        role._busy = 0
        await _watch_stalls(consumer, [role], start + STALL_SECONDS)
        # partition 0 ends at 7 with 5 and 6 never delivered; partition 1 holds nothing new
        assert consumer.seeks == [(TP("t.captures", 0), 5)]
        await _watch_stalls(consumer, [role], start + STALL_SECONDS + 1)  # once a period
        assert consumer.seeks == [(TP("t.captures", 0), 5)]
        consumer.flow_active = False  # a rebalance or a table recovery: nothing comes
        await _watch_stalls(consumer, [role], start + 3 * STALL_SECONDS)
        assert len(consumer.seeks) == 1
        consumer.flow_active = True
        await _watch_stalls(consumer, [role], start + 3 * STALL_SECONDS)
        assert consumer.seeks[1:] == [(TP("t.captures", 0), 5)]

    asyncio.run(run())


def test_records_that_come_keep_a_lane_from_stalling() -> None:
    """A lane whose records arrive is never read again, and the high watermark is not
    asked for while the role gets records."""
    from corestate.connectors.kafka_runner import STALL_SECONDS
    from corestate.pipeline.chunk import ChunkStage
    from corestate.schemas.events import FileBegin

    role = Probe().role("chunk", ChunkStage(1), topics=["t.captures"])
    meta = NodeMeta(type="dir", mode=0o755, mtime=1, atime=1, ctime=1, uid=0, gid=0)
    begin = FakeEvent(Message(encode(FileBegin(node=meta, host="h", snapshot_id="s",
                                               path=b"/srv/d")), 0, 0, topic="t.captures"))

    async def run() -> None:
        await role.reading_from({("t.captures", 0): 0})
        assert role.stalled({("t.captures", 0): 1}, role._quiet_since + STALL_SECONDS) \
            == [("t.captures", 0, 0)]
        await role.handle(begin)  # it came
        after = role._quiet_since
        assert role.stalled({("t.captures", 0): 1}, after + 2 * STALL_SECONDS) == []
        assert role.stalled({("t.captures", 0): 3}, after + STALL_SECONDS - 0.1) == []
        assert role.stalled({("t.captures", 0): 3}, after + STALL_SECONDS) == [("t.captures", 0, 1)]

    asyncio.run(run())
