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


def test_a_file_whose_blobs_are_in_one_pack_is_opened_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file in one pack is created, written, truncated and given its metadata by the
    worker writing that pack, in one open (the restorer used to create it, the worker
    to open it again, the restorer a third time to finish it). A file in several packs
    still takes the long way. Run in this process (workers=0) so the opens are seen."""
    src, repo = backed_up(tmp_path)
    # a file in two packs: the chunks of "big" (stored) and a new tail (a new pack)
    (src / "grown").write_bytes((src / "big").read_bytes() + random.Random(3).randbytes(1 << 20))
    backup(repo, BackupOptions(paths=[str(src)], workers=0))
    repo = Repository.open(open_backend(str(tmp_path / "repo")), PASSWORD)
    repo.load_index()
    out = tmp_path / "out"
    opens: dict[bytes, int] = {}
    real_open = os.open

    def counting_open(path: bytes | str, flags: int, *args: int, **kw: object) -> int:
        if os.fsencode(path).startswith(os.fsencode(str(out))):
            opens[os.fsencode(path)] = opens.get(os.fsencode(path), 0) + 1
        return real_open(path, flags, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", counting_open)
    result = restore(repo, repo.find_snapshot("latest"), str(out), workers=0)
    monkeypatch.undo()
    assert result.errors == []
    back = out / str(src).lstrip("/")
    packs = {name: {repo.index.lookup(b).pack for b in _content(repo, src, name)}  # type: ignore[union-attr]
             for name in ("grown", "copy1")}
    assert len(packs["grown"]) > 1 and len(packs["copy1"]) == 1
    small = [p for p in src.rglob("f*") if p.is_file()]
    assert len(small) == 300
    for path in small:
        dest = back / path.relative_to(src)
        assert opens[os.fsencode(dest)] == 1, dest
        assert dest.read_bytes() == path.read_bytes()
        st, want = dest.stat(), path.stat()
        assert (st.st_mode, st.st_mtime_ns, st.st_uid) == (want.st_mode, want.st_mtime_ns, want.st_uid)
    assert opens[os.fsencode(back / "grown")] >= 3
    assert (back / "grown").read_bytes() == (src / "grown").read_bytes()
    assert (back / "sparse").stat().st_size == (src / "sparse").stat().st_size
    assert result.files == sum(1 for p in src.rglob("*") if p.is_file())


def test_a_damaged_blob_of_a_file_in_one_pack_costs_that_file_alone(
        tmp_path: Path, processes: None) -> None:
    """The worker that finishes files whole leaves a file with a damaged blob to the
    restorer (which tries every copy, then removes it and reports it) and finishes the
    other files of the same pack."""
    src, repo = backed_up(tmp_path)
    victim = src / "d3" / "f3"
    where = repo.index.lookup(_file_content(repo, src, victim)[0])
    assert where is not None
    path = Path(tmp_path / "repo" / "data" / where.pack[:2] / where.pack)
    data = bytearray(path.read_bytes())
    data[where.blob.offset + 20] ^= 0xFF
    path.chmod(0o600)
    path.write_bytes(bytes(data))
    neighbours = [p for p in src.rglob("f*") if p != victim
                  and repo.index.lookup(_file_content(repo, src, p)[0]).pack == where.pack]  # type: ignore[union-attr]
    assert neighbours, "other files share the damaged pack"
    out = tmp_path / "out"
    result = restore(repo, repo.find_snapshot("latest"), str(out), workers=2)
    back = out / str(src).lstrip("/")
    assert [Path(p).name for p, _ in result.errors] == ["f3"]
    assert not (back / "d3" / "f3").exists()
    for p in neighbours:
        dest = back / p.relative_to(src)
        assert dest.read_bytes() == p.read_bytes()
        assert dest.stat().st_mtime_ns == p.stat().st_mtime_ns


def _file_content(repo: Repository, src: Path, path: Path) -> list[bytes]:
    from corestate.repository.walk import find_node

    node = find_node(repo, repo.find_snapshot("latest").tree, os.fsencode(str(path)))
    assert node is not None
    return list(node.content or [])


def test_packs_go_to_the_workers_one_at_a_time_costliest_first(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pack of thousands of small files costs far more than a pack of a few big ones
    of the same bytes. Handed out four at a time, biggest bytes first, ten packs put
    eight (all the small files) on one worker and left the other nearly idle (measured:
    14 CPU-s against 0). Each worker now holds at most two packs, and the costliest go
    first."""
    from corestate.pipeline import workers as worker_module
    from corestate.repository.pack import BlobType, PackedBlob

    sent: list[tuple[int, list[str]]] = []

    class Recording(worker_module.InlineWorker):
        def __init__(self, index: int, job: object, replies: object, what: str) -> None:
            super().__init__(index, job, replies)  # type: ignore[arg-type]

        def send(self, batch: list[writer.PackJob]) -> None:
            sent.append((self.index, [job.pack for job in batch]))
            self._replies.put((self.index, [writer.PackDone(j.pack, 0, [], 0) for j in batch]))

    monkeypatch.setattr(writer, "WorkerProcess", Recording)
    plan = writer.Plan()
    files = [plan.add_file(os.fsencode(str(tmp_path / f"f{i}"))) for i in range(2001)]
    for i in range(2000):  # pack "small": 2,000 blobs of 4 KiB
        plan.place("small", PackedBlob(bytes([i % 256, i // 256]) + bytes(30), BlobType.DATA,
                                       i * 4096, 4096, 4000), files[i], 0)
    for n, pack in enumerate(("big1", "big2", "big3")):  # 12 MiB in one blob each
        plan.place(pack, PackedBlob(bytes([n + 1]) * 32, BlobType.DATA, 0, 12 << 20, 12 << 20),
                   files[2000], n * (12 << 20))
    written = writer.write(None, plan, workers=2)  # type: ignore[arg-type]
    assert written.failed == {}
    assert all(len(packs) == 1 for _, packs in sent)
    assert sent[0] == (0, ["small"])
    assert {i for i, _ in sent[:3]} == {0, 1}
    assert sorted(p for _, [p] in sent) == ["big1", "big2", "big3", "small"]
