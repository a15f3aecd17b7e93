"""The listing cache: a backup reads the parent's trees from this host's cache where it
has them, and what it writes is the same as without the cache; a cache that cannot be
used costs only loading the trees."""

from __future__ import annotations

import marshal
import os
import stat
from dataclasses import replace
from pathlib import Path

import pytest

from corestate.connectors.local import LocalBackend
from corestate.pipeline.backup import BackupCache, BackupOptions, backup
from corestate.pipeline.listings import ListingCache, cache_file
from corestate.repository.crypto import Key
from corestate.repository.repository import Repository
from tests.conftest import PASSWORD, restored_root, run_restic, tree_manifest
from tests.pipeline.test_incremental import _count_tree_loads, _tree


def _setup(tmp_path: Path) -> tuple[Path, Repository, BackupOptions]:
    src = _tree(tmp_path / "src")
    repo = Repository.init(LocalBackend(str(tmp_path / "repo")), PASSWORD)
    return src, repo, BackupOptions(paths=[str(src)], listings=str(tmp_path / "listings"))


def _chain(repo: Repository, src: Path) -> list[bytes]:
    """The trees of the latest snapshot from its root down to ``src``'s."""
    chain = [repo.find_snapshot("latest").tree]
    for part in src.parts[1:]:
        chain.append(next(n for n in repo.load_tree(chain[-1])
                          if n.name == os.fsencode(part)).subtree)
    return chain


def _above(repo: Repository, src: Path) -> set[bytes]:
    """The trees of the directories above ``src`` (the root and the virtual directories
    on the way), which every commit assembles afresh."""
    return set(_chain(repo, src)[:-1])


def _restic_restores(tmp_path: Path, src: Path, name: str) -> None:
    target = tmp_path / name
    run_restic("-r", str(tmp_path / "repo"), "restore", "latest", "--target", str(target))
    assert tree_manifest(restored_root(target, src)) == tree_manifest(src)


@pytest.mark.restic
def test_a_re_backup_reads_the_parent_trees_from_the_cache(tmp_path, monkeypatch):
    """The first backup leaves its trees' listings in the cache file; an unchanged
    re-backup then loads no tree of the source (only the few above it, which every
    commit assembles), and one after changes loads only the trees of the directories
    the commit rebuilds; restic restores each snapshot as the disk is."""
    src, repo, opts = _setup(tmp_path)
    name = b"a-file-name-no-ciphertext-holds-by-chance"
    (src / os.fsdecode(name)).write_text("x")
    backup(repo, opts)
    above = _above(repo, src)
    path = cache_file(opts.listings or "", opts.hostname, [str(src)])
    assert os.path.exists(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert name not in Path(path).read_bytes()  # names are encrypted
    listing = ListingCache.load(repo.key, path).get(_chain(repo, src)[-1]) or []
    assert any(e.name == name for e in listing)
    loads = _count_tree_loads(monkeypatch)
    same = backup(repo, opts)
    assert same.files_unmodified == 21 and same.files_changed == 0
    assert loads and set(loads) <= above, "trees of the source loaded by an unchanged run"
    (src / "b" / "f1").write_text("changed")
    (src / "c" / "deep" / "er" / "new").write_text("new")
    above = _above(repo, src)
    loads.clear()
    changed = backup(repo, opts)
    assert (changed.files_changed, changed.files_new) == (1, 1)
    # the rebuilt directories only: b, c/deep/er, c/deep, c, the source, and above it
    assert len(set(loads) - above) == 5, loads
    monkeypatch.undo()
    _restic_restores(tmp_path, src, "out1")
    # the cache now holds the new trees: the next unchanged run loads nothing again
    above = _above(repo, src)
    loads = _count_tree_loads(monkeypatch)
    backup(repo, opts)
    assert set(loads) <= above
    monkeypatch.undo()
    run_restic("-r", str(tmp_path / "repo"), "check", "--read-data")


@pytest.mark.restic
@pytest.mark.parametrize("damage", ["truncated", "garbage", "flipped", "other key", "directory"])
def test_a_cache_that_cannot_be_used_only_costs_loading_the_trees(tmp_path, monkeypatch, damage):
    """A cache file cut short, overwritten, with a flipped bit, written with another
    repository's key, or a directory in its place: the backup loads the trees instead,
    captures exactly what changed, and writes a usable cache again where it can."""
    src, repo, opts = _setup(tmp_path)
    backup(repo, opts)
    path = Path(cache_file(opts.listings or "", opts.hostname, [str(src)]))
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(os.urandom(len(data)))
    elif damage == "flipped":
        path.write_bytes(data[:-40] + bytes([data[-40] ^ 1]) + data[-39:])
    elif damage == "other key":
        other = ListingCache.load(repo.key, str(path))
        stranger = ListingCache(Key.random(), str(path))
        stranger._listings, stranger.changed = other._listings, True
        stranger.save()
    else:
        path.unlink()
        path.mkdir()
    assert not ListingCache.load(repo.key, str(path)).loaded
    (src / "a" / "x" / "f2").write_text("changed")
    loads = _count_tree_loads(monkeypatch)
    summary = backup(repo, opts)
    assert summary.files_changed == 1 and summary.files_unmodified == 19
    assert len(loads) >= 7  # every directory's tree, from the repository
    monkeypatch.undo()
    _restic_restores(tmp_path, src, "out")
    if damage != "directory":  # written again: the next run reads it
        assert ListingCache.load(repo.key, str(path)).loaded


def test_a_listing_of_another_format_is_dropped(tmp_path):
    """An entry of the cache that is not a listing (an older format under the same
    key) is dropped, so the scan loads its tree: never an error."""
    key = Key.random()
    cache = ListingCache(key, str(tmp_path / "c"))
    cache._listings[b"t" * 32] = b"\x00not marshal"
    cache._listings[b"u" * 32] = marshal.dumps((("too", "short"),))
    assert cache.get(b"t" * 32) is None
    assert cache.get(b"u" * 32) is None
    assert len(cache) == 0


@pytest.mark.restic
def test_a_carried_cache_writes_the_listings_a_later_backup_reads(tmp_path, monkeypatch):
    """protect's cache keeps the nodes its commits build in memory and writes them as
    listings after its first run; a later one-off backup reads them from the file."""
    src, repo, opts = _setup(tmp_path)
    cache = BackupCache()
    try:
        backup(repo, opts, cache=cache)  # the catch-up: written
        assert cache.listings is not None and cache.listings.keep_nodes
        (src / "b" / "f3").write_text("changed")
        every = frozenset(os.fsencode(str(p)) for p in [src, *src.rglob("*")] if p.is_dir())
        loads = _count_tree_loads(monkeypatch)
        again = backup(repo, replace(opts, dirty_dirs=every), cache=cache)
        assert again.files_changed == 1 and loads == []  # nodes in hand, nothing decoded
        monkeypatch.undo()
    finally:
        cache.close()
    path = cache_file(opts.listings or "", opts.hostname, [str(src)])
    assert ListingCache.load(repo.key, path).loaded
    (src / "b" / "f3").write_text("changed again")  # b's listing on file is the first one's
    above = _above(repo, src)
    loads = _count_tree_loads(monkeypatch)
    summary = backup(repo, opts)
    assert summary.files_changed == 1
    # from the file: only b, the source and above them loaded (to rebuild them)
    assert len(set(loads) - above) <= 2, loads
    monkeypatch.undo()
    _restic_restores(tmp_path, src, "out")
