"""The distributed runner: the stages of :mod:`corestate.pipeline` (driven through
:class:`~corestate.pipeline.stage.Stage`) as agents of one faust-streaming app.

Terms:

- the *app* is a :class:`faust.App` with id ``<prefix>.worker``: that id is the Kafka
  consumer group of every worker process, whatever roles it runs (faust's assignor gives
  a topic's partitions only to the members that subscribe to it, and gives partition *p*
  of co-subscribed topics with equal partition counts to one member);
- a *role* is one faust agent wrapping one stage: ``chunk`` reads ``captures``, ``pack``
  reads ``chunks``, ``commit`` reads ``files`` and ``stored`` together (both keyed by
  snapshot id, so partition *p* of both reaches one committer), ``guard`` reads
  ``alerts`` and protects the clean snapshot an alert names;
- the *share* of a packer is the faust table ``blobs`` (blob id → pack id), restored from
  its changelog topic ``<prefix>.worker-blobs-changelog`` when a worker (re)gets chunks
  partitions; it is the packer's exact dedup index (:mod:`corestate.pipeline.index_share`),
  beside the roaring prefilter built from it;
- *acknowledging* a record tells faust it may commit the partition's offset past it.
  Agents iterate with acks off and acknowledge a record only once its stage says it is
  *settled* (:meth:`~corestate.pipeline.stage.Stage.settled`: everything the stage did
  with it is durable and it need not be replayed): the chunk stage holds a partition
  from a file's begin to its end, the pack stage until a flush (at a barrier, or every
  ``PACK_FLUSH_SECONDS``) and from an incomplete barrier's first end marker, the commit
  stage from a snapshot's first record until it is committed. Faust commits
  acknowledged offsets every ``COMMIT_SECONDS`` after flushing its producer (every event
  emitted for them is acknowledged by the broker): at least once. A crash replays from
  the last committed offsets; replay is harmless because storage writes are
  content-addressed and the committer does not write a snapshot twice;
- a record that does not decode, or that its stage rejects, goes to ``<prefix>.dlq`` as a
  :class:`DeadLetter` with the reason, and is acknowledged; processing goes on;
- the *codec* (:class:`~corestate.schemas.codec.Codec`) decodes every record (either
  wire format) and encodes what the roles emit: Avro single-object encoding, or
  schema-registry framing when it has a registry (``--schema-registry``). A
  registry-framed record whose schema id the registry does not have is dead-lettered
  like any undecodable record; a registry that does not answer is retried.

On a rebalance (faust's is eager: every partition is revoked, then the new set assigned
and read from its committed offsets) each role makes what it can durable, acknowledges
what is safe, commits, and resets its stage. On SIGTERM or Ctrl-C the same happens
before the worker leaves the group.

Every role but ``chunk`` holds a non-exclusive repository lock while the worker
runs, so ``prune`` (exclusive) waits for them.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import ExitStack
from datetime import datetime, timezone
from typing import Any

from corestate.connectors.kafka_outage import OutageFilter, OutageReport
from corestate.connectors.kafka_topics import key_for, spec
from corestate.errors import (CoreStateError, PermanentError, RepositoryLockedError,
                              RetryableError)
from corestate.pipeline.chunk import ChunkStage
from corestate.pipeline.commit import CommitStage
from corestate.pipeline.guard import AlertGuard
from corestate.pipeline.index_share import IndexShare
from corestate.pipeline.pack import PackStage
from corestate.pipeline.stage import Emit, RejectedEventError, Stage
from corestate.repository.repository import Repository
from corestate.schemas.codec import Codec
from corestate.schemas.errors import UndecodableEventError
from corestate.schemas.events import DeadLetter, SnapshotCommitted
from corestate.telemetry import metrics

log = logging.getLogger(__name__)
commits = logging.getLogger("corestate.commits")  # one line per snapshot, at any log level

ROLES = ("chunk", "pack", "commit", "guard")
INPUTS = {"chunk": ("captures",), "pack": ("chunks",), "commit": ("files", "stored"),
          "guard": ("alerts",)}
COMMIT_SECONDS = 1.0
PACK_FLUSH_SECONDS = 30.0
# How often the consumer refreshes the cluster's metadata even when nothing seems to have
# changed (faust's default: 5 min). A worker that joins while its topics are not listed
# (right after a broker restart, or topics deleted and created again) is assigned
# nothing; only a refresh that finds the topics makes it rejoin and take partitions.
METADATA_SECONDS = 15.0
SESSION_TIMEOUT = 10.0  # a killed worker's partitions move after this long
# A role that has got no record for this long while one of its partitions holds records
# past the one its lane must get next reads that partition again from there
# (:meth:`Role.stalled`, :func:`_watch_stalls`).
STALL_SECONDS = 10.0
RETRY_MAX_SECONDS = 30.0


class Role:
    """One role's stage and its records not yet acknowledged.

    ``handle`` and the periodic/rebalance hooks run on the app's event loop and take
    ``lock`` so that a stage is never used by two of them at once. What may be
    acknowledged is the stage's to say (:meth:`~corestate.pipeline.stage.Stage.settled`):
    the role acknowledges, per partition, every record at or before that position.
    ``codec`` decodes the records (default: no registry, so registry-framed records are
    dead-lettered).

    ``topics``: the input topics (full names). The stage sees one *lane* per topic and
    partition (:meth:`lane`): a role that reads two topics (the committer) must not
    compare an offset of one with an offset of the other.

    Each lane has the offset of the record it must get next: set where the consumer
    reads the partition from after an assignment (:meth:`reading_from`: its committed
    offset), then one past each record handled. A lane whose next record is on the
    broker but does not come is *stalled* (:meth:`stalled`)."""

    def __init__(self, name: str, stage: Stage, send: Callable[[Emit], Any],
                 fail: Callable[[BaseException], None], codec: Codec | None = None,
                 topics: Sequence[str] = (),
                 seek: Callable[[str, int, int], Awaitable[None]] | None = None) -> None:
        self.name = name
        self.stage = stage
        self.topics = list(topics)
        self._seek = seek
        self._next: dict[int, int] = {}  # lane -> offset of the next record it must get
        self._seeking: dict[int, int] = {}  # lane -> records dropped since a seek back
        self.codec = codec if codec is not None else Codec()
        self._send = send
        self._fail = fail
        self.lock = asyncio.Lock()
        self._pending: dict[int, list[Any]] = {}  # lane -> faust events not acked, in order
        self._alone: set[int] = set()  # ids of pending events settled alone (dead letters)
        self.generation = 0                    # bumped when partitions move
        self.dead_letters = 0
        self._busy = 0  # records in hand (being handled, or waiting for a retry)
        self._quiet_since = time.monotonic()  # when the role last got a record or a start

    def lane(self, topic: str, partition: int) -> int:
        """The stage's partition for a record of ``topic``: the Kafka partition itself
        for a role with one input topic; else partition × topics + the topic's place.

        >>> Role("commit", None, None, None, topics=["p.files", "p.stored"]).lane("p.stored", 2)
        5
        """
        if len(self.topics) < 2:
            return partition
        return partition * len(self.topics) + self.topics.index(topic)

    async def handle(self, event: Any) -> None:
        """Run the record through the stage, produce what it emits, and acknowledge what
        became safe. A transient failure (storage away, a repository locked by prune)
        is retried with backoff, the lock released in between; other failures stop the
        worker (nothing unacknowledged is lost: it is replayed)."""
        msg = event.message
        generation = self.generation
        delay = 1.0
        self._busy += 1
        try:
            while True:
                async with self.lock:
                    if generation != self.generation:
                        return  # partitions moved meanwhile: the new owner replays it
                    try:
                        await self._handle_once(event)
                        return
                    except (RetryableError, RepositoryLockedError) as exc:
                        log.warning("%s: %s[%d]@%d: %s; retrying in %.0fs", self.name,
                                    msg.topic, msg.partition, msg.offset, exc, delay)
                    except Exception as exc:  # a bug, a permanent storage error
                        self._fail(exc)
                        return
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_SECONDS)
        finally:
            self._busy -= 1
            self._quiet_since = time.monotonic()

    async def _in_sequence(self, event: Any, lane: int) -> bool:
        """Whether ``event`` is the next record of its lane, the only one the stage may
        get. A record before it (handled already, or below the committed offset the lane
        is read from) is acknowledged and skipped: it is settled. A record past the next one
        expected means records were skipped on the way (see :func:`_never_read`): the
        role seeks back to the expected offset (once; again after 1,000 records
        dropped) and skips records until it comes."""
        msg = event.message
        expected = self._next.get(lane)
        if expected is None or msg.offset == expected:
            self._seeking.pop(lane, None)
            return True
        if msg.offset < expected:
            if not self._pending.get(lane):
                event.ack()
            return False
        dropped = self._seeking.get(lane)
        if dropped is None or dropped >= 1000:
            log.warning("%s: %s[%d] went from %d to %d; reading again from %d", self.name,
                        msg.topic, msg.partition, expected, msg.offset, expected)
            if self._seek is not None:
                await self._seek(msg.topic, msg.partition, expected)
            dropped = 0
        self._seeking[lane] = dropped + 1
        return False

    async def _handle_once(self, event: Any) -> None:
        msg = event.message
        lane = self.lane(msg.topic, msg.partition)
        if not await self._in_sequence(event, lane):
            return
        self._next[lane] = msg.offset + 1
        generation = self.generation
        settled_alone = False
        started, decoded = time.perf_counter(), None
        try:
            decoded = self.codec.decode(msg.value or b"")
            emits = list(self.stage.handle(lane, msg.offset, decoded))
        except (UndecodableEventError, RejectedEventError) as exc:
            emits = [self._dead_letter(msg, getattr(exc, "reason", None) or str(exc))]
            settled_alone = True  # the stage holds nothing of it
        except BaseException:
            self._next[lane] = msg.offset  # not handled: the retry must get it again
            raise
        for emit in emits:
            await self._send(emit)
            if isinstance(emit.event, SnapshotCommitted):
                commits.info("%s", commit_line(emit.event))
        metrics().stage_record(self.name, msg.topic, decoded, emits, time.perf_counter() - started)
        if generation != self.generation:
            return  # partitions moved meanwhile: the new owner replays this record
        if settled_alone:
            self._alone.add(id(event))
        self._pending.setdefault(lane, []).append(event)
        self._ack(lane)

    def _dead_letter(self, msg: Any, reason: str) -> Emit:
        log.warning("%s[%d]@%d to the dead-letter topic: %s", msg.topic, msg.partition,
                    msg.offset, reason)
        self.dead_letters += 1
        return Emit("dlq", DeadLetter(topic=msg.topic, partition=msg.partition, offset=msg.offset,
                                      reason=reason, time=datetime.now(timezone.utc),
                                      key=msg.key, value=msg.value))

    def _ack(self, lane: int) -> None:
        """Acknowledge, in order, the records of ``lane`` that the stage says are
        settled, and the dead-lettered ones among them; stop at the first record still
        held. Never out of order: faust-streaming (0.15)'s commit takes the first run of
        consecutive acknowledged offsets, and lets it start one past its last commit,
        so an acknowledgement after a held record could commit past it."""
        upto = self.stage.settled(lane)
        pending = self._pending.get(lane)
        if not pending:
            return
        done = 0
        for e in pending:
            if id(e) in self._alone:
                self._alone.discard(id(e))
            elif upto is None or e.message.offset > upto:
                break
            e.ack()
            done += 1
        del pending[:done]

    def _ack_all(self) -> None:
        for lane in list(self._pending):
            self._ack(lane)

    async def _emit(self, emits: Iterable[Emit]) -> None:
        for emit in list(emits):
            await self._send(emit)

    async def make_durable(self) -> None:
        """Make durable what the stage holds (a packer's packs), and acknowledge."""
        await self._emit(self.stage.flush())
        self._ack_all()

    async def tick(self) -> None:
        """Periodic work: the stage's (a packer's time-based flush, a committer's expiry)."""
        async with self.lock:
            await self._emit(self.stage.tick(time.monotonic()))
            self._ack_all()

    async def reading_from(self, starts: Mapping[tuple[str, int], int]) -> None:
        """The consumer reads these partitions (topic, partition) from these offsets now:
        their committed offsets (the earliest for one never committed), sought to after
        partitions were assigned (:func:`_read_from_committed`). Each lane's next record
        is that one, whatever the lane expected before.

        Before, a lane expected what this role last handled of it, or nothing if the
        role never read it and then took its first record as it came: a record the
        consumer skipped before it went unnoticed. So a committer new to a ``files``
        partition started at its second record and refused the run whose first manifest
        was the first ("146 of the 147 entries its agent sent arrived"). Now such a
        skip is a gap: logged, and read again (:meth:`_in_sequence`). The soak shows
        them on committed partitions too: a record past the committed one first.

        A lane that got records since partitions were last revoked keeps its next
        record: faust may seek to the committed offsets again while records flow (seen
        in the soak), and what it replays then was handled already."""
        async with self.lock:
            for (topic, partition), offset in starts.items():
                if self.topics and topic not in self.topics:
                    continue
                lane = self.lane(topic, partition)
                if lane in self._pending:  # a record handled since the last revocation
                    continue
                self._next[lane] = offset
                self._seeking.pop(lane, None)
            self._quiet_since = time.monotonic()

    def stalled(self, ends: Mapping[tuple[str, int], int], now: float) -> list[tuple[str, int, int]]:
        """The partitions whose next record is on the broker but has not come, as
        (topic, partition, offset of the record the lane must get next): the role has got
        no record for ``STALL_SECONDS`` and holds none, yet a partition of its topics ends
        (``ends``: the partitions assigned, with their high watermarks) past its lane's
        next record. The caller reads them again from that offset; the role then waits
        another ``STALL_SECONDS`` before it says so again.

        A safety net under faust's flow control: records fetched while its flow is
        paused are dropped and read again only if a seek follows, and a lane that gets
        nothing after them has no later record to reveal the gap (:meth:`_in_sequence`).
        Seen in CI: a worker that restored its packer table while the agent published
        was ready with every partition and read nothing for 4 minutes. Reading a
        partition again costs nothing but the fetch: what was handled is skipped."""
        if self._busy or now - self._quiet_since < STALL_SECONDS:
            return []
        out = []
        for (topic, partition), end in ends.items():
            if self.topics and topic not in self.topics:
                continue
            expected = self._next.get(self.lane(topic, partition))
            if expected is not None and end > expected:
                out.append((topic, partition, expected))
        if out:
            self._quiet_since = now
        return out

    async def partitions_revoked(self) -> None:
        """Make durable and acknowledge what can be, then forget the rest: its records
        are not committed, so the partitions' new owner replays them."""
        async with self.lock:
            await self.make_durable()
            for lane, pending in self._pending.items():
                if pending:  # not committed: the replay starts there
                    self._next[lane] = pending[0].message.offset
            self._pending.clear()
            self._alone.clear()
            self._seeking.clear()
            self.stage.reset()
            self.generation += 1
            self._quiet_since = time.monotonic()

    def close(self) -> None:
        for _ in self.stage.flush():
            pass
        self.stage.close()


class _NoReadOffsets(dict):  # type: ignore[type-arg]
    """A consumer's read offsets that are never known (see :func:`_never_read`)."""

    def __getitem__(self, key: Any) -> None:
        return None

    def __setitem__(self, key: Any, value: Any) -> None:
        pass


def _never_read(consumer: Any) -> None:
    """Turn off faust-streaming's "already read" rule (0.15: its consumer drops every
    record below the last offset it delivered). After a rebalance, the record it was
    delivering when the partitions came back sets that offset *after* the seek to the
    committed offset, so the records between them were dropped: a chunker lost a
    directory's FileBegin this way, and a snapshot its entry. The roles keep order
    themselves (:meth:`Role._in_sequence`). Must run before the consumer starts."""
    consumer._read_offset = _NoReadOffsets()


def _read_from_committed(consumer: Any, roles: Sequence[Role]) -> None:
    """Make faust's seek to the committed offsets (after every rebalance, before records
    flow again) seek every partition, and tell each role where its partitions are read
    from (:meth:`Role.reading_from`). Must run before the consumer starts.

    faust drops what it fetched for a new assignment while its flow is still paused
    ("getmany called while flow not active") and seeks to the committed offsets to read
    it again; aiokafka's ``seek_to_committed`` (0.14) seeks only partitions whose
    committed offset is above 0. A partition never committed stayed where the fetch had
    got to, and the records dropped were never read: seen in the soak, a committer new
    to a ``files`` partition no run had used started at offset 1, its offset 0 the
    run's first manifest. Such a partition is sought here to its earliest offset, where
    a consumer with nothing committed starts."""
    seek_to_committed = consumer.seek_to_committed
    inputs = {t for role in roles for t in role.topics}

    async def seek() -> Mapping[Any, int | None]:
        committed = await seek_to_committed()
        starts = {(tp.topic, tp.partition): offset for tp, offset in committed.items()
                  if offset and tp.topic in inputs}
        fresh = [tp for tp, offset in committed.items() if not offset and tp.topic in inputs]
        try:
            earliest = await consumer.earliest_offsets(*fresh) if fresh else {}
            for tp, offset in earliest.items():
                await consumer.seek(tp, offset)
                starts[(tp.topic, tp.partition)] = offset
        except Exception as exc:  # partitions moved again: the next rebalance seeks them
            log.warning("could not seek partitions never committed to their start: %s", exc)
        for role in roles:
            await role.reading_from(starts)
        return committed

    consumer.seek_to_committed = seek


async def _watch_stalls(consumer: Any, roles: Sequence[Role], now: float) -> None:
    """Read again every stalled partition (:meth:`Role.stalled`) from the offset its lane
    must get next. Asks the broker for high watermarks only when a role has been quiet
    for ``STALL_SECONDS``, and never while the consumer's flow is stopped (a rebalance
    or a table recovery: records are meant not to come then)."""
    if not consumer.flow_active or not any(
            not r._busy and now - r._quiet_since >= STALL_SECONDS for r in roles):
        return
    inputs = {t for role in roles for t in role.topics}
    assigned = [tp for tp in consumer.assignment() if tp.topic in inputs]
    if not assigned:
        return
    ends = {(tp.topic, tp.partition): end
            for tp, end in (await consumer.highwaters(*assigned)).items() if end is not None}
    for role in roles:
        for topic, partition, offset in role.stalled(ends, now):
            log.warning("%s: %s[%d] has records from offset %d to %d that did not come in "
                        "%.0f s; reading them again", role.name, topic, partition, offset,
                        ends[(topic, partition)] - 1, STALL_SECONDS)
            for tp in assigned:
                if (tp.topic, tp.partition) == (topic, partition):
                    await consumer.seek(tp, offset)


def commit_line(event: SnapshotCommitted, now: datetime | None = None) -> str:
    """The worker's line for a committed snapshot.

    >>> from datetime import timedelta
    >>> t = datetime(2026, 12, 7, 5, 0, tzinfo=timezone.utc)
    >>> e = SnapshotCommitted(snapshot_id="h1-run", restic_id="ab" * 32, host="h1", paths=("/srv",),
    ...                       time=t, tree="cd" * 32, files=357, bytes_added=5 << 20)
    >>> commit_line(e, t + timedelta(seconds=2.5))
    'snapshot abababab committed: host h1, 357 files, 5.0 MiB added, 2.5 s after its run began'
    """
    now = now if now is not None else datetime.now(timezone.utc)
    took = (now - event.time).total_seconds()
    return (f"snapshot {event.restic_id[:8]} committed: host {event.host}, {event.files} files, "
            f"{event.bytes_added / (1 << 20):.1f} MiB added, {took:.1f} s after its run began")


def faust_settings(client: Mapping[str, str]) -> dict[str, Any]:
    """faust's connection settings from librdkafka-style ``client`` properties (the
    ``--kafka-config`` file and ``CORESTATE_KAFKA_*``): bootstrap servers, TLS, SASL,
    producer compression. Other librdkafka properties do not apply to the worker."""
    import faust

    servers = [s.strip() for s in client["bootstrap.servers"].split(",") if s.strip()]
    out: dict[str, Any] = {"broker": [f"kafka://{s}" for s in servers]}
    protocol = client.get("security.protocol", "PLAINTEXT").upper()
    context = None
    if protocol in ("SSL", "SASL_SSL"):
        context = ssl.create_default_context(cafile=client.get("ssl.ca.location"))
        if client.get("ssl.certificate.location"):
            context.load_cert_chain(client["ssl.certificate.location"],
                                    client.get("ssl.key.location"), client.get("ssl.key.password"))
        if client.get("enable.ssl.certificate.verification", "true").lower() == "false":
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
    if protocol.startswith("SASL"):
        out["broker_credentials"] = faust.SASLCredentials(
            username=client.get("sasl.username"), password=client.get("sasl.password"),
            mechanism=client.get("sasl.mechanism", "PLAIN").upper(), ssl_context=context)
    elif context is not None:
        out["broker_credentials"] = faust.SSLCredentials(context)
    elif protocol != "PLAINTEXT":
        raise PermanentError(f"security.protocol={protocol} is not supported by the worker")
    if client.get("compression.type", "none") != "none":
        out["producer_compression_type"] = client["compression.type"]
    return out


def _topic_layout(client: Mapping[str, str], prefix: str, roles: Sequence[str]) -> tuple[int, int]:
    """Check the topics the roles need exist; (chunks partitions, chunks replication)."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({k: v for k, v in client.items()
                         if k not in ("compression.type", "linger.ms", "acks")})
    try:
        meta = admin.list_topics(timeout=30).topics
    except KafkaException as exc:
        raise RetryableError(f"cannot reach Kafka at {client.get('bootstrap.servers')}: "
                             f"{exc.args[0].str()}") from None
    wanted = {spec(s).name(prefix) for r in roles for s in (*INPUTS[r], "chunks", "dlq")}
    missing = sorted(t for t in wanted if t not in meta)
    if missing:
        raise PermanentError(f"topics {', '.join(missing)} do not exist: run `corestate topics create`")
    chunks = meta[spec("chunks").name(prefix)].partitions
    return len(chunks), max(1, len(chunks[0].replicas))


def build_app(client: Mapping[str, str], roles: Sequence[str], open_repo: Callable[[], Repository],
              prefix: str, abandon_after: float, resources: ExitStack,
              fail: Callable[[BaseException], None],
              codec: Codec | None = None) -> tuple[Any, list[Role]]:
    """The faust app running ``roles``; repositories are opened (and locked) on
    ``resources``; ``fail`` is told of an error that must stop the worker; ``codec``
    decodes the records and encodes what the roles emit (default: single-object)."""
    import faust

    codec = codec if codec is not None else Codec()

    for r in roles:
        if r not in ROLES:
            raise PermanentError(f"unknown role {r!r}: choose from {', '.join(ROLES)}")
    chunk_partitions, replication = _topic_layout(client, prefix, roles)
    biggest = max(spec(s).max_message_bytes for s in ("chunks", "captures", "dlq"))
    app = faust.App(
        f"{prefix}.worker", **faust_settings(client), store="memory://", web_enabled=False,
        # faust wants a data directory even for memory tables; nothing in it outlives us
        datadir=resources.enter_context(tempfile.TemporaryDirectory(prefix="corestate-worker-")),
        autodiscover=False, topic_replication_factor=replication,
        topic_partitions=chunk_partitions,
        broker_session_timeout=SESSION_TIMEOUT, broker_heartbeat_interval=2.0,
        broker_commit_interval=COMMIT_SECONDS, broker_commit_every=10_000,
        consumer_auto_offset_reset="earliest", consumer_max_fetch_size=biggest * 4,
        consumer_metadata_max_age_ms=int(METADATA_SECONDS * 1000),
        producer_max_request_size=biggest, producer_acks=-1,
        stream_buffer_maxsize=64, stream_wait_empty=False, stream_recovery_delay=0.5,
        stream_ack_exceptions=False, stream_ack_cancelled_tasks=False)

    _never_read(app.consumer)

    def topic(suffix: str) -> Any:
        return app.topic(spec(suffix).name(prefix), key_type=bytes, value_type=bytes,
                         key_serializer="raw", value_serializer="raw", internal=False)

    outputs: dict[str, Any] = {}

    async def send(emit: Emit) -> None:
        if emit.topic not in outputs:
            outputs[emit.topic] = topic(emit.topic)
        key = emit.key if emit.key is not None else key_for(emit.event)
        await outputs[emit.topic].send(key=key, value=codec.encode(emit.event),
                                          partition=emit.partition)

    async def seek(topic: str, partition: int, offset: int) -> None:
        from faust.types import TP

        await app.consumer.seek(TP(topic, partition), offset)

    def repo() -> Repository:
        r = open_repo()
        resources.enter_context(r.locked(exclusive=False))
        return r

    built: list[Role] = []
    for name in roles:
        stage: Stage
        if name == "chunk":
            stage = ChunkStage(chunk_partitions)
        elif name == "pack":
            table = app.Table("blobs", key_type=bytes, value_type=bytes,  # raw serializers
                              partitions=chunk_partitions, help="packer index shares")
            share = IndexShare(table.data, set(),
                               lambda p, b, pack, t=table: t.send_changelog(p, b, pack))
            stage = PackStage(repo(), chunk_partitions, share, flush_every=PACK_FLUSH_SECONDS,
                              abandon_after=abandon_after)
        elif name == "commit":
            stage = CommitStage(repo(), abandon_after)
        else:
            stage = AlertGuard(repo())
        inputs = [spec(s).name(prefix) for s in INPUTS[name]]
        role = Role(name, stage, send, fail, codec, inputs, seek)
        built.append(role)
        source = app.topic(*inputs, key_type=bytes,
                           value_type=bytes, key_serializer="raw", value_serializer="raw")

        async def run(stream: Any, role: Role = role) -> None:
            async for event in stream.noack().events():
                await role.handle(event)

        app.agent(source, name=f"corestate.{name}", concurrency=1)(run)

    _read_from_committed(app.consumer, built)

    @app.timer(COMMIT_SECONDS)
    async def tick() -> None:
        for role in built:
            await role.tick()

    stall_check_failed = [False]  # the first failure is a warning, later ones debug

    @app.timer(STALL_SECONDS / 2)
    async def watch() -> None:
        if app.rebalancing or getattr(app, "in_recovery", False):
            return
        try:
            await _watch_stalls(app.consumer, built, time.monotonic())
        except Exception as exc:  # the broker away, partitions moving: next time
            (log.debug if stall_check_failed[0] else log.warning)(
                "stall check skipped: %s", exc or type(exc).__name__)
            stall_check_failed[0] = True

    @app.on_partitions_revoked.connect
    async def revoked(app: Any, revoked: Any, **_kw: Any) -> None:
        for role in built:
            await role.partitions_revoked()
        await app.producer.flush()
        await app.consumer.commit()

    return app, built


def run_worker(client: Mapping[str, str], roles: Sequence[str], open_repo: Callable[[], Repository],
               prefix: str = "corestate", abandon_after: float = 3600.0,
               loglevel: str = "WARNING", codec: Codec | None = None) -> None:
    """Run ``roles`` until SIGTERM or Ctrl-C; a stage's failure stops the worker and is
    raised here. ``codec``: see :func:`build_app`."""
    import faust

    failures: list[BaseException] = []
    workers: list[Any] = []
    commits.setLevel(logging.INFO)
    if not commits.handlers:  # its own line on stderr, whatever level faust logs at
        line = logging.StreamHandler(sys.stderr)
        line.setFormatter(logging.Formatter("[%(asctime)s] [%(process)d] %(message)s"))
        commits.addHandler(line)
        commits.propagate = False

    def fail(exc: BaseException) -> None:
        log.error("worker stopping: %s", exc)
        failures.append(exc)
        if workers:
            asyncio.ensure_future(workers[0].stop())

    with ExitStack() as resources:
        app, built = build_app(client, roles, open_repo, prefix, abandon_after, resources, fail,
                               codec)

        async def drain() -> None:
            for role in built:
                async with role.lock:
                    await role.make_durable()
            try:
                await app.producer.flush()
                await app.consumer.commit()
            except Exception as exc:  # the partitions' next owner replays
                log.warning("final commit failed: %s", exc)

        outage = OutageReport(client["bootstrap.servers"], say=log.warning)

        @app.timer(COMMIT_SECONDS)
        async def outage_over() -> None:
            outage.tick(time.monotonic())

        class Worker(faust.Worker):
            async def _stop_on_signal(self, signal: Any) -> None:
                await drain()
                await super()._stop_on_signal(signal)

            def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
                super().on_setup_root_logger(logger, level)
                for handler in logger.handlers:  # the client's outage lines: one warning
                    handler.addFilter(OutageFilter(outage, time.monotonic))

        workers.append(Worker(app, loglevel=loglevel, quiet=True, redirect_stdouts=False))
        workers[0].spinner = None  # a terminal spinner has no place in a service's log
        for name in ("faust.transport.producer", "faust.transport.drivers.aiokafka"):
            logging.getLogger(name).addFilter(_KnownShutdownNoise())
        try:
            workers[0].execute_from_commandline()
        except SystemExit:
            pass
        finally:
            for role in built:
                role.close()
    for exc in failures:
        raise exc if isinstance(exc, CoreStateError) else RetryableError(f"worker stopped: {exc}")


class _KnownShutdownNoise(logging.Filter):
    """faust logs a traceback when its producer buffer stops after the producer did
    ("Cannot flush: Producer not Running"); everything was flushed before, so drop it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Producer not Running" not in str(record.exc_info[1] if record.exc_info else "")


def roles_of(text: str) -> list[str]:
    """``--roles`` parsed and checked."""
    wanted = [r.strip() for r in text.split(",") if r.strip()]
    unknown = [r for r in wanted if r not in ROLES]
    if unknown or not wanted:
        raise PermanentError(f"--roles takes {', '.join(ROLES)}, not {text!r}")
    return wanted
