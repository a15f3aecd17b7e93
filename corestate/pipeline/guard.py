"""The alert guard: a distributed-mode stage that protects the clean snapshot an alert
names, so that ``forget`` and ``prune`` keep it.

Terms:

- an *alert* is an :class:`~corestate.schemas.events.Alert` event a host agent published
  on ``<prefix>.alerts``; its ``clean_snapshot`` is the restic id of the newest snapshot
  taken before the anomaly began;
- *guarding* an alert records it in the repository's alert ledger and puts its clean
  snapshot on the protection list (:class:`~corestate.models.alerts.AlertLedger`, the
  same state ``corestate protect --alerts`` keeps, so ``corestate alerts list|ack|release``
  work on it);
- the *alert id* of an event is derived from its host and time (12 hex digits), so a
  replayed event is recognised: an alert already in the ledger is left as it is (a
  person may have released it since; replay must not protect its snapshot again).

The guard emits nothing and ignores every other event. Like the other stages it knows
nothing of Kafka (:mod:`corestate.pipeline.stage`); a record is settled once handled.

>>> from datetime import datetime, timezone
>>> alert_id(events.Alert(time=datetime(2024, 5, 1, tzinfo=timezone.utc), host="h1",
...                       score=0.99, reason="opaque_share +19.0σ"))
'2237201255a1'
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

from corestate.pipeline.jobs import Record
from corestate.pipeline.stage import Emit, Holds
from corestate.repository.repository import Repository
from corestate.schemas import events


def alert_id(event: events.Alert) -> str:
    """The ledger id of an alert event: stable across replays."""
    key = f"{event.host}\0{event.time.isoformat()}".encode("utf-8")
    return hashlib.sha256(key).hexdigest()[:12]


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
        # The ledger is the one ``corestate protect`` keeps; imported here, when an alert
        # arrives, so that the pipeline layer does not load the models package otherwise.
        from corestate.models.alerts import Alert, AlertLedger

        ledger = AlertLedger(self.repo)
        ident = alert_id(event)
        if any(a.id == ident for a in ledger.load()):
            return  # a replay: already recorded (and maybe released since)
        ledger.record(Alert(
            time=event.time.timestamp(), host=event.host, score=event.score,
            threshold=0.0, reason=event.reason,
            paths=[p.decode("utf-8", "backslashreplace") for p in event.paths],  # JSON-safe
            clean_snapshot=event.clean_snapshot,
            top_features=[(f.name, f.value) for f in event.top_features], id=ident))
        self.guarded += 1
