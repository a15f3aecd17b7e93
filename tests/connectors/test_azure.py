"""The Azure Blob backend on Azurite (started by deploy/storage/azurite.sh): the shared
contract, plus block uploads of big blobs, container creation, and credential errors."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from corestate.connectors.azure import AzureBackend
from corestate.connectors.url import open_backend, parse_location
from corestate.errors import PermanentError
from corestate.repository.backend import Backend, Kind
from tests.connectors.contract import BackendContract, content_name
from tests.storage_servers import AZURITE_KEY, StorageServer

MiB = 1 << 20


@pytest.fixture
def azure(azure_server: StorageServer, monkeypatch: pytest.MonkeyPatch) -> StorageServer:
    for name in ("AZURE_ACCOUNT_NAME", "AZURE_ACCOUNT_KEY", "AZURE_ACCOUNT_SAS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in azure_server.env().items():
        monkeypatch.setenv(name, value)
    return azure_server


class TestAzureBackend(BackendContract):
    listing_page = 5_000

    @pytest.fixture(autouse=True)
    def _server(self, azure: StorageServer) -> None:
        self.server = azure

    def make_backend(self, root: Path) -> Backend:
        return AzureBackend(parse_location(self.server.url(self.server.bucket())))


def test_big_blobs_go_up_in_blocks(azure: StorageServer) -> None:
    backend = AzureBackend(parse_location(azure.url(azure.bucket(), "repo")),
                           max_single_put_size=4 * MiB, max_block_size=4 * MiB)
    backend.create()
    data = random.Random(7).randbytes(9 * MiB + 1)
    name = content_name(data)
    backend.write(Kind.DATA, name, data)
    blob = backend.store.container.get_blob_client(backend.key(Kind.DATA, name))  # type: ignore[attr-defined]
    blocks = blob.get_block_list("committed")[0]
    assert len(blocks) == 3  # committed from three staged blocks, in one Put Block List
    assert backend.read(Kind.DATA, name) == data
    assert backend.read(Kind.DATA, name, 8 * MiB, 10) == data[8 * MiB:8 * MiB + 10]


def test_the_account_comes_from_name_and_key(azure: StorageServer,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # Azurite's account through the name/key variables; the suffix cannot point at
    # 127.0.0.1, so this shows the error names the location and hides the key.
    monkeypatch.delenv("AZURE_CONNECTION_STRING")
    with pytest.raises(PermanentError, match="AZURE_CONNECTION_STRING, or AZURE_ACCOUNT_NAME"):
        open_backend("azure:photos:/repo")


def test_a_wrong_key_stops_at_once_without_showing_it(azure: StorageServer,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    wrong = "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXktd3Jvbmcta2V5LXdyb25nLWtleQ=="
    monkeypatch.setenv("AZURE_CONNECTION_STRING",
                       azure.env()["AZURE_CONNECTION_STRING"].replace(
                           azure.env()["AZURE_CONNECTION_STRING"].split("AccountKey=")[1].split(";")[0],
                           wrong))
    sleeps: list[float] = []
    backend = open_backend(azure.url(azure.bucket()))
    backend.inner.inner._sleep = sleeps.append  # type: ignore[attr-defined]
    with pytest.raises(PermanentError) as raised:
        backend.create()
    message = str(raised.value)
    assert "403" in message and "azure:" in message
    assert wrong not in message
    assert sleeps == []


def test_a_sas_token_in_a_connection_string_works(azure: StorageServer,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from datetime import datetime, timedelta, timezone

    from azure.storage.blob import AccountSasPermissions, ResourceTypes, generate_account_sas

    sas = generate_account_sas("devstoreaccount1", AZURITE_KEY,
                               ResourceTypes(service=True, container=True, object=True),
                               AccountSasPermissions(read=True, write=True, delete=True, list=True,
                                                     create=True),
                               expiry=datetime.now(timezone.utc) + timedelta(hours=1))
    monkeypatch.setenv("AZURE_CONNECTION_STRING",
                       f"BlobEndpoint={azure.endpoint}/devstoreaccount1;SharedAccessSignature={sas}")
    backend = open_backend(azure.url(azure.bucket(), "repo"))
    backend.create()
    backend.write(Kind.INDEX, "ab" * 32, b"index")
    assert backend.read(Kind.INDEX, "ab" * 32) == b"index"
    with pytest.raises(PermanentError) as raised:
        backend.read(Kind.CONFIG, "")  # not there: the message names it, not the token
    assert sas.split("sig=")[1][:20] not in str(raised.value)
