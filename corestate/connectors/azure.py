"""Azure Blob Storage through ``azure-storage-blob`` (``pip install 'corestate[azure]'``).

Terms:

- the *container* of ``azure:CONTAINER:/PREFIX`` is the repository's root; the storage
  *account* comes from the environment, as restic reads it:
  ``AZURE_CONNECTION_STRING`` (a full connection string; its ``BlobEndpoint`` is the
  endpoint override for Azurite and other emulators), else ``AZURE_ACCOUNT_NAME`` with
  ``AZURE_ACCOUNT_KEY`` or ``AZURE_ACCOUNT_SAS`` (a SAS token), reached at
  ``https://<account>.blob.<AZURE_ENDPOINT_SUFFIX>`` (default ``core.windows.net``).
  Keys and tokens go to the client only, never into a message;
- an upload up to :data:`SINGLE_PUT` is one Put Blob; a bigger one is staged in blocks
  of :data:`BLOCK_SIZE`, :data:`PARALLEL_BLOCKS` at a time, and committed by one Put
  Block List: the blob appears whole or not at all;
- 408/429/5xx answers and connection failures are retryable (the SDK's own retries are
  off, :class:`~corestate.connectors.retry.RetryBackend` backs off and logs); 401/403 and
  a missing container are permanent. Object Lock (``--immutable``) is S3's: Azure's
  immutability policies are set on the container by its owner, not per upload here.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any, NoReturn

from corestate.connectors.objectstore import (ObjectStoreBackend, Retention, WithoutLocks,
                                             missing_extra)
from corestate.connectors.url import Location
from corestate.errors import CoreStateError, NotFoundError, PermanentError, RetryableError

MiB = 1 << 20
SINGLE_PUT = 64 * MiB
BLOCK_SIZE = 16 * MiB
PARALLEL_BLOCKS = 4
_RETRYABLE_STATUS = {408, 429, 500, 502, 503, 504}


def _container(loc: Location, **options: Any) -> Any:
    try:
        from azure.storage.blob import ContainerClient
    except ModuleNotFoundError:
        raise missing_extra("Azure Blob", "azure") from None
    env = os.environ
    settings: dict[str, Any] = {"retry_total": 0, "max_single_put_size": SINGLE_PUT,
                                "max_block_size": BLOCK_SIZE, "connection_timeout": 10,
                                "read_timeout": 120, **options}
    if env.get("AZURE_CONNECTION_STRING"):
        try:
            return ContainerClient.from_connection_string(env["AZURE_CONNECTION_STRING"],
                                                          loc.bucket, **settings)
        except ValueError:
            raise PermanentError("AZURE_CONNECTION_STRING is not a valid connection string") from None
    account = env.get("AZURE_ACCOUNT_NAME")
    credential: Any = None
    if env.get("AZURE_ACCOUNT_KEY"):
        credential = {"account_name": account, "account_key": env["AZURE_ACCOUNT_KEY"]}
    elif env.get("AZURE_ACCOUNT_SAS"):
        credential = env["AZURE_ACCOUNT_SAS"].lstrip("?")
    if not account or credential is None:
        raise PermanentError(
            f"no Azure credentials for {loc}: set AZURE_CONNECTION_STRING, or AZURE_ACCOUNT_NAME "
            "with AZURE_ACCOUNT_KEY or AZURE_ACCOUNT_SAS")
    suffix = env.get("AZURE_ENDPOINT_SUFFIX") or "core.windows.net"
    return ContainerClient(f"https://{account}.blob.{suffix}", loc.bucket, credential=credential,
                           **settings)


class AzureStore(WithoutLocks):
    """The :class:`~corestate.connectors.objectstore.Store` of one Azure container."""

    def __init__(self, loc: Location, **options: Any) -> None:
        self.loc = loc
        self.container = _container(loc, **options)

    def _fail(self, exc: BaseException, action: str, key: str | None = None) -> NoReturn:
        raise translate(exc, action, self.loc.where(key)) from None

    def bucket_exists(self) -> bool:
        try:
            return bool(self.container.exists())
        except Exception as exc:
            self._fail(exc, "checking the container at")

    def create_bucket(self, object_lock: bool) -> None:
        if object_lock:
            raise PermanentError(f"{self.loc}: --immutable (S3 Object Lock) is not available on "
                                 "Azure; set a time-based immutability policy on the container")
        from azure.core.exceptions import ResourceExistsError

        try:
            self.container.create_container()
        except ResourceExistsError:
            return
        except Exception as exc:
            if getattr(exc, "status_code", None) == 403:
                raise PermanentError(
                    f"container {self.loc.bucket} does not exist and these credentials may not "
                    "create it (403): create it, or use credentials allowed to") from None
            self._fail(exc, "creating the container at")

    def head(self, key: str) -> int | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return int(self.container.get_blob_client(key).get_blob_properties().size)
        except ResourceNotFoundError:
            return None
        except Exception as exc:
            self._fail(exc, "checking", key)

    def get(self, key: str, offset: int, length: int | None) -> bytes:
        try:
            return bytes(self.container.download_blob(key, offset=offset, length=length,
                                                      max_concurrency=PARALLEL_BLOCKS).readall())
        except Exception as exc:
            if getattr(exc, "status_code", None) == 416:
                return b""  # offset at or past the end
            self._fail(exc, "reading", key)

    def put(self, key: str, data: bytes, retention: Retention | None, now: float) -> None:
        if retention is not None:
            raise PermanentError(f"{self.loc}: --immutable (S3 Object Lock) is not available on Azure")
        try:
            self.container.upload_blob(key, data, length=len(data), overwrite=True,
                                       max_concurrency=PARALLEL_BLOCKS)
        except Exception as exc:
            self._fail(exc, "writing", key)

    def delete(self, key: str) -> None:
        try:
            self.container.delete_blob(key)
        except Exception as exc:
            self._fail(exc, "deleting", key)

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        try:
            found = [(b.name, int(b.size or 0))
                     for b in self.container.list_blobs(name_starts_with=prefix)]
        except Exception as exc:
            self._fail(exc, "listing", prefix)
        return iter(found)

    def close(self) -> None:
        self.container.close()


def translate(exc: BaseException, action: str, where: str) -> CoreStateError:
    """The error-tree error for what the Azure SDK raised while ``action`` ``where``.
    Only the status and the service's error code are kept: SDK messages can quote the
    request URL, which may carry a SAS token."""
    from azure.core.exceptions import (ClientAuthenticationError, HttpResponseError,
                                       ResourceNotFoundError, ServiceRequestError,
                                       ServiceResponseError)

    if isinstance(exc, CoreStateError):
        return exc
    if isinstance(exc, (ServiceRequestError, ServiceResponseError)):
        return RetryableError(f"{action} {where}: cannot reach the store ({type(exc).__name__})")
    if isinstance(exc, HttpResponseError):
        status = exc.status_code or 0
        code = getattr(exc, "error_code", None) or "error"
        if code == "ContainerNotFound":
            return PermanentError(f"{action} {where}: the container does not exist ({status} {code})")
        if isinstance(exc, ResourceNotFoundError):
            return NotFoundError(f"{where} does not exist")
        if status in _RETRYABLE_STATUS:
            return RetryableError(f"{action} {where}: the store answered {status} {code} "
                                  "(busy or throttling)")
        if isinstance(exc, ClientAuthenticationError) or status in (401, 403):
            return PermanentError(f"{action} {where}: access denied ({status} {code}); check "
                                  "the account key, SAS token or connection string")
        return PermanentError(f"{action} {where}: refused ({status} {code})")
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return RetryableError(f"{action} {where}: cannot reach the store ({type(exc).__name__})")
    raise exc


class AzureBackend(ObjectStoreBackend):
    """A repository in an Azure Blob container (see the module doc)."""

    def __init__(self, location: Location, **options: Any) -> None:
        super().__init__(location, AzureStore(location, **options))
