"""The GCS backend on fake-gcs-server (started by deploy/storage/gcs.sh): the shared
contract, plus resumable uploads of big objects and bucket creation."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from corestate.connectors.gcs import GCSBackend
from corestate.connectors.url import open_backend, parse_location
from corestate.errors import PermanentError
from corestate.repository.backend import Backend, Kind
from tests.connectors.contract import BackendContract, content_name
from tests.storage_servers import StorageServer

MiB = 1 << 20


@pytest.fixture
def gcs(gcs_server: StorageServer, monkeypatch: pytest.MonkeyPatch) -> StorageServer:
    for name, value in gcs_server.env().items():
        monkeypatch.setenv(name, value)
    return gcs_server


class TestGCSBackend(BackendContract):
    @pytest.fixture(autouse=True)
    def _server(self, gcs: StorageServer) -> None:
        self.server = gcs

    def make_backend(self, root: Path) -> Backend:
        return GCSBackend(parse_location(self.server.url(self.server.bucket())))


def test_big_objects_go_up_in_resumable_chunks(gcs: StorageServer) -> None:
    backend = GCSBackend(parse_location(gcs.url(gcs.bucket(), "repo")), chunk_size=4 * MiB)
    backend.create()
    data = random.Random(9).randbytes(10 * MiB + 5)
    name = content_name(data)
    backend.write(Kind.DATA, name, data)
    assert backend.stat(Kind.DATA, name).size == len(data)
    assert backend.read(Kind.DATA, name) == data
    assert backend.read(Kind.DATA, name, 9 * MiB, MiB) == data[9 * MiB:10 * MiB]


def test_without_emulator_or_credentials_the_error_says_what_to_set(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    with pytest.raises(PermanentError, match="GOOGLE_APPLICATION_CREDENTIALS"):
        open_backend("gs:bucket:/repo")
