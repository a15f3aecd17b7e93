"""forget: restic's policy semantics on synthetic times, the protection list, and the
real restic as the oracle for which snapshots a policy keeps."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from corestate.errors import PermanentError
from corestate.maintenance.forget import Decision, Policy, apply_policy, forget, plan
from corestate.repository.protected import is_protected, load_protected
from corestate.repository.backend import Kind
from corestate.repository.snapshot import Snapshot
from tests.maintenance.scenario import (RESTIC, file_names, new_repo, reopen, restic_json,
                                        snap, write_files)

UTC = timezone.utc


def mk(when: datetime, sid: str, host: str = "h", paths: tuple[str, ...] = ("/p",),
       tags: tuple[str, ...] = ()) -> Snapshot:
    return Snapshot(time=int(when.timestamp()) * 10**9, tree=b"\0" * 32, paths=list(paths),
                    hostname=host, tags=list(tags), id=sid)


def kept(decisions: list[Decision]) -> list[str]:
    return sorted(d.snapshot.id for d in decisions if d.keep)


def at(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def test_keep_last_keeps_the_newest_n() -> None:
    snaps = [mk(at(2024, 1, 1) + timedelta(hours=i), f"s{i:02d}") for i in range(10)]
    decisions = apply_policy(snaps, Policy(last=3), tz=UTC)
    assert kept(decisions) == ["s07", "s08", "s09"]
    assert [d.snapshot.id for d in decisions][:3] == ["s09", "s08", "s07"]  # newest first
    assert decisions[0].reasons == ["last snapshot"] and decisions[0].counters == {"last": 2}


def test_keep_daily_keeps_the_newest_of_each_day_over_several_days() -> None:
    snaps = []
    for day in range(1, 6):  # Jan 1..5, three snapshots a day
        for hour in (1, 12, 23):
            snaps.append(mk(at(2024, 1, day, hour), f"d{day}h{hour:02d}"))
    decisions = apply_policy(snaps, Policy(daily=3), tz=UTC)
    assert kept(decisions) == ["d3h23", "d4h23", "d5h23"]


def test_keep_daily_counts_only_days_that_have_a_snapshot() -> None:
    snaps = [mk(at(2024, 1, d, 10), f"d{d:02d}") for d in (1, 2, 10, 20)]
    assert kept(apply_policy(snaps, Policy(daily=3), tz=UTC)) == ["d02", "d10", "d20"]


def test_keep_weekly_uses_iso_weeks() -> None:
    # 2024-01-07 is a Sunday (ISO week 1), 2024-01-08 a Monday (week 2).
    snaps = [mk(at(2024, 1, 6, 12), "sat-w1"), mk(at(2024, 1, 7, 23, 59), "sun-w1"),
             mk(at(2024, 1, 8, 0, 1), "mon-w2"), mk(at(2024, 1, 14, 12), "sun-w2")]
    assert kept(apply_policy(snaps, Policy(weekly=2), tz=UTC)) == ["sun-w1", "sun-w2"]
    assert kept(apply_policy(snaps, Policy(weekly=1), tz=UTC)) == ["sun-w2"]
    # ISO week 1 of 2021 starts on Monday 2021-01-04; Jan 1-3 belong to 2020-W53.
    edge = [mk(at(2020, 12, 31, 12), "w53-a"), mk(at(2021, 1, 3, 12), "w53-b"),
            mk(at(2021, 1, 4, 12), "w01")]
    assert kept(apply_policy(edge, Policy(weekly=5), tz=UTC)) == ["w01", "w53-b"]


def test_keep_monthly_and_yearly_boundaries() -> None:
    snaps = [mk(at(2023, 12, 31, 23, 59), "dec31"), mk(at(2024, 1, 1, 0, 0), "jan01"),
             mk(at(2024, 1, 31, 23, 59), "jan31"), mk(at(2024, 2, 1, 0, 0), "feb01")]
    assert kept(apply_policy(snaps, Policy(monthly=1), tz=UTC)) == ["feb01"]
    assert kept(apply_policy(snaps, Policy(monthly=2), tz=UTC)) == ["feb01", "jan31"]
    assert kept(apply_policy(snaps, Policy(monthly=10), tz=UTC)) == ["dec31", "feb01", "jan31"]
    assert kept(apply_policy(snaps, Policy(yearly=2), tz=UTC)) == ["dec31", "feb01"]


def test_buckets_are_taken_in_the_given_zone() -> None:
    snaps = [mk(at(2024, 3, 1, 23, 30), "late"), mk(at(2024, 3, 2, 0, 30), "early")]
    assert kept(apply_policy(snaps, Policy(daily=5), tz=UTC)) == ["early", "late"]
    plus2 = timezone(timedelta(hours=2))  # both on March 2nd there
    assert kept(apply_policy(snaps, Policy(daily=5), tz=plus2)) == ["early"]


def test_reasons_and_counters_follow_restic() -> None:
    # Observed from restic 0.14 (forget --keep-last 3 --keep-daily 2, two snapshots on one day).
    snaps = [mk(at(2024, 1, 1, 10), "old"), mk(at(2024, 1, 1, 11), "new")]
    decisions = apply_policy(snaps, Policy(last=3, daily=2), tz=UTC)
    assert [(d.snapshot.id, d.reasons, d.counters) for d in decisions] == [
        ("new", ["last snapshot", "daily snapshot"], {"last": 2, "daily": 1}),
        ("old", ["last snapshot"], {"last": 1, "daily": 1})]


def test_keep_tag_keeps_snapshots_with_all_the_tags() -> None:
    snaps = [mk(at(2024, 1, d), f"s{d}", tags=tags) for d, tags in
             ((1, ("a", "b")), (2, ("a",)), (3, ()), (4, ()))]
    decisions = apply_policy(snaps, Policy(last=1, tags=(("a", "b"),)), tz=UTC)
    assert kept(decisions) == ["s1", "s4"]
    assert next(d for d in decisions if d.snapshot.id == "s1").reasons == ["has tags [a, b]"]


def test_a_protected_snapshot_is_never_removed() -> None:
    snaps = [mk(at(2024, 1, 1) + timedelta(days=i), f"{i:02d}" + "ab" * 31) for i in range(6)]
    protected = [snaps[1].id[:10]]  # a prefix is enough
    decisions = apply_policy(snaps, Policy(last=1), protected, tz=UTC)
    assert kept(decisions) == sorted([snaps[1].id, snaps[5].id])
    assert next(d for d in decisions if d.snapshot.id == snaps[1].id).reasons == ["protected"]
    assert is_protected(snaps[1].id, protected) and not is_protected(snaps[2].id, protected)


def test_no_policy_is_refused() -> None:
    with pytest.raises(PermanentError, match="no retention policy"):
        plan([mk(at(2024, 1, 1), "s")], Policy())


def test_groups_by_host_and_paths() -> None:
    snaps = [mk(at(2024, 1, 1), "a1", host="a"), mk(at(2024, 1, 2), "a2", host="a"),
             mk(at(2024, 1, 3), "b1", host="b"), mk(at(2024, 1, 4), "a3", host="a", paths=("/q",))]
    groups = plan(snaps, Policy(last=1), tz=UTC)
    assert sorted(s.id for g in groups for s in g.keep) == ["a2", "a3", "b1"]
    assert sorted((g.host, tuple(g.paths or ())) for g in groups) == [
        ("a", ("/p",)), ("a", ("/q",)), ("b", ("/p",))]
    one = plan(snaps, Policy(last=1), group_by=(), tz=UTC)
    assert len(one) == 1 and [s.id for s in one[0].keep] == ["a3"]


# -- on a real repository ------------------------------------------------------------------
DAY = 86400 * 10**9
T0 = int(datetime(2024, 1, 1, 12, tzinfo=UTC).timestamp()) * 10**9


@pytest.fixture
def dated(tmp_path: Path):  # type: ignore[no-untyped-def]
    repo = new_repo(tmp_path)
    src = tmp_path / "src"
    ids = []
    for i in range(6):
        write_files(src, {f"f{i}.txt": f"file {i}\n".encode()})
        ids.append(snap(repo, src, time_ns=T0 + i * DAY))
    return repo, ids


def test_forget_deletes_snapshots_and_their_bitmaps_but_not_protected_ones(dated) -> None:  # type: ignore[no-untyped-def]
    repo, ids = dated
    repo.save_sidecar("protected", json.dumps([ids[0]]).encode())
    with repo.locked(exclusive=True):
        result = forget(repo, Policy(last=2))
    assert sorted(result.removed) == sorted(ids[1:4])
    assert file_names(repo, Kind.SNAPSHOTS) == {ids[0], ids[4], ids[5]}
    sidecars = set(repo.list_sidecar())
    assert f"bitmap-{ids[1]}" not in sidecars and f"bitmap-{ids[5]}" in sidecars


def test_dry_run_deletes_nothing(dated) -> None:  # type: ignore[no-untyped-def]
    repo, ids = dated
    result = forget(repo, Policy(last=1), dry_run=True)
    assert sorted(result.removed) == sorted(ids[:5]) and result.dry_run
    assert file_names(repo, Kind.SNAPSHOTS) == set(ids)


def test_an_unreadable_protection_list_stops_forget(dated) -> None:  # type: ignore[no-untyped-def]
    repo, ids = dated
    repo.save_sidecar("protected", b"{not a list")
    with pytest.raises(PermanentError, match="protection list"):
        forget(repo, Policy(last=1))
    assert file_names(repo, Kind.SNAPSHOTS) == set(ids)
    repo.backend.delete(Kind.SIDECAR, "protected")
    assert load_protected(repo) == []


@pytest.mark.restic
@pytest.mark.skipif(RESTIC is None, reason="restic is not installed")
@pytest.mark.parametrize("flags,policy", [
    (["--keep-last", "4"], Policy(last=4)),
    (["--keep-daily", "5"], Policy(daily=5)),
    (["--keep-weekly", "3"], Policy(weekly=3)),
    (["--keep-monthly", "3", "--keep-yearly", "2"], Policy(monthly=3, yearly=2)),
    (["--keep-last", "2", "--keep-hourly", "3", "--keep-weekly", "2"],
     Policy(last=2, hourly=3, weekly=2)),
])
def test_restic_keeps_the_same_snapshots(tmp_path: Path, flags: list[str], policy: Policy) -> None:
    repo = new_repo(tmp_path)
    src = tmp_path / "src"
    write_files(src, {"a": b"a"})
    hour = 3600 * 10**9
    offsets = [0, 1, 2, 26, 27, 50, 8 * 24, 9 * 24 + 5, 15 * 24, 40 * 24, 41 * 24,
               70 * 24, 400 * 24, 401 * 24 + 3]
    for off in offsets:
        snap(repo, src, time_ns=T0 + off * hour)
    groups = restic_json(repo, "forget", "--dry-run", *flags)
    assert isinstance(groups, list) and len(groups) == 1
    theirs = sorted(s["id"] for s in groups[0]["keep"] or [])
    ours = plan(reopen(repo).list_snapshots(), policy)
    assert len(ours) == 1
    assert sorted(s.id for s in ours[0].keep) == theirs
    their_reasons = {r["snapshot"]["time"]: (r["matches"], r["counters"]) for r in groups[0]["reasons"]}
    our_reasons = {d.snapshot.summary()["time"]: (d.reasons, d.counters)
                   for d in ours[0].decisions if d.keep}
    assert sorted(map(str, our_reasons.values())) == sorted(map(str, their_reasons.values()))
