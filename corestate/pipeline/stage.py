"""The stage protocol: what every step of the pipeline offers the runners that drive it.

A *stage* (chunk, pack, commit, guard) is a plain object that takes events one at a time
and says what to emit; it knows nothing of Kafka, queues or processes. Two *runners*
drive the same stage classes: the embedded runner (:mod:`corestate.pipeline.embedded`:
bounded queues and worker processes) and the Kafka runner
(:mod:`corestate.connectors.kafka_runner`: consumer groups and topics).

Terms:

- a *partition* is the input lane a record arrived on (a Kafka partition; a worker's
  lane in the embedded runner) and its *position* the record's place in that lane
  (the Kafka offset; a counter). Positions on one partition only grow until
  :meth:`Stage.reset`;
- an *emit* (:class:`Emit`) is an event the stage wants sent on: to a topic (by its
  short name, e.g. ``chunks``), on a partition or by key;
- a record is *settled* once everything the stage did with it is durable (stored,
  or handed on in emits the runner has delivered) and the stage no longer needs it to
  be replayed. :meth:`Stage.settled` answers, per partition, the highest position up
  to which every record is settled: a runner may commit its consumer offset past it,
  and must not commit beyond it (a crash would lose what the stage holds in memory);
- :class:`Holds` is the bookkeeping most stages need for that answer: the last
  position seen per partition, and per partition the earliest position of each group
  of records still held (an open file, a barrier in progress, a snapshot not yet
  committed).

A record the stage cannot accept raises :class:`RejectedEventError`; the runner sends
it to the dead-letter topic (embedded: reports it) and goes on.

>>> h = Holds()
>>> h.seen(0, 5); h.hold(0, "file-a", 5); h.seen(0, 6); h.seen(0, 7)
>>> h.settled(0)
4
>>> h.release("file-a"); h.settled(0)
7
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from corestate.errors import PermanentError

if TYPE_CHECKING:
    from corestate.pipeline.jobs import Record


class RejectedEventError(PermanentError):
    """A valid event that this stage cannot accept (out of order, wrong topic, corrupt)."""


@dataclass(frozen=True)
class Emit:
    """An event to send: to ``<prefix>.<topic>``, on ``partition`` (None: by key), with
    ``key`` (None: the topic contract's key for the event)."""

    topic: str
    event: Record
    partition: int | None = None
    key: bytes | None = None


class Stage(Protocol):
    """One step of the pipeline (see the module docstring)."""

    def handle(self, partition: int, position: int, event: Record) -> Iterator[Emit]:
        """Take one record; yield what to send on. Raises :class:`RejectedEventError`
        for a record to dead-letter."""
        ...

    def settled(self, partition: int) -> int | None:
        """The highest position on ``partition`` up to which every record is settled;
        None if none is."""
        ...

    def flush(self) -> Iterator[Emit]:
        """Make durable what can be made durable now (a packer writes its open packs)."""
        ...

    def tick(self, now: float) -> Iterator[Emit]:
        """Periodic work at monotonic time ``now`` (a time-based flush, expiring a run
        that was abandoned)."""
        ...

    def reset(self) -> None:
        """The partitions moved: forget what is held in memory (it will be replayed)."""
        ...

    def close(self) -> None:
        """Release resources (after a final :meth:`flush`)."""
        ...


class Holds:
    """Per partition, the last position seen and the earliest position of each group of
    records still held (see the module docstring)."""

    def __init__(self) -> None:
        self._last: dict[int, int] = {}
        self._held: dict[int, dict[Hashable, int]] = {}

    def seen(self, partition: int, position: int) -> None:
        self._last[partition] = position

    def hold(self, partition: int, group: Hashable, position: int) -> None:
        """Hold ``group`` on ``partition`` from ``position`` (the first hold counts)."""
        self._held.setdefault(partition, {}).setdefault(group, position)

    def release(self, group: Hashable, partition: int | None = None) -> None:
        """Stop holding ``group`` (on one partition, or on every one)."""
        for p, groups in self._held.items():
            if partition is None or p == partition:
                groups.pop(group, None)

    def last_positions(self) -> dict[int, int]:
        """The last position seen, per partition."""
        return dict(self._last)

    def holding(self, group: Hashable, partition: int) -> bool:
        return group in self._held.get(partition, {})

    def settled(self, partition: int, upto: int | None = None) -> int | None:
        """The last position seen (or ``upto``, if lower), but before every hold."""
        last = self._last.get(partition)
        if last is None:
            return None
        if upto is not None:
            last = min(last, upto)
        held = self._held.get(partition)
        if held:
            last = min(last, min(held.values()) - 1)
        return last

    def clear(self) -> None:
        self._last.clear()
        self._held.clear()
