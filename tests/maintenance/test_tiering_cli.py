"""``corestate tiering`` end to end: a repository built with the CLI, restores that
record which packs they read, and advice that follows those reads.

The clock: snapshots carry the real time of their backup (T0); restores run with
``CORESTATE_NOW`` set months later, so their reads are recorded then; ``tiering --now``
asks for advice later still. The scenario (one repository, built once):

- ``cold`` and ``hot`` are each backed up twice, so their data packs are shared by two
  snapshots: *pack objects*. ``solo`` and ``solo-read`` are backed up once: their data
  packs make *snapshot objects*.
- Advice is taken at T0 + 301 days before any restore, then ``hot/h.bin`` and
  ``solo-read`` are restored at T0 + 300 days, and advice is taken again at T0 + 301
  and T0 + 400 days.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from corestate.connectors.local import LocalBackend
from corestate.repository.backend import Kind, object_path
from corestate.repository.pack import BlobType
from corestate.repository.repository import Repository
from tests.conftest import PASSWORD, restored_root, run_corestate

DAY = 86400
GiB = 1024 ** 3


@dataclass
class Scenario:
    repo: Path
    src: Path
    t0: int
    snaps: dict[str, list[str]]  # directory name -> snapshot ids, oldest first
    before: dict[str, object]  # advice at T0 + 301 days, before any restore
    after: dict[str, object]  # at T0 + 301 days, a day after the restores
    later: dict[str, object]  # at T0 + 400 days
    restore_hot: str  # stdout of the partial restore


def tiering(repo: Path, *args: str, env: dict[str, str] | None = None) -> dict[str, object]:
    doc = json.loads(run_corestate("tiering", "--repo", str(repo), "--json", *args, env=env).stdout)
    assert isinstance(doc, dict)
    return doc


def advice_by_id(doc: dict[str, object]) -> dict[str, dict[str, object]]:
    entries = doc["advice"]
    assert isinstance(entries, list)
    return {a["id"]: a for a in entries}


def backup(repo: Path, path: Path) -> str:
    out = run_corestate("backup", str(path), "--repo", str(repo), "--json").stdout
    return str(json.loads(out.strip().splitlines()[-1])["snapshot_id"])


def pack_file_size(repo: Path, pack: str) -> int:
    return (repo / object_path(Kind.DATA, pack)).stat().st_size


def open_repo(repo: Path) -> Repository:
    r = Repository.open(LocalBackend(str(repo)), PASSWORD)
    r.load_index()
    return r


def data_packs_of(repo: Path, snap_id: str) -> set[str]:
    """The data packs holding the content of every file in a snapshot (from its trees)."""
    r = open_repo(repo)
    packs: set[str] = set()
    stack = [r.load_snapshot(snap_id).tree]
    while stack:
        for node in r.load_tree(stack.pop()):
            if node.type == "dir" and node.subtree is not None:
                stack.append(node.subtree)
            for blob in node.content or []:
                loc = r.index.lookup(blob)
                assert loc is not None
                packs.add(loc.pack)
    return packs


def access_logs(repo: Path) -> list[str]:
    return sorted(p.name for p in (repo / "corestate").iterdir() if p.name.startswith("access-"))


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    root = tmp_path_factory.mktemp("tiering")
    repo, src = root / "repo", root / "src"
    for name, files in {"cold": ["c.bin"], "hot": ["h.bin", "notes.bin"],
                        "solo": ["s.bin"], "solo-read": ["r.bin"]}.items():
        (src / name).mkdir(parents=True)
        for f in files:
            (src / name / f).write_bytes(os.urandom(1_500_000))
    t0 = int(time.time())
    run_corestate("init", "--repo", str(repo))
    snaps: dict[str, list[str]] = {}
    for name in ("cold", "hot", "solo", "solo-read", "cold", "hot"):
        snaps.setdefault(name, []).append(backup(repo, src / name))
    before = tiering(repo, "--now", str(t0 + 301 * DAY))
    at_300 = {"CORESTATE_NOW": str(t0 + 300 * DAY)}
    restore_hot = run_corestate("restore", snaps["hot"][1], "--repo", str(repo), "--target",
                                str(root / "out-hot"), "--include", "h.bin", env=at_300).stdout
    run_corestate("restore", snaps["solo-read"][0], "--repo", str(repo), "--target",
                  str(root / "out-solo"), env=at_300)
    after = tiering(repo, "--now", str(t0 + 301 * DAY))
    later = tiering(repo, "--now", str(t0 + 400 * DAY))
    return Scenario(repo, src, t0, snaps, before, after, later, restore_hot)


def objects(s: Scenario) -> dict[str, str]:
    """Object id per scenario directory: the shared data pack of cold and hot, the
    snapshot id of solo and solo-read."""
    out = {}
    for name in ("cold", "hot"):
        first, second = (data_packs_of(s.repo, sid) for sid in s.snaps[name])
        assert first == second and len(first) == 1, (name, first, second)
        out[name] = first.pop()
    out["solo"] = s.snaps["solo"][0]
    out["solo-read"] = s.snaps["solo-read"][0]
    return out


def test_advice_follows_recorded_reads(scenario: Scenario) -> None:
    ids = objects(scenario)
    before, after, later = (advice_by_id(d) for d in (scenario.before, scenario.after,
                                                      scenario.later))
    # before any restore, everything is 301 days old and never read: deep archive
    assert {k: before[v]["target"] for k, v in ids.items()} == dict.fromkeys(ids, "DEEP_ARCHIVE")
    assert before[ids["cold"]]["kind"] == "pack" and before[ids["solo"]]["kind"] == "snapshot"
    assert scenario.before["access_runs"] == 0 and scenario.after["access_runs"] == 2
    # a day after the restores, what they read stays put; the rest still goes
    assert ids["hot"] not in after and ids["solo-read"] not in after
    assert after[ids["cold"]]["target"] == after[ids["solo"]]["target"] == "DEEP_ARCHIVE"
    assert after[ids["cold"]]["last_read"] is None
    # 100 days after the reads: out of the 90-day window, but read within 180 days, so an
    # immediate class; never-read objects still go to deep archive
    assert later[ids["hot"]]["target"] == later[ids["solo-read"]]["target"] == "GLACIER_IR"
    assert later[ids["hot"]]["last_read"] == pytest.approx(scenario.t0 + 300 * DAY)
    assert later[ids["cold"]]["target"] == later[ids["solo"]]["target"] == "DEEP_ARCHIVE"
    per_byte = {k: later[ids[k]]["monthly_saving"] / later[ids[k]]["size"] for k in ids}
    assert per_byte["hot"] < per_byte["cold"] and per_byte["solo-read"] < per_byte["solo"]


def test_partial_restore_records_only_the_packs_it_read(scenario: Scenario) -> None:
    assert "restored snapshot" in scenario.restore_hot and "1 files" in scenario.restore_hot
    target = restored_root(scenario.repo.parent / "out-hot", scenario.src / "hot")
    assert (target / "h.bin").read_bytes() == (scenario.src / "hot" / "h.bin").read_bytes()
    assert not (target / "notes.bin").exists()
    logs = access_logs(scenario.repo)
    assert len(logs) == 2
    # the log is encrypted like every sidecar file: no pack id in the clear
    hot = objects(scenario)["hot"]
    assert all(hot.encode() not in (scenario.repo / "corestate" / n).read_bytes() for n in logs)
    r = open_repo(scenario.repo)
    runs = [r.load_sidecar(n).decode().splitlines() for n in logs]
    heads = [json.loads(lines[0]) for lines in runs]
    assert {h["command"] for h in heads} == {"restore"}
    assert {h["time"] for h in heads} == {scenario.t0 + 300 * DAY}
    read = {json.loads(line)["pack"] for lines in runs for line in lines[1:]}
    assert hot in read and objects(scenario)["cold"] not in read


def test_json_totals_and_sizes(scenario: Scenario) -> None:
    doc = scenario.later
    advice = advice_by_id(doc)
    assert len(advice) == 4
    savings = [float(a["monthly_saving"]) for a in advice.values()]
    assert all(s > 0 for s in savings)
    assert doc["total_monthly_saving"] == pytest.approx(sum(savings), rel=1e-12)
    assert doc["total_size"] == sum(int(a["size"]) for a in advice.values())
    by_target = doc["by_target"]
    assert isinstance(by_target, dict)
    assert sum(t["monthly_saving"] for t in by_target.values()) == pytest.approx(sum(savings))
    assert {k: v["objects"] for k, v in by_target.items()} == {"DEEP_ARCHIVE": 2, "GLACIER_IR": 2}
    for a in advice.values():
        # sizes are the stored pack files; the saving is the price difference on them
        assert a["size"] == sum(pack_file_size(scenario.repo, p) for p in a["packs"])
        assert a["current"] == "STANDARD" == doc["current_class"]
        price = {"DEEP_ARCHIVE": 0.023 - 0.00099, "GLACIER_IR": 0.023 - 0.004}[a["target"]]
        assert a["monthly_saving"] == pytest.approx(a["size"] / GiB * price)
        assert a["created"] >= scenario.t0


def test_tree_and_unused_packs_are_never_advised(scenario: Scenario) -> None:
    r = open_repo(scenario.repo)
    tree_packs = {p for p, e in r.index.packs.items() if e[0].type is BlobType.TREE}
    advised = {p for a in advice_by_id(scenario.later).values() for p in a["packs"]}
    assert tree_packs and not tree_packs & advised
    assert scenario.later["tree_packs"] == len(tree_packs)
    assert scenario.later["unused_packs"] == 0
    data = {p for p, e in r.index.packs.items() if e[0].type is BlobType.DATA}
    assert advised == data  # every data pack here is used, old and worth moving


def test_human_output(scenario: Scenario) -> None:
    wide = {"COLUMNS": "200"}
    out = run_corestate("tiering", "--repo", str(scenario.repo), "--now",
                        str(scenario.t0 + 400 * DAY), env=wide).stdout
    ids = objects(scenario)
    assert f"{ids['solo'][:8]}  snapshot" in out and f"{ids['cold'][:8]}  pack" in out
    assert out.count("STANDARD -> DEEP_ARCHIVE") == 2 and out.count("STANDARD -> GLACIER_IR") == 2
    assert "100d ago" in out and "never" in out
    assert "to DEEP_ARCHIVE: 2 objects" in out and "total: 4 objects" in out
    limited = run_corestate("tiering", "--repo", str(scenario.repo), "--now",
                            str(scenario.t0 + 400 * DAY), "--limit", "1", env=wide).stdout
    assert "... and 3 more" in limited and "total: 4 objects" in limited
    none = run_corestate("tiering", "--repo", str(scenario.repo)).stdout
    assert "no moves advised" in none  # everything is days old at the real time


def test_prices_and_min_saving(scenario: Scenario, tmp_path: Path) -> None:
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps([
        {"name": "HOT", "storage": 0.02, "retrieval": 0, "min_days": 0},
        {"name": "COOL", "storage": 0.01, "retrieval": 0, "min_days": 0},
    ]))
    doc = tiering(scenario.repo, "--prices", str(prices))
    advice = advice_by_id(doc)
    # no retrieval fee and no minimum: every candidate moves, even a day-old read one
    assert len(advice) == 4 and {a["target"] for a in advice.values()} == {"COOL"}
    assert doc["current_class"] == "HOT"
    for a in advice.values():
        assert a["monthly_saving"] == pytest.approx(a["size"] / GiB * 0.01)
    biggest = max(float(a["monthly_saving"]) for a in advice.values())
    high = tiering(scenario.repo, "--prices", str(prices), "--min-saving", str(biggest * 1.01))
    assert high["advice"] == [] and high["total_monthly_saving"] == 0
    prices.write_text(json.dumps([{"name": "HOT", "storage": -1, "retrieval": 0,
                                   "min_days": 0}]))
    bad = run_corestate("tiering", "--repo", str(scenario.repo), "--prices", str(prices),
                        check=False)
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines() == [
        f'corestate: error: --prices {prices}: class 1 (HOT): "storage" must be a number >= 0']
    when = run_corestate("tiering", "--repo", str(scenario.repo), "--now", "yesterday",
                         check=False)
    assert when.returncode == 1 and when.stderr.startswith("corestate: error: --now: cannot read")


def test_help_is_complete() -> None:
    out = run_corestate("tiering", "--help").stdout
    for option in ("--prices FILE", "--min-saving USD", "--now TIME", "--limit", "--json"):
        assert option in out
    assert "CORESTATE_NOW" in out and "total_monthly_saving" in out
    assert "tiering" in run_corestate("--help").stdout


@pytest.fixture
def small_repo(tmp_path: Path) -> tuple[Path, Path]:
    repo, src = tmp_path / "repo", tmp_path / "src"
    src.mkdir()
    (src / "f.bin").write_bytes(os.urandom(700_000))
    run_corestate("init", "--repo", str(repo))
    run_corestate("backup", str(src), "--repo", str(repo))
    return repo, src


def test_restore_succeeds_when_the_access_log_cannot_be_written(
        small_repo: tuple[Path, Path], tmp_path: Path) -> None:
    repo, src = small_repo
    sidecar = repo / "corestate"
    moved = tmp_path / "sidecar-away"
    shutil.move(sidecar, moved)
    sidecar.write_bytes(b"")  # a file where the directory was: every write fails
    try:
        proc = run_corestate("restore", "latest", "--repo", str(repo), "--target",
                             str(tmp_path / "out"))
    finally:
        sidecar.unlink()
        shutil.move(moved, sidecar)
    assert proc.returncode == 0
    assert "warning: could not record which packs were read" in proc.stderr
    restored = restored_root(tmp_path / "out", src) / "f.bin"
    assert restored.read_bytes() == (src / "f.bin").read_bytes()
    assert access_logs(repo) == []
    # the same restore with a writable sidecar records its run, without a warning
    ok = run_corestate("restore", "latest", "--repo", str(repo), "--target", str(tmp_path / "o2"))
    assert "warning" not in ok.stderr and len(access_logs(repo)) == 1


def test_check_read_data_counts_as_a_read_of_everything(small_repo: tuple[Path, Path]) -> None:
    repo, _ = small_repo
    now = str(int(time.time()) + 301 * DAY)
    assert len(tiering(repo, "--now", now)["advice"]) == 1
    run_corestate("check", "--repo", str(repo))  # no data read: nothing recorded
    assert access_logs(repo) == []
    run_corestate("check", "--read-data", "--repo", str(repo),
                  env={"CORESTATE_NOW": str(int(time.time()) + 300 * DAY)})
    assert len(access_logs(repo)) == 1
    doc = tiering(repo, "--now", now)
    assert doc["advice"] == [] and doc["access_runs"] == 1


def test_damaged_access_log_is_skipped_with_a_warning(small_repo: tuple[Path, Path]) -> None:
    repo, _ = small_repo
    (repo / "corestate" / "access-000000000001-deadbeef").write_bytes(b"not encrypted")
    proc = run_corestate("tiering", "--repo", str(repo), "--json", "--now",
                         str(int(time.time()) + 301 * DAY))
    assert "1 access log file(s) could not be read" in proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["unreadable_access_logs"] == 1 and len(doc["advice"]) == 1
