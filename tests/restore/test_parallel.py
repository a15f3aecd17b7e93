"""Restore on every core: content written pack by pack by worker processes, each pack
read once, a damaged pack costing only the files that use it, blobs shared by several
files and holes — against a real repository."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from corestate.connectors.url import open_backend
from corestate.pipeline.backup import BackupOptions, backup
from corestate.repository.backend import Kind
from corestate.repository.repository import Repository
from corestate.restore import restore, writer
from tests.conftest import PASSWORD


@pytest.fixture
def processes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Worker processes even for these small trees."""
    monkeypatch.setattr(writer, "INLINE_BYTES", 0)
    monkeypatch.setattr(writer, "INLINE_FILES", 0)


def make_tree(src: Path) -> None:
    rng = random.Random(7)
    for i in range(300):
        d = src / f"d{i % 17}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i}").write_bytes(rng.randbytes(rng.randrange(1, 90_000)))
    (src / "big").write_bytes(rng.randbytes(6 << 20))  # several chunks, several packs
    (src / "copy1").write_bytes(b"same" * 5000)         # one blob, placed in two files
    (src / "copy2").write_bytes(b"same" * 5000)
    with open(src / "sparse", "wb") as f:               # data, a hole, data
        f.write(b"x" * 10)
        f.seek(40 << 20)
        f.write(b"y" * 10)


def backed_up(tmp_path: Path) -> tuple[Path, Repository]:
    src = tmp_path / "src"
    make_tree(src)
    repo = Repository.init(open_backend(str(tmp_path / "repo")), PASSWORD)
    backup(repo, BackupOptions(paths=[str(src)], workers=0))
    repo = Repository.open(open_backend(str(tmp_path / "repo")), PASSWORD)
    repo.load_index()
    return src, repo


def test_worker_processes_restore_every_file_reading_each_pack_once(
        tmp_path: Path, processes: None) -> None:
    src, repo = backed_up(tmp_path)
    out = tmp_path / "out"
    result = restore(repo, repo.find_snapshot("latest"), str(out), workers=2)
    assert result.errors == []
    back = out / str(src).lstrip("/")
    for path in src.rglob("*"):
        if path.is_file():
            assert (back / path.relative_to(src)).read_bytes() == path.read_bytes(), path
    sizes = {f.name: f.size for f in repo.backend.list(Kind.DATA)}
    data_packs = {loc.pack for blob in repo.index.blob_ids()
                  if (loc := repo.index.lookup(blob)) and loc.blob.type.value == "data"}
    assert set(result.pack_reads) == data_packs  # every data pack, and tree packs not here
    for pack, read in result.pack_reads.items():
        assert read <= sizes[pack], f"pack {pack[:12]} read more than once"
    assert os.stat(back / "sparse").st_blocks * 512 < 1 << 20  # the hole stayed a hole


def test_a_damaged_pack_costs_only_the_files_in_it(tmp_path: Path, processes: None) -> None:
    src, repo = backed_up(tmp_path)
    where = repo.index.lookup(_content(repo, src, "big")[0])
    assert where is not None
    damaged = where.pack
    path = Path(tmp_path / "repo" / "data" / damaged[:2] / damaged)
    data = bytearray(path.read_bytes())
    data[where.blob.offset + 40] ^= 0xFF  # flip a bit inside one blob of "big"
    path.chmod(0o600)
    path.write_bytes(bytes(data))
    out = tmp_path / "out"
    result = restore(repo, repo.find_snapshot("latest"), str(out), workers=2)
    back = out / str(src).lstrip("/")
    failed = {Path(p).name for p, _ in result.errors}
    assert "big" in failed and not (back / "big").exists()  # reported and removed
    for file in src.rglob("*"):
        if file.is_file() and file.name not in failed:
            assert (back / file.relative_to(src)).read_bytes() == file.read_bytes()
    assert any("MAC" in why or "match" in why for _, why in result.errors)


def _dir_tree(repo: Repository, src: Path) -> bytes:
    snap = repo.find_snapshot("latest")
    from corestate.repository.walk import find_node

    node = find_node(repo, snap.tree, os.fsencode(str(src)))
    assert node is not None and node.subtree is not None
    return node.subtree


def _content(repo: Repository, src: Path, name: str) -> list[bytes]:
    for node in repo.load_tree(_dir_tree(repo, src)):
        if node.name == name.encode():
            return list(node.content or [])
    raise AssertionError(name)
