"""The host agent's incremental runs without a broker: how watcher batches become an
increment, and what an incremental scan sends."""

from __future__ import annotations

import os
from pathlib import Path

from corestate.agents.agent import MAX_REMOVED_PER_DIR, Increment, plan, scan_changes
from corestate.agents.watch_loop import Changes, without_own_reads
from corestate.kernel import reflink
from corestate.kernel.watch import ChangeBatch
from corestate.pipeline.capture import ExcludeMatcher
from corestate.schemas.events import DataSegment, Event, FileBegin


def b(p: Path | str) -> bytes:
    return os.fsencode(str(p))


def batch(**kinds: set[str]) -> ChangeBatch:
    named = {k.encode() if isinstance(k, str) else k: v for k, v in kinds.items()}
    return ChangeBatch(dirty_dirs=frozenset(os.path.dirname(p) for p in named),
                       paths=frozenset(named), kinds=named)


def changes_of(*pairs: tuple[Path, set[str]], dirty: tuple[Path, ...] = ()) -> Changes:
    named = {b(p): k for p, k in pairs}
    c = Changes()
    c.add(ChangeBatch(dirty_dirs=frozenset({os.path.dirname(p) for p in named} | {b(d) for d in dirty}),
                      paths=frozenset(named), kinds=named))
    return c


def test_changed_gone_and_new_entries(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "d" / "new" / "deep").mkdir(parents=True)
    (src / "d" / "f").write_text("changed")
    c = changes_of((src / "d" / "f", {"modify"}), (src / "d" / "gone", {"delete"}),
                   (src / "d" / "new", {"create"}), (src / "x" / "y", {"delete"}))
    inc = plan(c, [str(src)], "p" * 64)
    assert inc == Increment("p" * 64, rescanned=frozenset({b(src / "d" / "new"), b(src / "d" / "new" / "deep")}),
                            entries=frozenset({b(src / "d" / "f"), b(src / "d")}),
                            # x/y is not listed: its directory x is gone, which says it all
                            removed=frozenset({b(src / "d" / "gone"), b(src / "x")}))


def test_what_only_a_full_run_can_say(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    assert plan(Changes(full=True), [str(src)], "p") is None
    gone = Changes()
    gone.add(batch(**{str(tmp_path / "missing"): {"delete_self"}}))
    assert gone.full  # a watched directory itself deleted or moved
    assert plan(changes_of((src, {"create"})), [str(src)], "p") is None  # replaced
    assert plan(changes_of((src / "a", {"modify"})), [str(tmp_path / "nope")], "p") is None
    many = Changes()
    for i in range(2000):  # gone from 2000 directories: none is listed instead
        (src / f"d{i}").mkdir()
        many.named.add(b(src / f"d{i}" / ("n" * 200)))
    assert plan(many, [str(src)], "p") is None  # too long for a marker


def test_a_directory_that_lost_many_entries_is_listed_instead(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    c = changes_of(*[(src / f"f{i}", {"delete"}) for i in range(MAX_REMOVED_PER_DIR + 1)])
    inc = plan(c, [str(src)], "p")
    assert inc is not None and inc.removed == frozenset() and inc.rescanned == {b(src)}


def test_excluded_paths_and_siblings_of_a_source_file_are_left_out(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "cache").mkdir(parents=True)
    (src / "cache" / "c").write_text("x")
    (src / "keep.txt").write_text("x")
    (tmp_path / "single.txt").write_text("x")
    (tmp_path / "sibling.txt").write_text("x")
    matcher = ExcludeMatcher(["**/cache"])
    c = changes_of((src / "cache" / "c", {"modify"}), (src / "keep.txt", {"modify"}),
                   (tmp_path / "sibling.txt", {"modify"}), (tmp_path / "single.txt", {"modify"}))
    inc = plan(c, [str(src), str(tmp_path / "single.txt")], "p", matcher.excluded)
    assert inc is not None
    assert inc.entries == {b(src / "keep.txt"), b(tmp_path / "single.txt")}  # src: always sent


def test_an_incremental_scan_sends_the_changes_and_the_way_to_them(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "a" / "b").mkdir(parents=True)
    (src / "a" / "b" / "f").write_bytes(b"new content")
    (src / "a" / "big").write_bytes(os.urandom(3 << 20))
    (src / "n" / "m").mkdir(parents=True)
    (src / "n" / "m" / "g").write_bytes(b"in a new subtree")
    events: list[Event] = []
    inc = Increment("p" * 64, rescanned=frozenset({b(src / "n"), b(src / "n" / "m")}),
                    entries=frozenset({b(src / "a" / "b" / "f")}))
    summary = scan_changes([str(src)], "h", "s2", events.append, inc)
    begun = [e.path for e in events if isinstance(e, FileBegin)]
    assert len(begun) == len(set(begun))  # each entry once
    assert {b(src), b(src / "a"), b(src / "a" / "b"), b(src / "a" / "b" / "f"), b(src / "n"),
            b(src / "n" / "m"), b(src / "n" / "m" / "g")} <= set(begun)
    assert b(src / "a" / "big") not in begun  # beside a changed directory, not re-read
    assert {e.path for e in events if isinstance(e, DataSegment)} == {
        b(src / "a" / "b" / "f"), b(src / "n" / "m" / "g")}
    assert summary.parent == "p" * 64 and summary.rescanned == 2 and summary.files == 2


def test_the_agents_own_reads_are_not_changes() -> None:
    reflink._remember(1234)  # an O_TMPFILE clone this process made (inode 1234)
    assert without_own_reads(batch(**{"/s/d/#1234": {"close_write"}})) is None
    assert without_own_reads(batch(**{"/s/d/.corestate-clone-ab12": {"create", "delete"}})) is None
    mixed = without_own_reads(batch(**{"/s/d/#1234": {"close_write"}, "/s/e/f": {"modify"},
                                       "/s/d/#99": {"modify"}}))  # a real file named #99
    assert mixed is not None and set(mixed.kinds) == {b"/s/e/f", b"/s/d/#99"}
    assert mixed.dirty_dirs == {b"/s/e", b"/s/d"}
    only = without_own_reads(batch(**{"/s/d/#1234": {"modify"}, "/s/e/f": {"modify"}}))
    assert only is not None and only.dirty_dirs == {b"/s/e"}
