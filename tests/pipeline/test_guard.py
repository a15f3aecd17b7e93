"""The alert guard in memory: an Alert event protects its clean snapshot, replays change
nothing (not even after a release), other events are ignored."""

from __future__ import annotations

import itertools
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import pytest

from corestate.connectors.url import open_backend
from corestate.pipeline.guard import AlertGuard
from corestate.repository.alerts import AlertLedger, alert_id
from corestate.repository.protected import load_protected
from corestate.repository.repository import Repository
from corestate.schemas.codec import decode, encode
from corestate.schemas.events import Alert, AlertFeature, SnapshotCommitted
from tests.conftest import PASSWORD

POS = itertools.count()  # record positions, as a runner gives them

T = datetime(2024, 5, 1, 12, 0, 0, 250_000, tzinfo=timezone.utc)


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return Repository.init(open_backend(str(tmp_path / "repo")), PASSWORD)


def event(clean: str | None, t: datetime = T, host: str = "web1") -> Alert:
    return Alert(time=t, host=host, score=0.98, reason="opaque_share +19.0σ",
                 top_features=(AlertFeature("opaque_share", 1.0),),
                 paths=(b"/srv/docs/a.pdf", b"/srv/caf\xe9.txt"), clean_snapshot=clean)


def test_an_alert_protects_its_clean_snapshot_and_is_in_the_ledger(repo: Repository) -> None:
    guard = AlertGuard(repo)
    ev = decode(encode(event("ab" * 32)), Alert)  # as the worker gets it
    assert list(guard.handle(0, next(POS), ev)) == []
    assert load_protected(repo) == ["ab" * 32]
    [recorded] = AlertLedger(repo).load()
    assert recorded.id == alert_id(ev) and recorded.host == "web1"
    assert recorded.clean_snapshot == "ab" * 32 and recorded.time == T.timestamp()
    assert recorded.paths == ["/srv/docs/a.pdf", "/srv/caf\\xe9.txt"]  # shown, JSON-safe
    assert recorded.top_features == [("opaque_share", 1.0)] and not recorded.released


def test_replays_are_idempotent_and_do_not_undo_a_release(repo: Repository) -> None:
    guard = AlertGuard(repo)
    ev = event("cd" * 32)
    for _ in range(3):
        list(guard.handle(0, next(POS), ev))
    assert load_protected(repo) == ["cd" * 32] and len(AlertLedger(repo).load()) == 1
    assert guard.guarded == 1
    _, unprotected = AlertLedger(repo).release(alert_id(ev))
    assert unprotected and load_protected(repo) == []
    list(guard.handle(0, next(POS), ev))  # the worker restarted and replays the topic
    assert load_protected(repo) == []
    assert AlertLedger(repo).load()[0].released


def test_an_alert_published_again_grown_updates_its_entry_and_keeps_its_flags(repo: Repository) -> None:
    guard = AlertGuard(repo)
    ev = event("ab" * 32)
    list(guard.handle(0, next(POS), ev))
    AlertLedger(repo).ack(alert_id(ev))
    grown = replace(ev, score=0.995, paths=(*ev.paths, b"/srv/docs/b.pdf"))
    list(guard.handle(0, next(POS), grown))  # the agent's episode grew: same host and time
    list(guard.handle(0, next(POS), ev))  # a replay of the first event changes nothing
    (recorded,) = AlertLedger(repo).load()
    assert recorded.id == alert_id(ev) and recorded.score == 0.995 and recorded.acked
    assert recorded.paths[-1] == "/srv/docs/b.pdf" and len(recorded.paths) == 3
    assert guard.guarded == 1


def test_two_alerts_of_one_snapshot_and_an_alert_without_one(repo: Repository) -> None:
    guard = AlertGuard(repo)
    list(guard.handle(0, next(POS), event("ef" * 32)))
    list(guard.handle(0, next(POS), event("ef" * 32, t=T.replace(second=9))))
    list(guard.handle(0, next(POS), event(None, host="db1")))  # recorded, nothing to protect
    assert load_protected(repo) == ["ef" * 32]
    assert sorted(a.host for a in AlertLedger(repo).load()) == ["db1", "web1", "web1"]


def test_other_events_are_ignored(repo: Repository) -> None:
    guard = AlertGuard(repo)
    other = SnapshotCommitted(snapshot_id="run-1", restic_id="ab" * 32, host="h", paths=("/srv",),
                              time=T, tree="cd" * 32, files=1, bytes_added=0)
    assert list(guard.handle(0, next(POS), other)) == []
    guard.reset()
    assert load_protected(repo) == [] and AlertLedger(repo).load() == []
