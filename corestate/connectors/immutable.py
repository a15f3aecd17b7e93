"""Immutable repositories: S3 Object Lock on everything a restore needs, so that
ransomware (or anyone) holding the backup's credentials cannot delete or overwrite it
before the retention period ends.

Terms:

- the *policy* is a :class:`~corestate.connectors.objectstore.Retention`: a mode
  (``GOVERNANCE``: users granted ``s3:BypassGovernanceRetention`` may still remove
  objects; ``COMPLIANCE``: nobody can, not even the account's root) and a number of
  days. It is stored in the sidecar file ``corestate/immutable`` (JSON ``{"mode",
  "days"}``, encrypted like every sidecar file), which is itself locked;
- *enabling* it (``corestate init --immutable DAYS``) needs an S3 store whose bucket
  has Object Lock: a bucket that ``init`` creates gets it; an existing bucket must
  already have it (on AWS Object Lock can be turned on for a versioned bucket). Other
  stores, and S3 servers without Object Lock, are refused with an error that says so;
- *applying* it: every command that opens the repository reads the policy and hands it
  to the S3 backend, so every writer (backup, protect, a worker's packer, prune's
  repacking) locks each pack, index, snapshot, key and config file it writes until
  *write time + days*. Locks and the other sidecar files stay unlocked: they are
  removed or rewritten in normal operation and hold nothing a restore needs;
- a locked file cannot be removed: the backend refuses the delete with
  :class:`~corestate.errors.ImmutableError` (naming the date), so ``forget`` keeps such
  snapshots and says until when, and ``prune`` keeps such packs and index files (and
  every pack a kept index file lists) for a later prune.

versitygw v1.8.0 (``deploy/storage/s3.sh``) implements Object Lock on its POSIX backend
in both modes, without versioning: a locked object can be neither deleted nor
overwritten until its date, by anyone (its root user included) in compliance mode.
"""

from __future__ import annotations

import orjson

from corestate.connectors.objectstore import (COMPLIANCE, GOVERNANCE, ObjectStoreBackend,
                                              Retention)
from corestate.errors import NotFoundError, PermanentError
from corestate.repository.backend import Backend
from corestate.repository.repository import Repository

MODES = {"governance": GOVERNANCE, "compliance": COMPLIANCE}


def object_store(backend: Backend) -> ObjectStoreBackend | None:
    """The object-store backend under ``backend``'s wrappers (None for a local one)."""
    current: object = backend
    while current is not None:
        if isinstance(current, ObjectStoreBackend):
            return current
        current = getattr(current, "inner", None)
    return None


def prepare(backend: Backend, days: int, mode: str) -> Retention:
    """Before ``Repository.init``: check the store can lock, and lock what init writes
    (a bucket that init creates gets Object Lock)."""
    if days < 1:
        raise PermanentError(f"--immutable takes a number of days (1 or more), not {days}")
    policy = Retention(MODES.get(mode.lower(), mode.upper()), days)
    if policy.mode not in (GOVERNANCE, COMPLIANCE):
        raise PermanentError(f"--immutable-mode is governance or compliance, not {mode!r}")
    store = object_store(backend)
    if store is None or not store.supports_retention:
        raise PermanentError(f"{backend.location()}: --immutable needs S3 Object Lock, and this "
                             "is not an S3 location; use s3:... (or the store's own "
                             "immutability settings)")
    if store.exists() and not store.store.object_lock_enabled():
        raise PermanentError(f"bucket {store.loc.bucket} at {store.loc.endpoint} has no Object "
                             "Lock, which --immutable needs: let init create a new bucket, or "
                             "enable Object Lock on this one (it must be versioned on AWS)")
    store.retention = policy
    return policy


def save(repo: Repository, policy: Retention) -> None:
    """Record ``policy`` in the repository (after ``Repository.init``)."""
    store = object_store(repo.backend)
    if store is not None and not store.store.object_lock_enabled():
        raise PermanentError(f"the S3 store at {store.loc.endpoint} created bucket "
                             f"{store.loc.bucket} without Object Lock, so nothing can be "
                             "locked there; --immutable needs a store with Object Lock")
    repo.save_sidecar(Retention.SIDECAR, orjson.dumps({"mode": policy.mode, "days": policy.days}))


def load(repo: Repository) -> Retention | None:
    """The repository's policy, None if it has none."""
    try:
        doc = orjson.loads(repo.load_sidecar(Retention.SIDECAR))
    except NotFoundError:
        return None
    except orjson.JSONDecodeError:
        raise PermanentError("corestate/immutable is not valid JSON; refusing to write "
                             "unlocked data into an immutable repository") from None
    if not isinstance(doc, dict) or doc.get("mode") not in (GOVERNANCE, COMPLIANCE) \
            or not isinstance(doc.get("days"), int):
        raise PermanentError("corestate/immutable does not hold a mode and a number of days; "
                             "refusing to write unlocked data into an immutable repository")
    return Retention(doc["mode"], doc["days"])


def apply(repo: Repository) -> Retention | None:
    """Hand the repository's policy to its backend, so every file written is locked."""
    store = object_store(repo.backend)
    if store is None or not store.supports_retention:
        return None
    policy = load(repo)
    store.retention = policy
    return policy
