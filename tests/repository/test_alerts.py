"""The alert ledger and the protection list, on a real repository."""

from __future__ import annotations

import json

import pytest

from corestate.connectors.url import open_backend
from corestate.errors import NotFoundError
from corestate.repository.alerts import Alert, AlertLedger, append_line
from corestate.repository.protected import load_protected
from corestate.repository.repository import Repository
from corestate.schemas import events


@pytest.fixture
def repo(tmp_path):
    r = Repository.init(open_backend(str(tmp_path / "repo")), "pw")
    yield r
    r.close()


def alert(snap: str | None, t: float = 1_800_000_000.0) -> Alert:
    return Alert(time=t, host="h1", score=0.99, threshold=0.97, reason="opaque_share +19.0σ",
                 paths=["/home/a/x.pdf"], clean_snapshot=snap,
                 top_features=[("opaque_share", 1.0)])


def test_recording_protects_the_clean_snapshot_and_release_unprotects_it(repo):
    ledger = AlertLedger(repo)
    repo.save_sidecar("protected", json.dumps(["manual00"]).encode())
    a, b = alert("aaaa1111"), alert("aaaa1111", t=1_800_000_100.0)
    ledger.record(a)
    ledger.record(b)
    assert load_protected(repo) == ["manual00", "aaaa1111"]
    assert [x.id for x in ledger.load()] == [a.id, b.id]
    acked = ledger.ack(a.id[:6])
    assert acked.acked and not acked.released and "aaaa1111" in load_protected(repo)
    _, unprotected = ledger.release(a.id)
    assert not unprotected and "aaaa1111" in load_protected(repo)  # b still names it
    _, unprotected = ledger.release(b.id)
    assert unprotected and load_protected(repo) == ["manual00"]
    assert all(x.released and x.acked for x in ledger.load())


def test_recording_a_grown_alert_again_keeps_its_flags_and_its_release(repo):
    ledger = AlertLedger(repo)
    a = alert("bbbb2222")
    ledger.record(a)
    ledger.release(a.id)
    assert load_protected(repo) == []
    a.paths.append("/home/a/y.pdf")  # the episode grew; the sentinel records it again
    a.score = 0.995
    recorded = ledger.record(a)
    assert recorded.released and recorded.acked and load_protected(repo) == []
    (stored,) = ledger.load()
    assert stored.paths == ["/home/a/x.pdf", "/home/a/y.pdf"] and stored.score == 0.995
    assert stored.released


def test_unknown_alert_ids_are_reported(repo):
    with pytest.raises(NotFoundError):
        AlertLedger(repo).ack("feed")


def test_alert_line_and_event_carry_the_required_fields(tmp_path):
    a = alert("bbbb2222")
    path = tmp_path / "alerts.jsonl"
    append_line(path, a)
    append_line(path, a)
    lines = [json.loads(ln) for ln in path.read_text().splitlines()]
    assert len(lines) == 2
    assert {"time", "host", "score", "reason", "paths", "clean_snapshot"} <= set(lines[0])
    assert lines[0]["time"].endswith("Z") and lines[0]["clean_snapshot"] == "bbbb2222"
    assert Alert.from_json(a.to_json()) == a
    ev = a.to_event()
    assert isinstance(ev, events.Alert) and ev.paths == (b"/home/a/x.pdf",)
    assert ev.top_features == (events.AlertFeature("opaque_share", 1.0),)
