"""The alert guard: a distributed-mode stage that protects the clean snapshot an alert
names, so that ``forget`` and ``prune`` keep it.

Terms:

- an *alert* is an :class:`~corestate.schemas.events.Alert` event a host agent published
  on ``<prefix>.alerts``; its ``clean_snapshot`` is the restic id of the newest snapshot
  taken before the anomaly began;
- *guarding* an alert records it in the repository's alert ledger and puts its clean
  snapshot on the protection list (:class:`~corestate.repository.alerts.AlertLedger`,
  the same state ``corestate protect`` keeps, so ``corestate alerts list|ack|release``
  work on it);
- the *alert id* of an event is derived from its host and time
  (:func:`~corestate.repository.alerts.alert_id`), so a replayed event is recognised:
  an alert already in the ledger is left as it is, unless the event shows it grown
  (more paths or a higher score: the agent published the episode again), when its
  paths and score are updated and its flags kept (a person may have released it since;
  neither replay nor growth protects its snapshot again).

The guard emits nothing and ignores every other event. Like the other stages it knows
nothing of Kafka (:mod:`corestate.pipeline.stage`); a record is settled once handled.
"""

from __future__ import annotations

from collections.abc import Iterator

from corestate.pipeline.jobs import Record
from corestate.pipeline.stage import Emit, Holds
from corestate.repository.alerts import Alert, AlertLedger
from corestate.repository.repository import Repository
from corestate.schemas import events


class AlertGuard:
    """Records each alert with its clean snapshot protected (see the module docstring).

    State: none beyond the repository's sidecar files, so :meth:`reset` has nothing to
    drop. Recording takes the repository's shared lock; a forget or prune holding the
    exclusive one makes :meth:`handle` raise, and the record is replayed later."""

    def __init__(self, repo: Repository) -> None:
        self.repo = repo
        self.guarded = 0  # alerts recorded by this guard (replays not counted)
        self._holds = Holds()

    def settled(self, partition: int) -> int | None:
        return self._holds.settled(partition)

    def flush(self) -> Iterator[Emit]:
        return iter(())

    def tick(self, now: float) -> Iterator[Emit]:
        return iter(())

    def reset(self) -> None:
        """Partitions moved: nothing to forget."""
        self._holds.clear()

    def close(self) -> None:
        pass

    def handle(self, partition: int, position: int, event: Record) -> Iterator[Emit]:
        if isinstance(event, events.Alert):
            self._guard(event)
        self._holds.seen(partition, position)
        return iter(())

    def _guard(self, event: events.Alert) -> None:
        ledger = AlertLedger(self.repo)
        alert = Alert.from_event(event)
        old = next((a for a in ledger.load() if a.id == alert.id), None)
        if old is not None and len(alert.paths) <= len(old.paths) and alert.score <= old.score:
            return  # a replay: already recorded (and maybe released since)
        ledger.record(alert)
        if old is None:
            self.guarded += 1
