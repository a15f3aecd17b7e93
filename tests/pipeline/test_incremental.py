"""Watcher-driven backups: only dirty directories are read; everything else comes
from the parent snapshot, and the result is the same as a full scan."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from corestate.connectors.local import LocalBackend
from corestate.maintenance.usage import tree_blob_ids
from corestate.repository import ordinals
from corestate.pipeline.backup import BackupCache, BackupOptions, backup
from corestate.repository.repository import Repository
from corestate.repository.tree import Node
from tests.conftest import PASSWORD, restored_root, run_restic, tree_manifest


def _tree(root: Path) -> Path:
    for d in ("a/x", "a/y", "b", "c/deep/er"):
        (root / d).mkdir(parents=True)
    for i, d in enumerate(("a/x", "a/y", "b", "c/deep/er")):
        for j in range(5):
            (root / d / f"f{j}").write_text(f"{d} {j} " * (100 * (i + 1)))
    return root


def _backed_up(tmp_path: Path):  # type: ignore[no-untyped-def]
    """The test tree, a repository, and a first backup of one into the other with a
    cache carried to the next backups."""
    src = _tree(tmp_path / "src")
    repo = Repository.init(LocalBackend(str(tmp_path / "repo")), "correct horse battery staple")
    cache = BackupCache()
    return src, repo, cache, backup(repo, BackupOptions(paths=[str(src)]), cache=cache)


@pytest.mark.restic
def test_dirty_directories_only(tmp_path):
    src, repo, cache, first = _backed_up(tmp_path)
    assert first.total_files_processed == 20
    # change one file in a/y, add one in b, remove one in c/deep/er
    (src / "a" / "y" / "f0").write_text("changed")
    (src / "b" / "new").write_text("new file")
    os.unlink(src / "c" / "deep" / "er" / "f4")
    # a change in a directory we do NOT declare dirty must be missed: proof that clean
    # subtrees are not read at all
    (src / "a" / "x" / "f1").write_text("not noticed")
    dirty = frozenset(os.fsencode(str(src / d)) for d in ("a/y", "b", "c/deep/er"))
    second = backup(repo, BackupOptions(paths=[str(src)], dirty_dirs=dirty), cache=cache)
    assert second.files_changed == 1 and second.files_new == 1
    # only the entries of dirty directories were looked at (5 + 6 + 4)
    assert second.total_files_processed == 15
    run_restic("-r", str(tmp_path / "repo"), "check", "--read-data")
    # the stored bitmap equals the one recomputed from the trees
    repo = Repository.open(LocalBackend(str(tmp_path / "repo")), "correct horse battery staple")
    repo.load_index()
    table = ordinals.load_table(repo)
    snap = repo.find_snapshot("latest")
    stored = ordinals.load_bitmap(repo, snap.id, table)
    walked = table.ordinals(tree_blob_ids(repo, snap.tree))
    assert stored == walked
    # a rescan subtree is read whole even though no dirty directory is in it
    third = backup(repo, BackupOptions(paths=[str(src)], dirty_dirs=frozenset(),
                                       rescan=frozenset({os.fsencode(str(src / "a"))})),
                   cache=cache)
    assert third.files_changed == 1  # a/x/f1 is noticed now
    target = tmp_path / "out"
    run_restic("-r", str(tmp_path / "repo"), "restore", "latest", "--target", str(target))
    assert tree_manifest(restored_root(target, src)) == tree_manifest(src)


def _node(repo: Repository, snapshot_id: str, rel: str):
    """The node of ``rel`` (below the root's path components) in a snapshot."""
    nodes = repo.load_tree(repo.load_snapshot(snapshot_id).tree)
    for part in rel.strip("/").split("/"):
        node = next(n for n in nodes if n.name == os.fsencode(part))
        if node.type == "dir":
            nodes = repo.load_tree(node.subtree)
    return node


@pytest.mark.restic
def test_a_dirty_directory_looks_only_at_its_named_entries(tmp_path):
    src, repo, cache, _ = _backed_up(tmp_path)
    y, b = src / "a" / "y", src / "b"
    (y / "f0").write_text("changed")
    (y / "new").write_text("new file")
    os.unlink(y / "f4")
    os.rename(y / "f3", y / "f3-renamed")
    # changed without an event naming it: missed, the proof that a dirty directory's
    # other entries are not looked at
    (y / "f1").write_text("not noticed")
    # a hard link made in b: f0's link count and ctime changed without an event
    os.link(b / "f0", b / "link")
    os.makedirs(src / "c" / "fresh" / "inner")  # created: listed whole, named or not
    (src / "c" / "fresh" / "inner" / "g").write_text("in a new directory")
    # a/x swapped for another directory, then one file in it written: what a/x holds now
    # was never named but f0, yet the parent has other entries of that name there
    os.rename(src / "a" / "x", src / "a" / "x-old")
    os.rename(src / "c" / "deep" / "er", src / "a" / "x")
    (src / "a" / "x" / "f0").write_text("written after the move")

    def p(rel: str) -> bytes:
        return os.fsencode(str(src / rel))

    named = frozenset(p(r) for r in ("a/y/f0", "a/y/new", "a/y/f4", "a/y/f3", "a/y/f3-renamed",
                                     "b/link", "c/fresh", "a/x", "a/x-old", "c/deep/er",
                                     "a/x/f0"))
    fresh = frozenset(p(r) for r in ("c/fresh", "a/x", "a/x-old"))
    dirty = frozenset(p(d) for d in ("a", "a/y", "b", "c", "c/fresh", "c/fresh/inner", "a/x",
                                     "a/x-old", "c/deep"))
    second = backup(repo, BackupOptions(paths=[str(src)], dirty_dirs=dirty, named=named,
                                        fresh=fresh), cache=cache)
    # changed: a/y/f0, b/f0 (its ctime moved: b is listed whole for the hard link) and
    # the 5 files of the new a/x (listed whole: the parent has files of their names);
    # new: a/y/new, a/y/f3-renamed, b/link, c/fresh/inner/g and the 5 files of a/x-old
    assert (second.files_changed, second.files_new) == (7, 9)
    assert second.total_files_processed == 3 + 6 + 1 + 10  # f1 to f3 of a/y not looked at
    assert _node(repo, second.snapshot_id, f"{src}/b/f0").links == 2
    assert _node(repo, second.snapshot_id, f"{src}/a/y/f1").size == len("a/y 1 " * 200)
    run_restic("-r", str(tmp_path / "repo"), "check", "--read-data")
    # without the names the directory is listed whole: f1 is noticed
    third = backup(repo, BackupOptions(paths=[str(src)], dirty_dirs=frozenset({p("a/y")})),
                   cache=cache)
    assert third.files_changed == 1
    target = tmp_path / "out"
    run_restic("-r", str(tmp_path / "repo"), "restore", "latest", "--target", str(target))
    assert tree_manifest(restored_root(target, src)) == tree_manifest(src)


def test_extended_attributes_are_read_again_only_when_ctime_moved(tmp_path, monkeypatch):
    """An entry whose ctime, inode and device are the parent's keeps the parent's xattrs
    without asking the kernel (setting or removing one changes ctime); a changed one is
    read again and the snapshot records the new attributes."""
    from corestate.pipeline import capture

    src = tmp_path / "src"
    src.mkdir()
    for name in ("kept", "changed", "plain"):
        (src / name).write_text(name)
    try:
        os.setxattr(src / "kept", "user.tag", b"one")
        os.setxattr(src / "changed", "user.tag", b"one")
    except OSError as exc:
        pytest.fail(f"this file system keeps no user xattrs ({exc}); tests need one that does")
    repo = Repository.init(LocalBackend(str(tmp_path / "repo")), "pw")
    backup(repo, BackupOptions(paths=[str(src)]))
    os.setxattr(src / "changed", "user.tag", b"two")  # content, size and mtime unchanged
    asked: list[bytes] = []
    real = capture._xattrs

    def counting(path: bytes) -> list[tuple[str, bytes]]:
        asked.append(os.path.basename(path))
        return real(path)

    monkeypatch.setattr(capture, "_xattrs", counting)
    second = backup(repo, BackupOptions(paths=[str(src)]))
    assert sorted(asked) == [b"changed"]  # of the entries, only the one whose ctime moved
    repo = Repository.open(LocalBackend(str(tmp_path / "repo")), "pw")
    repo.load_index()
    snap = repo.find_snapshot(second.snapshot_id)
    node = snap.tree
    for part in os.fsencode(str(src)).strip(b"/").split(b"/"):
        node = next(n for n in repo.load_tree(node) if n.name == part).subtree
    nodes = {n.name: n for n in repo.load_tree(node)}
    assert nodes[b"kept"].xattrs == [("user.tag", b"one")]
    assert nodes[b"changed"].xattrs == [("user.tag", b"two")]
    assert nodes[b"plain"].xattrs == []


def _count_tree_loads(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The ids of the trees the repository loads (and decodes) from now on."""
    loads: list[bytes] = []
    real = Repository.load_tree

    def counting(self: Repository, tree_id: bytes, damaged: bool = False):  # type: ignore[no-untyped-def]
        loads.append(tree_id)
        return real(self, tree_id, damaged)

    monkeypatch.setattr(Repository, "load_tree", counting)
    return loads


@pytest.mark.restic
def test_each_parent_tree_is_decoded_once_per_backup(tmp_path, monkeypatch):
    """The commit rebuilds the directories where something changed from the listings
    the scan decoded, instead of loading those parent trees a second time."""
    src = _tree(tmp_path / "src")
    repo = Repository.init(LocalBackend(str(tmp_path / "repo")), PASSWORD)
    backup(repo, BackupOptions(paths=[str(src)]))
    for d in ("a/x", "b", "c/deep/er"):
        (src / d / "f0").write_text("changed")
    loads = _count_tree_loads(monkeypatch)
    second = backup(repo, BackupOptions(paths=[str(src)]))
    assert second.files_changed == 3
    twice = {t.hex()[:12] for t in loads if loads.count(t) > 1}
    assert twice == set(), f"parent trees decoded twice: {sorted(twice)}"
    monkeypatch.undo()
    target = tmp_path / "out"
    run_restic("-r", str(tmp_path / "repo"), "restore", "latest", "--target", str(target))
    assert tree_manifest(restored_root(target, src)) == tree_manifest(src)


@pytest.mark.restic
def test_consecutive_backups_in_one_process_read_the_trees_just_built(tmp_path, monkeypatch):
    """protect's next snapshot scans the trees its last commit built: its carried
    listing cache holds them as nodes, which the scan hands to the commit for the
    directories that changed again, instead of loading and decoding them (at 1000
    changes/s nearly every directory is dirty, and decoding was 44% of protect's main
    process). Nothing is loaded from the repository by the backups of a carried cache,
    not even for a directory the run before left alone (kept for two runs); a rebuilt
    directory encodes only its changed entries afresh (the kept nodes keep their JSON);
    and the snapshots are what restic restores."""
    src = _tree(tmp_path / "src")
    repo = Repository.init(LocalBackend(str(tmp_path / "repo")), PASSWORD)
    cache = BackupCache()
    loads = _count_tree_loads(monkeypatch)
    encoded: list[bytes] = []
    to_json = Node.to_json

    def counting(node: Node) -> dict[str, object]:
        if node.stored_json is None:
            encoded.append(node.name)
        return to_json(node)

    monkeypatch.setattr(Node, "to_json", counting)
    try:
        backup(repo, BackupOptions(paths=[str(src)]), cache=cache)
        every = frozenset(os.fsencode(str(p)) for p in [src, *src.rglob("*")] if p.is_dir())
        for round_, changed in enumerate([("a/x", "b", "c/deep/er"), ("c/deep/er",), ("a/x",)]):
            for d in changed:
                (src / d / "f0").write_text(f"changed {round_}")
            loads.clear()
            encoded.clear()
            again = backup(repo, BackupOptions(paths=[str(src)], dirty_dirs=every), cache=cache)
            assert again.files_changed == len(changed)
            assert loads == [], f"{len(loads)} trees loaded and decoded again"
        # the last run encoded f0 and the directories from a/x up to the root (x in a, a
        # in src, and so on; each for its tree, and again as the cache keeps it), none of
        # their unchanged siblings
        fresh = [b"f0", *map(os.fsencode, (src / "a" / "x").parts[1:])]
        assert sorted(encoded) == sorted(fresh * 2), encoded
    finally:
        cache.close()
    monkeypatch.undo()
    one_off = _count_tree_loads(monkeypatch)
    backup(repo, BackupOptions(paths=[str(src)]))  # no cache carried: the trees are loaded
    assert one_off
    monkeypatch.undo()
    target = tmp_path / "out"
    run_restic("-r", str(tmp_path / "repo"), "restore", "latest", "--target", str(target))
    assert tree_manifest(restored_root(target, src)) == tree_manifest(src)
