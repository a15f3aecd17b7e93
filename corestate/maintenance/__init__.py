"""Repository maintenance: verify, expire, reclaim and inspect.

One module per operation (:mod:`.check`, :mod:`.forget`, :mod:`.prune`, :mod:`.stats`,
:mod:`.diff`, :mod:`.find`) plus the concepts they share: :mod:`.usage` (which blobs a
snapshot references) and :mod:`.listing` (how a node is shown).

Long operations report *progress* through an optional callable
``progress(phase, done, total)``: ``phase`` names the step ("snapshots", "read data",
...), ``done`` and ``total`` count its units (packs, snapshots). Nothing here prints.
"""

from __future__ import annotations

from collections.abc import Callable

ProgressFn = Callable[[str, int, int], None]
"""``progress(phase, done, total)``, called now and then by long operations."""


def no_progress(phase: str, done: int, total: int) -> None:
    """The default :data:`ProgressFn`: ignore progress."""
