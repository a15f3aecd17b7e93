"""The protection list: snapshots that ``forget`` and ``prune`` must keep.

Terms:

- *protection list*: the sidecar file ``corestate/protected`` (restic ignores the
  directory), a JSON list of snapshot ids or id prefixes that must never be removed,
  whatever a retention policy says. The anomaly detector puts the last snapshot before
  suspected ransomware there (:mod:`corestate.repository.alerts`); anyone may add
  entries. Absent means empty; a list that cannot be read stops forget rather than
  risk removing what it protects.

Writers read, change and write the whole file while holding the repository's lock
(shared for adding, as the alert ledger does; forget reads it under the exclusive one).

>>> is_protected("4d2b1c9e" + "0" * 56, ["4d2b1c9e"]), is_protected("ab" * 32, [])
(True, False)
"""

from __future__ import annotations

from collections.abc import Sequence

import orjson

from corestate.errors import CoreStateError, NotFoundError, PermanentError
from corestate.repository.repository import Repository

PROTECTED_SIDECAR = "protected"


def is_protected(snap_id: str, protected: Sequence[str]) -> bool:
    """Whether ``snap_id`` is on the protection list (entries may be id prefixes)."""
    return any(p and snap_id.startswith(p) for p in protected)


def load_protected(repo: Repository) -> list[str]:
    """The protection list; [] when absent; PermanentError when unreadable."""
    try:
        raw = repo.load_sidecar(PROTECTED_SIDECAR)
    except NotFoundError:
        return []
    except CoreStateError as exc:
        raise PermanentError(f"the protection list (corestate/{PROTECTED_SIDECAR}) cannot be "
                             f"read ({exc}); refusing to forget snapshots it may protect") from None
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        doc = None
    if not isinstance(doc, list) or not all(isinstance(x, str) for x in doc):
        raise PermanentError(f"the protection list (corestate/{PROTECTED_SIDECAR}) is not a "
                             "JSON list of snapshot ids; refusing to forget")
    return [x.strip().lower() for x in doc if x.strip()]


def save_protected(repo: Repository, ids: Sequence[str]) -> None:
    """Replace the protection list (the caller holds the repository's lock)."""
    repo.save_sidecar(PROTECTED_SIDECAR, orjson.dumps(list(ids)))
