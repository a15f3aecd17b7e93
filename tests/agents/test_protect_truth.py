"""`corestate protect` snapshots equal the disk, and come only with a change (issue 9).

- Its latest snapshot removed under it (``forget ID --prune``, or ``forget --keep-tag
  daily --prune`` that drops it): the next snapshot must not reuse the subtrees of an
  older parent as if the watcher's changes were relative to it.
- No snapshot without a change: neither from its own reads (a reflink clone, or the
  probe for one, is a file event in the watched directory) nor from an event that
  changed nothing.
"""

from __future__ import annotations

import os
import threading
import time

import pytest

from tests.agents.test_protect import Protect
from tests.conftest import restored_root, run_corestate, tree_manifest
from tests.kernel.test_reflink import xfs  # noqa: F401  (a loop-mounted XFS: reflinks)


def _latest_matches(repo, src, out) -> bool:
    run_corestate("restore", "latest", "--target", str(out), "--repo", str(repo))
    return tree_manifest(restored_root(out, src)) == tree_manifest(src)


@pytest.mark.parametrize("how", ["forget-id", "keep-tag"])
def test_latest_snapshot_pruned_under_protect_is_not_a_stale_parent(tmp_path, how):
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "b").mkdir()
    (src / "a" / "f").write_text("v1\n")
    (src / "b" / "g").write_text("g1\n")
    repo = tmp_path / "repo"
    run_corestate("init", "--repo", str(repo))
    if how == "keep-tag":  # a tagged snapshot of the same paths: the one left after forget
        run_corestate("backup", str(src), "--tag", "daily", "--repo", str(repo))
    p = Protect(repo, src, "--interval", "0.3")
    try:
        p.wait_points(1)
        time.sleep(0.3)
        (src / "a" / "f").write_text("v2\n")
        latest = p.wait_points(2)[-1]["snapshot_id"]
        if how == "forget-id":
            run_corestate("forget", latest, "--prune", "--repo", str(repo))
        else:
            run_corestate("forget", "--keep-tag", "daily", "--prune", "--repo", str(repo))
        # what is left of `a` says v1; the disk says v2
        (src / "b" / "g").write_text("g2\n")  # a change elsewhere triggers the next one
        point = p.wait_points(3)[-1]
        assert _latest_matches(repo, src, tmp_path / "out"), "latest is not the disk"
        assert point["full_scan"], "a vanished parent needs a full walk"
        # and protection goes on incrementally from there
        (src / "a" / "f").write_text("v3\n")
        point = p.wait_points(4)[-1]
        assert not point["full_scan"]
        assert _latest_matches(repo, src, tmp_path / "out2")
    finally:
        assert p.stop() == 0, p.stderr


def _quiet_for(p: Protect, seconds: float) -> list[dict]:
    """The snapshot lines protect printed during ``seconds`` (it is stopped after)."""
    time.sleep(seconds)
    p.stop()
    return p.points


def test_no_extra_snapshot_after_a_catch_up_that_found_changes(tmp_path):
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    for i in range(5):
        (src / "a" / f"f{i}").write_text(f"v1 {i}\n")
    repo = tmp_path / "repo"
    run_corestate("init", "--repo", str(repo))
    run_corestate("backup", str(src), "--repo", str(repo))
    (src / "a" / "f3").write_text("changed while nobody watched\n")
    p = Protect(repo, src, "--interval", "0.5")
    p.wait_points(1)
    points = _quiet_for(p, 4)
    assert len(points) == 1, f"snapshots without a change: {points[1:]}"
    assert points[0]["files_changed"] == 1


def test_no_extra_snapshot_after_reads_through_reflink_clones(xfs):  # noqa: F811
    """On XFS every read makes a clone file in the file's directory."""
    base = xfs / f"protect-{os.getpid()}"
    src = base / "src"
    src.mkdir(parents=True)
    (src / "f").write_text("v1\n")
    repo = base / "repo"
    run_corestate("init", "--repo", str(repo))
    p = Protect(repo, src, "--interval", "0.5")
    try:
        p.wait_points(1)
        time.sleep(0.5)
        (src / "f").write_text("v2\n")
        p.wait_points(2)
    except BaseException:
        p.stop()
        raise
    points = _quiet_for(p, 4)
    assert len(points) == 2, f"snapshots without a change: {points[2:]}"


def test_no_snapshot_for_an_event_that_changed_nothing(tmp_path):
    """A file opened for writing and closed unchanged is an event, not a change."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("same\n")
    repo = tmp_path / "repo"
    run_corestate("init", "--repo", str(repo))
    p = Protect(repo, src, "--interval", "0.5")
    try:
        p.wait_points(1)
        time.sleep(0.5)
        os.close(os.open(src / "f", os.O_WRONLY))  # close_write, nothing written
    except BaseException:
        p.stop()
        raise
    points = _quiet_for(p, 4)
    assert len(points) == 1, f"snapshots without a change: {points[1:]}"


def test_own_reads_cause_no_backup_run(tmp_path, monkeypatch):
    """Not only no snapshot: no run at all. The catch-up reads the changed file, which
    probes for reflinks with a temporary file in its directory (an event)."""
    from corestate.agents import protect as protect_mod
    from corestate.agents.protect import Protector, ProtectOptions
    from corestate.connectors.local import LocalBackend
    from corestate.kernel import reflink
    from corestate.repository.repository import Repository

    reflink.reset_cache()  # probe again, as a fresh process does
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("v1\n")
    repo = Repository.init(LocalBackend(str(tmp_path / "repo")), "pw")
    runs = []
    real = protect_mod.backup

    def counting(*args, **kwargs):
        runs.append(time.monotonic())
        return real(*args, **kwargs)

    monkeypatch.setattr(protect_mod, "backup", counting)
    batches = []
    p = Protector(repo, ProtectOptions(paths=[str(src)], interval=0.3),
                  on_batch=batches.append)
    t = threading.Thread(target=p.run)
    t.start()
    try:
        time.sleep(3)
    finally:
        p.stop()
        t.join(30)
    assert len(runs) == 1, f"{len(runs)} runs; events: {[b.kinds for b in batches]}"
