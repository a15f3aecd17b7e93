"""The watch loop's garbage collection: objects alive after a point are frozen, so
collections between points do not walk them, and a full collection comes when due."""

from __future__ import annotations

import gc
import weakref

from corestate.agents.watch_loop import Collector


class _Cycle:
    def __init__(self) -> None:
        self.me = self


def test_after_a_point_the_live_objects_are_frozen_until_a_full_collection_is_due():
    gc.unfreeze()
    try:
        collector = Collector(full_every=3600.0)
        collector.after_point()  # the first point: collected in full, then frozen
        assert gc.get_freeze_count() > 0
        young = _Cycle()
        dead = weakref.ref(_Cycle())  # cyclic garbage of the point: collected before freezing
        collector.after_point()
        assert dead() is None
        assert gc.get_freeze_count() > 0
        kept = weakref.ref(young)
        del young  # now garbage, but frozen: no collection looks at it
        gc.collect()
        assert kept() is not None
        collector.full_every = 0.0  # due: unfrozen and collected in full
        collector.after_point()
        assert kept() is None
    finally:
        gc.unfreeze()
