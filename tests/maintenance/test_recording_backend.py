"""The recording wrapper that feeds the access log passes the backend contract, and
counts exactly the bytes read from each pack."""

from __future__ import annotations

from pathlib import Path

from corestate.connectors.local import LocalBackend
from corestate.maintenance.tiering import RecordingBackend
from corestate.repository.backend import Backend, Kind
from tests.connectors.contract import BackendContract


class TestRecordingOverLocal(BackendContract):
    def make_backend(self, root: Path) -> Backend:
        return RecordingBackend(LocalBackend(root))


def test_pack_reads_are_counted(tmp_path: Path) -> None:
    backend = RecordingBackend(LocalBackend(tmp_path / "repo"))
    backend.create()
    backend.write(Kind.DATA, "ab" * 32, b"0123456789")
    backend.write(Kind.INDEX, "cd" * 32, b"index")
    backend.read(Kind.DATA, "ab" * 32, 2, 3)
    backend.read(Kind.DATA, "ab" * 32, 8, 100)
    backend.read(Kind.INDEX, "cd" * 32)
    assert backend.reads == {"ab" * 32: 5}
