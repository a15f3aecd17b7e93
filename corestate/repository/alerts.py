"""Alerts and the repository's record of them: the alert ledger.

Terms:

- *alert*: the detector judged a window of changes anomalous. It carries its ``id``
  (12 hex digits), ``time`` (seconds since the epoch; written as RFC 3339 UTC), the
  ``host``, the ``score`` and the ``threshold`` it crossed, a ``reason`` (the features
  furthest above normal, as the detector explains them), those features' values
  (``top_features``), the affected ``paths``
  (most suspicious first) and ``clean_snapshot``: the last snapshot committed before the
  anomalous activity began, or None if there was none.
- *alert line*: the alert as one JSON object, as ``corestate protect --alerts FILE``
  appends it (keys ``time``, ``host``, ``score``, ``reason``, ``paths``,
  ``clean_snapshot``, plus ``id``, ``threshold``, ``top_features``). An alert whose
  episode grows (more paths, a higher score) is appended again with the same ``id``:
  the last line of an id is the alert as it stands. The same fields make the Avro
  ``Alert`` event of distributed mode (:meth:`Alert.to_event`); an event's alert id is
  derived from its host and time (:func:`alert_id`), so a replayed or re-published event
  names the same alert.
- *ledger*: every alert of a repository, in the sidecar file ``corestate/alerts`` (a
  JSON list of alert objects, with ``acked`` and ``released`` flags). A person *acks* an
  alert (seen) and *releases* it (the clean snapshot may be forgotten again). Recording
  an alert that is already there replaces its fields and keeps its flags.
- An alert's clean snapshot is on the protection list
  (:mod:`corestate.repository.protected`) from the moment the alert is recorded until
  every alert naming that snapshot is released. Entries put there by anything else are
  left alone.

Writers read, change and write a whole sidecar file; the ledger's flags only ever go
from false to true. Protecting takes the repository's shared lock, so it never
interleaves with a forget or prune (which hold the exclusive lock): either forget runs
first and the snapshot may be gone (the alert then says so), or the protection is in place
before forget reads the list.

>>> from datetime import datetime, timezone
>>> alert_id(events.Alert(time=datetime(2024, 5, 1, tzinfo=timezone.utc), host="h1",
...                       score=0.99, reason="opaque_share +19.0σ"))
'2237201255a1'
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone

import orjson

from corestate.errors import NotFoundError, PermanentError
from corestate.repository.protected import load_protected, save_protected
from corestate.repository.repository import Repository
from corestate.schemas import events

ALERTS_SIDECAR = "alerts"


def alert_id(event: events.Alert) -> str:
    """The ledger id of an alert event: its host and time, so stable across replays."""
    key = f"{event.host}\0{event.time.isoformat()}".encode("utf-8")
    return hashlib.sha256(key).hexdigest()[:12]


@dataclass
class Alert:
    """One alert (see the module docstring)."""

    time: float
    host: str
    score: float
    threshold: float
    reason: str
    paths: list[str]
    clean_snapshot: str | None
    top_features: list[tuple[str, float]] = field(default_factory=list)
    id: str = field(default_factory=lambda: secrets.token_hex(6))
    acked: bool = False
    released: bool = False

    @property
    def time_text(self) -> str:
        return datetime.fromtimestamp(self.time, timezone.utc).isoformat().replace("+00:00", "Z")

    def line(self) -> dict[str, object]:
        """The alert line written to ``--alerts FILE``."""
        return {"time": self.time_text, "host": self.host, "score": round(self.score, 6),
                "reason": self.reason, "paths": self.paths,
                "clean_snapshot": self.clean_snapshot, "id": self.id,
                "threshold": round(self.threshold, 6),
                "top_features": [{"name": n, "value": round(v, 6)} for n, v in self.top_features]}

    def to_json(self) -> dict[str, object]:
        doc = asdict(self)
        doc["time"] = self.time_text
        doc["top_features"] = [{"name": n, "value": v} for n, v in self.top_features]
        return doc

    def to_event(self) -> events.Alert:
        """The Avro ``Alert`` event of the ``corestate.alerts`` topic."""
        return events.Alert(time=datetime.fromtimestamp(self.time, timezone.utc), host=self.host,
                            score=self.score, reason=self.reason,
                            top_features=tuple(events.AlertFeature(n, v) for n, v in self.top_features),
                            paths=tuple(os.fsencode(p) for p in self.paths),
                            clean_snapshot=self.clean_snapshot)

    @classmethod
    def from_event(cls, event: events.Alert) -> Alert:
        """The alert an ``Alert`` event carries, under its :func:`alert_id` (paths not
        UTF-8 shown with ``\\x`` escapes, so the ledger stays JSON)."""
        return cls(time=event.time.timestamp(), host=event.host, score=event.score,
                   threshold=0.0, reason=event.reason,
                   paths=[p.decode("utf-8", "backslashreplace") for p in event.paths],
                   clean_snapshot=event.clean_snapshot,
                   top_features=[(f.name, f.value) for f in event.top_features],
                   id=alert_id(event))

    @classmethod
    def from_json(cls, doc: dict[str, object]) -> Alert:
        t = doc["time"]
        when = (datetime.fromisoformat(t.replace("Z", "+00:00")).timestamp()
                if isinstance(t, str) else _number(t))
        paths = doc.get("paths") or []
        clean = doc.get("clean_snapshot")
        tops = doc.get("top_features") or []
        top = [(str(f["name"]), _number(f["value"])) for f in tops
               if isinstance(f, dict)] if isinstance(tops, list) else []
        return cls(time=when, host=str(doc.get("host", "")), score=_number(doc["score"]),
                   threshold=_number(doc.get("threshold", 0.0)),
                   reason=str(doc.get("reason", "")),
                   paths=[str(p) for p in paths] if isinstance(paths, list) else [],
                   clean_snapshot=str(clean) if clean else None, top_features=top,
                   id=str(doc["id"]),
                   acked=bool(doc.get("acked")), released=bool(doc.get("released")))


def _number(value: object) -> float:
    if not isinstance(value, (int, float, str)):
        raise PermanentError(f"the alert ledger holds {value!r} where a number belongs")
    return float(value)


def append_line(path: str | os.PathLike[str], alert: Alert) -> None:
    """Append the alert line to ``path`` (one JSON object per line), flushed to disk."""
    with open(path, "ab") as f:
        f.write(orjson.dumps(alert.line()) + b"\n")
        f.flush()
        os.fsync(f.fileno())


class AlertLedger:
    """The alerts sidecar of one repository, and the protection of the snapshots its
    alerts name."""

    def __init__(self, repo: Repository) -> None:
        self.repo = repo

    def load(self) -> list[Alert]:
        """Every alert, oldest first; [] when there is no ledger yet."""
        try:
            raw = self.repo.load_sidecar(ALERTS_SIDECAR)
        except NotFoundError:
            return []
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError:
            doc = None
        if not isinstance(doc, list):
            raise PermanentError(f"the alert ledger (corestate/{ALERTS_SIDECAR}) is not a JSON "
                                 "list; repair or remove it")
        alerts = [Alert.from_json(d) for d in doc if isinstance(d, dict)]
        alerts.sort(key=lambda a: (a.time, a.id))
        return alerts

    def _save(self, alerts: Iterable[Alert]) -> None:
        self.repo.save_sidecar(ALERTS_SIDECAR, orjson.dumps([a.to_json() for a in alerts]))

    def protected(self) -> list[str]:
        return load_protected(self.repo)

    def record(self, alert: Alert) -> Alert:
        """Add the alert to the ledger, or update the entry with its id (whose acked and
        released flags are kept); protect its clean snapshot unless it is released.
        Returns the alert as recorded.

        Raises :class:`~corestate.errors.RepositoryLockedError` while a forget or prune
        holds the exclusive lock; the caller retries later."""
        with self.repo.locked(exclusive=False):
            alerts = self.load()
            for old in alerts:
                if old.id == alert.id:
                    alert = replace(alert, acked=alert.acked or old.acked,
                                    released=alert.released or old.released)
            if alert.clean_snapshot and not alert.released:
                ids = self.protected()
                if alert.clean_snapshot not in ids:
                    save_protected(self.repo, [*ids, alert.clean_snapshot])
            self._save([*(a for a in alerts if a.id != alert.id), alert])
            return alert

    def find(self, prefix: str) -> Alert:
        matches = [a for a in self.load() if a.id.startswith(prefix.lower())]
        if not matches:
            raise NotFoundError(f"no alert with id {prefix!r} (see `corestate alerts list`)")
        if len(matches) > 1:
            raise PermanentError(f"alert id {prefix!r} is ambiguous: {len(matches)} alerts match")
        return matches[0]

    def ack(self, prefix: str) -> Alert:
        """Mark an alert as seen."""
        alerts = self.load()
        target = self.find(prefix)
        for a in alerts:
            if a.id == target.id:
                a.acked = True
                target = a
        self._save(alerts)
        return target

    def release(self, prefix: str) -> tuple[Alert, bool]:
        """Release an alert (and ack it); unprotect its clean snapshot unless another
        unreleased alert names it. Returns the alert and whether it was unprotected."""
        alerts = self.load()
        target = self.find(prefix)
        for a in alerts:
            if a.id == target.id:
                a.acked = a.released = True
                target = a
        self._save(alerts)
        snap = target.clean_snapshot
        still = {a.clean_snapshot for a in alerts if not a.released and a.clean_snapshot}
        if not snap or snap in still:
            return target, False
        ids = self.protected()
        if snap not in ids:
            return target, False
        save_protected(self.repo, [i for i in ids if i != snap])
        return target, True
