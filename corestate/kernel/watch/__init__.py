"""Watching directory trees for changes, for continuous protection.

:mod:`~corestate.kernel.watch.watcher` declares the :class:`Watcher` protocol, the
:class:`ChangeBatch` it reports, the terms (dirty directory, overflow, unwatched
directory...) and the contract every implementation keeps. Two implement it:

- :mod:`~corestate.kernel.watch.fanotify`: one mark per filesystem; needs CAP_SYS_ADMIN
  and CAP_DAC_READ_SEARCH, Linux 5.9+ and a filesystem that decodes file handles.
- :mod:`~corestate.kernel.watch.inotify`: a watch per directory; works for any user,
  up to the inotify watch limit.

:func:`open_watcher` chooses between them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from corestate.errors import PermanentError
from corestate.kernel.watch.fanotify import FanotifyWatcher
from corestate.kernel.watch.inotify import InotifyWatcher
from corestate.kernel.watch.watcher import COALESCE_MAX, COALESCE_QUIET, ChangeBatch, Watcher

__all__ = ["COALESCE_MAX", "COALESCE_QUIET", "ChangeBatch", "Watcher", "open_watcher"]

log = logging.getLogger(__name__)


def open_watcher(roots: Iterable[bytes], excluded: Callable[[bytes], bool] = lambda p: False,
                 prefer_fanotify: bool = True) -> Watcher:
    """A fanotify watcher if fanotify can mark the filesystem of every root and resolve
    its file handles, else an inotify one, saying why at info level. ``excluded`` is
    asked about absolute directory paths. Use it as ``with open_watcher(roots, excluded)
    as w: w.poll(...)``."""
    roots = list(roots)
    if prefer_fanotify:
        try:
            return FanotifyWatcher(roots, excluded)
        except (PermanentError, OSError) as exc:
            log.info("watching with inotify (a watch per directory) instead of fanotify: %s", exc)
    return InotifyWatcher(roots, excluded)
