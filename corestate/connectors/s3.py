"""S3 and S3-compatible stores through the ``minio`` client (``pip install 'corestate[s3]'``).

Terms:

- the *endpoint* is ``host[:port]`` from the location (``s3:http://127.0.0.1:7070/b``,
  ``s3:s3.amazonaws.com/b``); it is also the override for S3-compatible stores and
  emulators, since the location names it;
- *credentials* come from the environment, as the AWS tools read them:
  ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` (and ``AWS_SESSION_TOKEN``), else the
  shared credentials file (``~/.aws/credentials`` or ``AWS_SHARED_CREDENTIALS_FILE``,
  profile ``AWS_PROFILE``, default ``default``). They are handed to the client and never
  appear in a message or a log line;
- the *region* is ``AWS_DEFAULT_REGION`` (or ``AWS_REGION``); unset, AWS endpoints are
  asked for the bucket's region and other stores get ``us-east-1``;
- an upload up to :data:`PART_SIZE` is one PUT; a bigger one is a multipart upload of
  :data:`PART_SIZE` parts, :data:`PARALLEL_PARTS` at a time. Both are atomic: the object
  exists only once the PUT or the final CompleteMultipartUpload succeeds;
- *throttling* (``503 SlowDown``, ``429``) and 5xx answers, refused or reset connections
  and timeouts are :class:`~corestate.errors.RetryableError` (the client itself does not
  retry: :class:`~corestate.connectors.retry.RetryBackend` backs off and logs each
  retry); denied access, bad keys and missing buckets are
  :class:`~corestate.errors.PermanentError`, named by the location without credentials;
- a read of an object in an archive class (``GLACIER``, ``DEEP_ARCHIVE``) is refused by
  S3 with ``InvalidObjectState``: that becomes a PermanentError saying the pack must be
  restored (or moved back) first, see ``corestate tiering``.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any, NoReturn

from corestate.connectors.objectstore import ObjectStoreBackend, Retention, missing_extra
from corestate.connectors.url import Location
from corestate.errors import CoreStateError, NotFoundError, PermanentError, RetryableError

MiB = 1 << 20
PART_SIZE = 64 * MiB
PARALLEL_PARTS = 4
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 120.0
POOL_SIZE = 32  # connections kept per host: parallel uploads and reads of a restore

_PERMANENT_CODES = {
    "AccessDenied": "access denied",
    "AllAccessDisabled": "all access to this bucket is disabled",
    "AccountProblem": "the account has a problem",
    "InvalidAccessKeyId": "the access key is not known to the store",
    "SignatureDoesNotMatch": "the secret key does not match the access key",
    "ExpiredToken": "the session token has expired",
    "InvalidToken": "the session token is not valid",
    "NoSuchBucket": "the bucket does not exist",
    "InvalidBucketName": "the bucket name is not valid",
    "AuthorizationHeaderMalformed": "the region does not match the bucket's (set AWS_DEFAULT_REGION)",
    "PermanentRedirect": "the bucket is in another region (set AWS_DEFAULT_REGION)",
    "RequestTimeTooSkewed": "this machine's clock is too far from the store's",
    "MethodNotAllowed": "the store does not allow this request",
    "NotImplemented": "the store does not implement this request",
    "InvalidRequest": "the store refused the request",
    "EntityTooLarge": "the object is too large for one request",
}
_RETRYABLE_STATUS = {408, 429, 500, 502, 503, 504}


def _client(loc: Location) -> tuple[Any, Any]:
    """The minio client for ``loc`` and its connection pool."""
    try:
        import certifi
        import urllib3
        from minio import Minio
        from minio.credentials.providers import (AWSConfigProvider, ChainedProvider,
                                                 EnvAWSProvider)
    except ModuleNotFoundError:
        raise missing_extra("S3", "s3") from None
    env = os.environ
    if not env.get("AWS_ACCESS_KEY_ID") and not _shared_credentials_file():
        raise PermanentError(
            f"no S3 credentials for {loc}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            "(or AWS_PROFILE with a shared credentials file)")
    region = env.get("AWS_DEFAULT_REGION") or env.get("AWS_REGION")
    if not region and not loc.endpoint.endswith("amazonaws.com"):
        region = "us-east-1"
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT, read=READ_TIMEOUT),
        maxsize=POOL_SIZE,
        cert_reqs="CERT_REQUIRED",
        ca_certs=env.get("SSL_CERT_FILE") or certifi.where(),
        # No retries here: RetryBackend retries with backoff and says so.
        retries=urllib3.Retry(total=0, redirect=0, raise_on_status=False),
    )
    provider = ChainedProvider([EnvAWSProvider(),
                                AWSConfigProvider(profile=env.get("AWS_PROFILE"))])
    return Minio(loc.endpoint, secure=loc.secure, region=region, http_client=http,
                 credentials=provider), http


def _shared_credentials_file() -> bool:
    path = os.environ.get("AWS_SHARED_CREDENTIALS_FILE") or os.path.expanduser("~/.aws/credentials")
    return os.path.isfile(path)


class S3Store:
    """The :class:`~corestate.connectors.objectstore.Store` of one S3 bucket."""

    def __init__(self, loc: Location, part_size: int = PART_SIZE) -> None:
        self.loc = loc
        self.part_size = part_size
        self.client, self._http = _client(loc)
        self._lock_enabled: bool | None = None

    # -- errors --------------------------------------------------------------------------
    def _fail(self, exc: BaseException, action: str, key: str | None = None) -> NoReturn:
        raise translate(exc, action, self.loc.where(key)) from None

    # -- bucket --------------------------------------------------------------------------
    def bucket_exists(self) -> bool:
        try:
            return bool(self.client.bucket_exists(self.loc.bucket))
        except Exception as exc:
            self._fail(exc, "checking the bucket at")

    def create_bucket(self, object_lock: bool) -> None:
        try:
            self.client.make_bucket(self.loc.bucket, object_lock=object_lock)
        except Exception as exc:
            code = getattr(exc, "code", None)
            if code in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists") and not object_lock:
                return
            if code in ("AccessDenied", "BucketAlreadyExists"):
                raise PermanentError(
                    f"bucket {self.loc.bucket} does not exist at {self.loc.endpoint} and "
                    f"these credentials may not create it ({code}): create it, or use "
                    "credentials allowed s3:CreateBucket") from None
            if object_lock and code in ("InvalidRequest", "NotImplemented", "InvalidArgument"):
                raise PermanentError(f"the S3 store at {self.loc.endpoint} cannot create a bucket "
                                     f"with Object Lock ({code}): --immutable needs Object Lock")
            self._fail(exc, "creating the bucket at")
        self._lock_enabled = object_lock

    def object_lock_enabled(self) -> bool:
        """Whether the bucket has Object Lock enabled (asked once, then remembered)."""
        if self._lock_enabled is None:
            try:
                config = self.client.get_object_lock_config(self.loc.bucket)
                self._lock_enabled = config is not None
            except ValueError:
                # The store answered with a configuration that has a rule but no default
                # retention (versitygw does), which minio cannot parse: it is enabled.
                self._lock_enabled = True
            except Exception as exc:
                code = getattr(exc, "code", None)
                if code in ("ObjectLockConfigurationNotFoundError", "NoSuchObjectLockConfiguration",
                            "NotImplemented", "MethodNotAllowed", "InvalidRequest"):
                    self._lock_enabled = False
                else:
                    self._fail(exc, "reading the Object Lock configuration of")
        return self._lock_enabled

    # -- objects -------------------------------------------------------------------------
    def head(self, key: str) -> int | None:
        try:
            return int(self.client.stat_object(self.loc.bucket, key).size)
        except Exception as exc:
            if getattr(exc, "code", None) in ("NoSuchKey", "NoSuchObject"):
                return None
            self._fail(exc, "checking", key)

    def get(self, key: str, offset: int, length: int | None) -> bytes:
        response = None
        try:
            response = self.client.get_object(self.loc.bucket, key, offset=offset,
                                              length=length or 0)
            return bytes(response.read())
        except Exception as exc:
            if getattr(exc, "code", None) == "InvalidRange":
                return b""  # offset at or past the end
            self._fail(exc, "reading", key)
        finally:
            if response is not None:
                response.close()
                response.release_conn()

    def put(self, key: str, data: bytes, retention: Retention | None, now: float) -> None:
        lock = None
        if retention is not None:
            from minio.retention import Retention as MinioRetention

            until = datetime.fromtimestamp(retention.until(now), timezone.utc)
            lock = MinioRetention(retention.mode, until)
        try:
            self.client.put_object(self.loc.bucket, key, io.BytesIO(data), len(data),
                                   part_size=max(self.part_size, 5 * MiB),
                                   num_parallel_uploads=PARALLEL_PARTS, retention=lock)
        except Exception as exc:
            self._fail(exc, "writing", key)

    def delete(self, key: str) -> None:
        try:
            self.client.remove_object(self.loc.bucket, key)
        except Exception as exc:
            self._fail(exc, "deleting", key)

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        try:
            found = [(o.object_name, int(o.size or 0))
                     for o in self.client.list_objects(self.loc.bucket, prefix=prefix, recursive=True)
                     if not o.is_dir]
        except Exception as exc:
            self._fail(exc, "listing", prefix)
        return iter(found)

    def retained_until(self, key: str) -> float | None:
        if not self.object_lock_enabled():
            return None
        try:
            retention = self.client.get_object_retention(self.loc.bucket, key)
        except Exception as exc:
            if getattr(exc, "code", None) in ("NoSuchObjectLockConfiguration",
                                               "ObjectLockConfigurationNotFoundError"):
                return None
            self._fail(exc, "reading the retention of", key)
        if retention is None or retention.retain_until_date is None:
            return None
        return float(retention.retain_until_date.timestamp())

    def set_storage_class(self, key: str, storage_class: str) -> None:
        """Move the object to ``storage_class`` by copying it onto itself (S3's way)."""
        from minio.commonconfig import REPLACE, CopySource

        try:
            self.client.copy_object(self.loc.bucket, key, CopySource(self.loc.bucket, key),
                                    metadata={"x-amz-storage-class": storage_class},
                                    metadata_directive=REPLACE)
        except Exception as exc:
            self._fail(exc, f"moving to {storage_class}", key)

    def close(self) -> None:
        self._http.clear()


def translate(exc: BaseException, action: str, where: str) -> CoreStateError:
    """The error-tree error for what the minio client or urllib3 raised while ``action``
    ``where`` (a location without credentials)."""
    import urllib3
    from minio.error import InvalidResponseError, S3Error, ServerError

    if isinstance(exc, CoreStateError):
        return exc
    if isinstance(exc, S3Error):
        code = exc.code or "error"
        status = exc.response.status if exc.response is not None else 0
        if code in ("NoSuchKey", "NoSuchObject"):
            return NotFoundError(f"{where} does not exist")
        if code == "InvalidObjectState":
            return PermanentError(
                f"{action} {where}: the object is in an archive storage class (GLACIER or "
                "DEEP_ARCHIVE) and must be restored before it can be read; request its "
                "restore (aws s3api restore-object) or move it back with `corestate tiering "
                "--apply` and prices that keep it in an immediate class, then retry")
        if code in ("SlowDown", "ServiceUnavailable", "RequestTimeout", "InternalError",
                    "OperationAborted", "Throttling", "TooManyRequests") \
                or status in _RETRYABLE_STATUS:
            return RetryableError(f"{action} {where}: the store answered {status} {code} "
                                  "(busy or throttling)")
        reason = _PERMANENT_CODES.get(code, exc.message or "refused")
        return PermanentError(f"{action} {where}: {reason} ({status} {code})")
    if isinstance(exc, ServerError):
        status = exc.status_code
        if status in _RETRYABLE_STATUS or status >= 500:
            return RetryableError(f"{action} {where}: the store answered {status}")
        return PermanentError(f"{action} {where}: the store answered {status}")
    if isinstance(exc, InvalidResponseError):
        status = getattr(exc, "_code", 0)
        if status in _RETRYABLE_STATUS:
            return RetryableError(f"{action} {where}: the store answered {status} (busy or throttling)")
        return PermanentError(f"{action} {where}: the store answered {status} without an "
                              "S3 error (is this an S3 endpoint?)")
    if isinstance(exc, urllib3.exceptions.HTTPError):
        cause = exc.reason if isinstance(exc, urllib3.exceptions.MaxRetryError) else exc
        if isinstance(cause, urllib3.exceptions.SSLError):
            return PermanentError(f"{action} {where}: TLS failed ({type(cause).__name__})")
        return RetryableError(f"{action} {where}: cannot reach the store "
                              f"({type(cause).__name__ if cause else 'connection error'})")
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return RetryableError(f"{action} {where}: cannot reach the store ({type(exc).__name__})")
    if isinstance(exc, ValueError):
        return PermanentError(f"{action} {where}: {exc}")
    raise exc


class S3Backend(ObjectStoreBackend):
    """A repository in an S3 bucket (see the module doc)."""

    supports_retention = True
    storage_classes = frozenset({"STANDARD", "STANDARD_IA", "ONEZONE_IA", "INTELLIGENT_TIERING",
                                 "GLACIER_IR", "GLACIER", "DEEP_ARCHIVE", "REDUCED_REDUNDANCY"})

    def __init__(self, location: Location, part_size: int = PART_SIZE) -> None:
        self.s3 = S3Store(location, part_size)
        super().__init__(location, self.s3)
