"""Write-behind uploads: the wrapper passes the backend contract; a pack upload held up
by the store does not hold up the packer (so chunking goes on); and nothing written
after a pack (index, snapshot) reaches the store before the pack, or at all when the
pack failed."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from corestate.connectors.local import LocalBackend
from corestate.connectors.writebehind import WriteBehindBackend
from corestate.errors import PermanentError
from corestate.pipeline.packer import Packer
from corestate.repository.backend import Backend, Kind, WrappedBackend
from corestate.repository.pack import BlobType
from corestate.repository.repository import Repository
from tests.connectors.contract import BackendContract, content_name


class TestWriteBehindOverLocal(BackendContract):
    def make_backend(self, root: Path) -> Backend:
        return WriteBehindBackend(LocalBackend(root))


class GatedBackend(WrappedBackend):
    """A real backend whose pack writes wait until :attr:`gate` opens (a slow store), or
    fail with :attr:`fail_packs` (a store that refuses them)."""

    def __init__(self, inner: Backend) -> None:
        super().__init__(inner)
        self.gate = threading.Event()
        self.fail_packs: Exception | None = None
        self.waiting = 0

    def write(self, kind: Kind, name: str, data: bytes) -> None:
        if kind is Kind.DATA:
            if self.fail_packs is not None:
                raise self.fail_packs
            self.waiting += 1
            self.gate.wait(60)
        self.inner.write(kind, name, data)


@pytest.fixture
def gated(tmp_path: Path) -> GatedBackend:
    return GatedBackend(LocalBackend(tmp_path / "repo"))


def add_packs(packer: Packer, count: int, pack_size: int) -> threading.Thread:
    """A thread adding blobs worth ``count`` full packs, as the sealers of a backup do."""
    def run() -> None:
        for i in range(count):
            blob = (f"pack {i} ".encode() * pack_size)[:pack_size]
            packer.add_plain(bytes.fromhex(content_name(blob)), BlobType.DATA, blob)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_a_slow_pack_upload_does_not_hold_up_the_packer(gated: GatedBackend) -> None:
    repo = Repository.init(WriteBehindBackend(gated, uploads=4), "pw")
    packer = Packer(repo, target_size=64 * 1024, compress=False)
    adder = add_packs(packer, 5, 64 * 1024)
    adder.join(30)
    # Five packs were handed over while the store accepted none of them: four are in
    # flight, one waits in the packer's queue. One writer thread alone would have
    # stopped the adder at the third.
    assert not adder.is_alive()
    assert list(gated.inner.list(Kind.DATA)) == []
    gated.gate.set()
    packer.flush()
    packer.close()
    repo.flush_index()
    assert len(list(gated.inner.list(Kind.DATA))) == 5
    assert len(list(gated.inner.list(Kind.INDEX))) == 1


def test_the_index_reaches_the_store_only_after_its_packs(gated: GatedBackend) -> None:
    backend = WriteBehindBackend(gated)
    backend.create()
    backend.write(Kind.DATA, "ab" * 32, b"pack")  # accepted, held by the store
    index = threading.Thread(target=backend.write, args=(Kind.INDEX, "cd" * 32, b"index"))
    index.start()
    index.join(1)
    assert index.is_alive()  # waiting at the barrier
    assert list(gated.inner.list(Kind.INDEX)) == []
    gated.gate.set()
    index.join(30)
    assert [i.name for i in gated.inner.list(Kind.DATA)] == ["ab" * 32]
    assert [i.name for i in gated.inner.list(Kind.INDEX)] == ["cd" * 32]


def test_a_failed_pack_stops_every_later_write(gated: GatedBackend) -> None:
    backend = WriteBehindBackend(gated)
    backend.create()
    gated.fail_packs = PermanentError("access denied")
    backend.write(Kind.DATA, "ab" * 32, b"pack")  # accepted; fails in the background
    for _ in range(2):  # sticky: the caller counts that pack as stored
        with pytest.raises(PermanentError, match="access denied"):
            backend.write(Kind.INDEX, "cd" * 32, b"index naming the lost pack")
    with pytest.raises(PermanentError, match="access denied"):
        backend.write(Kind.DATA, "ef" * 32, b"another pack")
    assert list(gated.inner.list(Kind.INDEX)) == []
    with pytest.raises(PermanentError):
        backend.close()
