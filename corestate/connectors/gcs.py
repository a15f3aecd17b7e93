"""Google Cloud Storage through ``google-cloud-storage`` (``pip install 'corestate[gcs]'``).

Terms:

- the *bucket* of ``gs:BUCKET:/PREFIX`` is the repository's root. Credentials are
  Google's application default credentials: ``GOOGLE_APPLICATION_CREDENTIALS`` (a service
  account key file) or what ``gcloud auth application-default login`` stored; the
  project that ``init`` creates a missing bucket in is ``GOOGLE_PROJECT_ID`` (restic's
  name) or the credentials' own. ``STORAGE_EMULATOR_HOST`` (``http://host:port``) is the
  endpoint override for emulators such as fake-gcs-server, which take no credentials;
- an upload up to 8 MiB is one multipart request, a bigger one a resumable upload in
  chunks of :data:`CHUNK_SIZE`; the object exists once the upload is finalised, whole;
- 408/429/5xx answers and transport failures are retryable (the client's own retries
  are off, :class:`~corestate.connectors.retry.RetryBackend` backs off and logs);
  401/403, bad credentials and a missing bucket are permanent. Object Lock
  (``--immutable``) is S3's: GCS bucket retention policies are set by the bucket's owner.
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
CHUNK_SIZE = 64 * MiB  # a multiple of 256 KiB, as resumable uploads require
TIMEOUT = (10.0, 120.0)  # connect, read
_RETRYABLE_STATUS = {408, 429, 500, 502, 503, 504}


def _client() -> Any:
    try:
        from google.auth.exceptions import DefaultCredentialsError
        from google.cloud.storage import Client
    except ModuleNotFoundError:
        raise missing_extra("Google Cloud Storage", "gcs") from None
    project = os.environ.get("GOOGLE_PROJECT_ID") or None
    try:
        return Client(project=project)
    except DefaultCredentialsError:
        raise PermanentError("no Google Cloud credentials: set GOOGLE_APPLICATION_CREDENTIALS to a "
                             "service account key file (or STORAGE_EMULATOR_HOST for an "
                             "emulator)") from None


class GCSStore(WithoutLocks):
    """The :class:`~corestate.connectors.objectstore.Store` of one GCS bucket."""

    def __init__(self, loc: Location, chunk_size: int = CHUNK_SIZE) -> None:
        self.loc = loc
        self.chunk_size = chunk_size
        self.client = _client()
        self.bucket = self.client.bucket(loc.bucket)

    def _fail(self, exc: BaseException, action: str, key: str | None = None) -> NoReturn:
        raise translate(exc, action, self.loc.where(key)) from None

    def bucket_exists(self) -> bool:
        try:
            return bool(self.bucket.exists(retry=None, timeout=TIMEOUT))
        except Exception as exc:
            self._fail(exc, "checking the bucket at")

    def create_bucket(self, object_lock: bool) -> None:
        if object_lock:
            raise PermanentError(f"{self.loc}: --immutable (S3 Object Lock) is not available on "
                                 "GCS; set a retention policy on the bucket")
        from google.api_core.exceptions import Conflict, Forbidden

        try:
            self.client.create_bucket(self.loc.bucket, retry=None, timeout=TIMEOUT)
        except Conflict:
            return  # created meanwhile, or taken by another project: the next call says
        except Forbidden:
            raise PermanentError(
                f"bucket {self.loc.bucket} does not exist and these credentials may not create "
                "it (403): create it, or use credentials allowed storage.buckets.create") from None
        except Exception as exc:
            self._fail(exc, "creating the bucket at")

    def head(self, key: str) -> int | None:
        try:
            blob = self.bucket.get_blob(key, retry=None, timeout=TIMEOUT)
        except Exception as exc:
            self._fail(exc, "checking", key)
        return None if blob is None else int(blob.size or 0)

    def get(self, key: str, offset: int, length: int | None) -> bytes:
        end = offset + length - 1 if length else None
        try:
            return bytes(self.bucket.blob(key).download_as_bytes(
                start=offset, end=end, raw_download=True, checksum=None, retry=None,
                timeout=TIMEOUT))
        except Exception as exc:
            if getattr(exc, "code", None) == 416:
                return b""  # offset at or past the end
            self._fail(exc, "reading", key)

    def put(self, key: str, data: bytes, retention: Retention | None, now: float) -> None:
        if retention is not None:
            raise PermanentError(f"{self.loc}: --immutable (S3 Object Lock) is not available on GCS")
        blob = self.bucket.blob(key, chunk_size=self.chunk_size)
        try:
            blob.upload_from_string(data, content_type="application/octet-stream", retry=None,
                                    timeout=TIMEOUT)
        except Exception as exc:
            self._fail(exc, "writing", key)

    def delete(self, key: str) -> None:
        try:
            self.bucket.blob(key).delete(retry=None, timeout=TIMEOUT)
        except Exception as exc:
            self._fail(exc, "deleting", key)

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        try:
            found = [(b.name, int(b.size or 0))
                     for b in self.client.list_blobs(self.loc.bucket, prefix=prefix, retry=None,
                                                     timeout=TIMEOUT)]
        except Exception as exc:
            self._fail(exc, "listing", prefix)
        return iter(found)

    def close(self) -> None:
        self.client.close()


def translate(exc: BaseException, action: str, where: str) -> CoreStateError:
    """The error-tree error for what the GCS client raised while ``action`` ``where``."""
    import requests
    from google.api_core.exceptions import GoogleAPICallError
    from google.auth.exceptions import RefreshError, TransportError

    if isinstance(exc, CoreStateError):
        return exc
    if isinstance(exc, GoogleAPICallError):
        status = int(exc.code or 0)
        reason = exc.reason or type(exc).__name__
        if status == 404:
            if "bucket" in str(exc.message or "").lower() and "object" not in str(exc.message or "").lower():
                return PermanentError(f"{action} {where}: the bucket does not exist (404)")
            return NotFoundError(f"{where} does not exist")
        if status in _RETRYABLE_STATUS:
            return RetryableError(f"{action} {where}: the store answered {status} {reason} "
                                  "(busy or throttling)")
        if status in (401, 403):
            return PermanentError(f"{action} {where}: access denied ({status}); check "
                                  "GOOGLE_APPLICATION_CREDENTIALS and the account's permissions")
        return PermanentError(f"{action} {where}: refused ({status} {reason})")
    if isinstance(exc, RefreshError):
        return PermanentError(f"{action} {where}: the Google credentials were refused")
    if isinstance(exc, (TransportError, requests.exceptions.ConnectionError,
                        requests.exceptions.Timeout, ConnectionError, TimeoutError)):
        return RetryableError(f"{action} {where}: cannot reach the store ({type(exc).__name__})")
    raise exc


class GCSBackend(ObjectStoreBackend):
    """A repository in a GCS bucket (see the module doc)."""

    def __init__(self, location: Location, chunk_size: int = CHUNK_SIZE) -> None:
        super().__init__(location, GCSStore(location, chunk_size))
