"""Features of one host's change stream per time window: what the anomaly model sees.

Terms:

- *batch*: what the watcher reports at once (:class:`corestate.kernel.watch.ChangeBatch`
  or anything shaped like it, see :class:`Batch`): changed paths and their event kinds.
- *window*: the batches of up to ``window`` seconds (2 s by default, the protect
  cadence), starting with the first batch after the previous window closed. Idle time
  makes no windows. A window is scored while it fills (every batch) and once it closes;
  :meth:`Window.features` also gives the features of its events on some paths alone
  (its *latest* batch's, as if that batch had opened the window).
- *sample*, *sketch*, *similarity*, *dedup miss*: see :mod:`corestate.models.sketch`.
  Each written, created or renamed-in file is sampled once per batch that names it,
  at most ``max_files`` files and ``max_bytes`` bytes per window, so a mass change cannot
  stall the agent; rewrites of known files are sampled first.
- *previous version* of a file: its sketch when the window first touched it: from the
  cache (primed by a scan of the protected tree, then kept up to date by the stream), or
  for a new name, the sketch of the file it was derived from: the source of a rename in the
  same directory, or a name in the same directory that the new name extends
  (``report.pdf`` for ``report.pdf.locked``).
- *rewrite*: a sampled file whose previous version is known.

Every feature is a float in a documented range (:data:`FEATURES`, which
:mod:`corestate.models.detector` uses to scale). Rates are ``log1p(events per second)``
over the window length, so a half-filled window shows half the events. For each, what a
*high* value means:

====================  ==========  ==================================================
name                  range       high value means
====================  ==========  ==================================================
write_rate            0..7        many files written (modify/close_write)
create_rate           0..7        many files created
delete_rate           0..7        many files deleted
rename_rate           0..7        many files renamed in (moved to)
ext_change_rate       0..7        renames that change the suffix (x.pdf -> x.pdf.locked),
                                  not counting saves from temporary or hidden files
                                  (.tmp, .part, ~, .x.swp) nor rotations (log.1)
novel_ext_rate        0..7        files given a suffix that no normal work uses and
                                  that first appeared on this host in the last
                                  ``novel_suffix_ttl`` seconds
type_change_share     0..1        share of rewrites whose leading bytes no longer show
                                  the type seen before, and show no recognised type
                                  fitting the name (a PDF that stopped being one;
                                  compressing a log to .gz or emptying it is not a
                                  change)
mismatch_share        0..1        share of sampled files whose leading bytes contradict
                                  their suffix (report.docx that is not a zip)
opaque_share          0..1        share of sampled files that are high-entropy yet of
                                  no recognised type: what encrypted data looks like
                                  (downloads, archives and media are recognised)
entropy               0..8        mean Shannon entropy of the written data, bits/byte
compress_ratio        0..1.1      zstd ratio of the written data; ~1 = incompressible
entropy_gain          0..8        largest entropy rise of a rewrite over its previous
                                  version (whole sample or first 4 KiB), unless the new
                                  content is a recognised type fitting its name
dedup_miss            0..1        mean share of a rewrite's blocks not found in its
                                  previous version (rewrites converted to another
                                  recognised type are not compared)
similarity_loss       0..1        1 - mean MinHash similarity of rewrites to their
                                  previous version: content replaced, not edited
dir_share             0..1        largest share of one directory's existing files
                                  rewritten, deleted or renamed away in the window
derived_replace_rate  0..7        files replaced by a new file whose name extends theirs
                                  (x.doc -> x.doc.enc), then deleted or renamed away,
                                  where the new file is not a recognised type fitting
                                  its name
====================  ==========  ==================================================

A window in which nothing was sampled has 0.0 for every content feature.

>>> import os, tempfile
>>> d = tempfile.mkdtemp(); f = os.path.join(d, "notes.txt").encode()
>>> with open(f, "wb") as fh: _ = fh.write(b"meeting notes, nothing secret\\n" * 2000)
>>> fx = FeatureExtractor(); fx.prime([d.encode()])
1
>>> with open(f, "wb") as fh: _ = fh.write(os.urandom(60000))  # encrypted in place
>>> w = fx.observe(SimpleBatch({f: {"modify", "close_write"}}), now=100.0)
>>> x = w.features()
>>> x["entropy_gain"] > 3, x["opaque_share"], x["type_change_share"], x["similarity_loss"] > 0.9
(True, 1.0, 1.0, True)
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from corestate.models import magic
from corestate.models.sketch import (REGION, Sample, Sketch, SketchCache, compress_ratio,
                                     dedup_miss, read_sample, similarity, sketch_of)

RATE_MAX = 7.0  # log1p(~1100 events/s)


@dataclass(frozen=True)
class Feature:
    """One feature: name, range, and what a high value means."""

    name: str
    low: float
    high: float
    meaning: str


FEATURES: tuple[Feature, ...] = (
    Feature("write_rate", 0.0, RATE_MAX, "many files written"),
    Feature("create_rate", 0.0, RATE_MAX, "many files created"),
    Feature("delete_rate", 0.0, RATE_MAX, "many files deleted"),
    Feature("rename_rate", 0.0, RATE_MAX, "many files renamed in"),
    Feature("ext_change_rate", 0.0, RATE_MAX, "renames that change the suffix"),
    Feature("novel_ext_rate", 0.0, RATE_MAX, "files given a new, unknown suffix"),
    Feature("type_change_share", 0.0, 1.0, "rewrites whose file type changed"),
    Feature("mismatch_share", 0.0, 1.0, "files whose content contradicts their suffix"),
    Feature("opaque_share", 0.0, 1.0, "high-entropy files of no recognised type"),
    Feature("entropy", 0.0, 8.0, "random-looking written data"),
    Feature("compress_ratio", 0.0, 1.1, "incompressible written data"),
    Feature("entropy_gain", 0.0, 8.0, "a rewrite far more random than before"),
    Feature("dedup_miss", 0.0, 1.0, "rewrites sharing no blocks with before"),
    Feature("similarity_loss", 0.0, 1.0, "rewrites unlike their previous content"),
    Feature("dir_share", 0.0, 1.0, "most of a directory's files changed"),
    Feature("derived_replace_rate", 0.0, RATE_MAX, "files replaced by x.ext.NEW copies"),
)
FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES)
LIMITS: dict[str, tuple[float, float]] = {f.name: (f.low, f.high) for f in FEATURES}

_WRITE = frozenset({"modify", "close_write"})
_CONTENT = frozenset({"modify", "close_write", "create", "move_to"})


class Batch(Protocol):
    """What a watcher batch must offer (``ChangeBatch`` does)."""

    @property
    def kinds(self) -> Mapping[bytes, set[str]]: ...


@dataclass(frozen=True)
class SimpleBatch:
    """A batch built by hand (tests, simulators): path -> event kinds."""

    kinds: Mapping[bytes, set[str]]


@dataclass(frozen=True)
class FeatureConfig:
    window: float = 2.0  # seconds
    region: int = REGION  # bytes read from the head and from the middle of a file
    max_files: int = 64  # files sampled per window
    max_bytes: int = 8 << 20  # bytes sampled per window
    novel_suffix_ttl: float = 600.0  # a new suffix counts as novel for this long
    high_entropy: float = 7.2  # bits/byte above which data counts as random-looking
    max_suffixes: int = 4096  # suffixes remembered per host


@dataclass(frozen=True)
class FileEvidence:
    """What sampling one file in a window found; comparisons are None for a new file."""

    path: bytes
    ftype: str
    entropy: float
    ratio: float
    sampled: int
    previous_type: str | None = None
    entropy_gain: float | None = None
    similarity: float | None = None
    dedup_miss: float | None = None
    mismatch: bool = False
    opaque: bool = False
    consistent: bool = False  # a recognised type that fits the name, intact
    broken: bool = False  # a rewrite, no smaller than before, that lost its end marker

    @property
    def rewrite(self) -> bool:
        return self.previous_type is not None

    @property
    def type_changed(self) -> bool:
        """A recognised type gave way to content that is no recognised type fitting the
        name (a PDF that no longer starts with %PDF), or lost its end marker (a JPEG whose
        first bytes were kept and the rest encrypted); conversions do not count."""
        return (self.previous_type is not None and magic.recognised(self.previous_type)
                and (self.ftype != self.previous_type or self.broken) and not self.consistent)

    @property
    def scrambled(self) -> bool:
        """An existing file looks encrypted: a rewrite (or a derived copy) that is
        high-entropy content of no recognised type, lost its recognised type, or rose in
        entropy by a bit per byte or more. A new opaque file destroyed nothing."""
        return self.rewrite and (self.opaque or self.type_changed
                                 or (self.entropy_gain or 0.0) >= 1.0)

    @property
    def suspicion(self) -> float:
        """How much this file looks encrypted, 0..1 (orders an alert's paths)."""
        s = 0.3 * self.opaque + 0.2 * self.type_changed + 0.1 * self.mismatch
        if self.entropy_gain is not None:
            s += 0.2 * min(1.0, self.entropy_gain / 3.0)
        if self.similarity is not None:
            s += 0.2 * (1.0 - self.similarity)
        return s


@dataclass
class Window:
    """The events and evidence of one window (see the module docstring).

    ``lower_bound`` is the earliest time any of its events can have happened: the time
    the batch before its first batch was taken (events after that wait in the queue).
    """

    start: float
    end: float
    lower_bound: float
    last: float = 0.0
    written: set[bytes] = field(default_factory=set)
    created: set[bytes] = field(default_factory=set)
    deleted: set[bytes] = field(default_factory=set)
    moved_from: set[bytes] = field(default_factory=set)
    moved_to: set[bytes] = field(default_factory=set)
    evidence: dict[bytes, FileEvidence] = field(default_factory=dict)
    baseline: dict[bytes, Sketch | None] = field(default_factory=dict)
    derived_from: dict[bytes, bytes] = field(default_factory=dict)  # new name -> source
    ext_changes: set[bytes] = field(default_factory=set)
    novel: set[bytes] = field(default_factory=set)
    dir_sizes: dict[bytes, int] = field(default_factory=dict)
    sampled_files: int = 0
    sampled_bytes: int = 0
    batches: int = 0
    latest: frozenset[bytes] = frozenset()  # the paths of the last batch

    def touched(self) -> set[bytes]:
        return self.written | self.created | self.deleted | self.moved_from | self.moved_to

    def paths(self) -> list[bytes]:
        """Every path the window touched, most suspicious first."""
        def key(p: bytes) -> tuple[float, bytes]:
            ev = self.evidence.get(p)
            s = ev.suspicion if ev else 0.0
            if p in self.novel or p in self.ext_changes:
                s += 0.5
            return (-s, p)
        return sorted(self.touched(), key=key)

    def scrambled(self) -> int:
        """How many sampled files look encrypted (:attr:`FileEvidence.scrambled`)."""
        return sum(1 for e in self.evidence.values() if e.scrambled)

    def first_change(self, limit: int = 256) -> float | None:
        """The earliest change time (min of mtime and ctime) of the window's paths that
        still exist, most suspicious first, at most ``limit`` of them; None if none do.
        A rename keeps the mtime of the last write, so an encrypted-then-renamed file
        still tells when it was encrypted."""
        first: float | None = None
        for p in self.paths()[:limit]:
            try:
                st = os.lstat(p)
            except OSError:
                continue
            t = min(st.st_mtime, st.st_ctime)
            first = t if first is None else min(first, t)
        return first

    def features(self, only: frozenset[bytes] | None = None) -> dict[str, float]:
        """The feature vector of the window so far (see :data:`FEATURES`); with ``only``,
        of its events on those paths alone (e.g. :attr:`latest`), as if they had opened
        the window."""
        if only is not None:
            return self._part(only).features()
        span = self.end - self.start

        def rate(n: int) -> float:
            return min(RATE_MAX, math.log1p(n / span))

        evs = list(self.evidence.values())
        rewrites = [e for e in evs if e.rewrite]
        total = sum(e.sampled for e in evs)
        gone = self.deleted | self.moved_from
        derived = len({src for dest, src in self.derived_from.items() if src in gone
                       and (ev := self.evidence.get(dest)) is not None and not ev.consistent})
        x = {
            "write_rate": rate(len(self.written)),
            "create_rate": rate(len(self.created)),
            "delete_rate": rate(len(self.deleted)),
            "rename_rate": rate(len(self.moved_to)),
            "ext_change_rate": rate(len(self.ext_changes)),
            "novel_ext_rate": rate(len(self.novel)),
            "type_change_share": _share(sum(e.type_changed for e in rewrites), len(rewrites)),
            "mismatch_share": _share(sum(e.mismatch for e in evs), len(evs)),
            "opaque_share": _share(sum(e.opaque for e in evs), len(evs)),
            "entropy": sum(e.entropy * e.sampled for e in evs) / total if total else 0.0,
            "compress_ratio": min(1.1, sum(e.ratio * e.sampled for e in evs) / total) if total else 0.0,
            "entropy_gain": max((e.entropy_gain or 0.0 for e in rewrites), default=0.0),
            "dedup_miss": _mean([e.dedup_miss for e in rewrites if e.dedup_miss is not None]),
            "similarity_loss": 1.0 - _mean([e.similarity for e in rewrites
                                            if e.similarity is not None], empty=1.0),
            "dir_share": self._dir_share(),
            "derived_replace_rate": rate(derived),
        }
        return x

    def _part(self, only: frozenset[bytes]) -> Window:
        def keep(paths: set[bytes]) -> set[bytes]:
            return paths & only

        return Window(self.start, self.end, self.lower_bound, self.last,
                      written=keep(self.written), created=keep(self.created),
                      deleted=keep(self.deleted), moved_from=keep(self.moved_from),
                      moved_to=keep(self.moved_to),
                      evidence={p: e for p, e in self.evidence.items() if p in only},
                      derived_from={d: s for d, s in self.derived_from.items() if d in only},
                      ext_changes=keep(self.ext_changes), novel=keep(self.novel),
                      dir_sizes=self.dir_sizes)

    def _dir_share(self) -> float:
        affected: dict[bytes, int] = {}
        for p in (self.written | self.deleted | self.moved_from) - self.created:
            d = os.path.dirname(p)
            affected[d] = affected.get(d, 0) + 1
        best = 0.0
        for d, n in affected.items():
            size = self.dir_sizes.get(d)
            if size is None:
                continue
            best = max(best, min(1.0, n / max(size, 4)))
        return best


def _share(n: int, total: int) -> float:
    return n / total if total else 0.0


def _mean(values: list[float], empty: float = 0.0) -> float:
    return sum(values) / len(values) if values else empty


class FeatureExtractor:
    """Turns batches into windows and windows into feature vectors, for one host.

    Call :meth:`advance` with the current time before :meth:`observe`; it returns the
    window that closed, if one did. ``ignore`` are paths never looked at (the agent's
    own alert and state files). Not thread-safe, except that :meth:`prime` may run in
    another thread.
    """

    def __init__(self, config: FeatureConfig | None = None, sketches: SketchCache | None = None,
                 ignore: Iterable[bytes] = ()) -> None:
        self.config = config or FeatureConfig()
        self.sketches = sketches if sketches is not None else SketchCache()
        self.ignore = frozenset(ignore)
        self.current: Window | None = None
        self.suffix_first_seen: dict[str, float] = {}
        self._last_observe = -math.inf

    # -- priming ----------------------------------------------------------------------
    def prime(self, roots: Iterable[bytes], excluded: Callable[[bytes], bool] = lambda p: False,
              stop: threading.Event | None = None, max_files: int | None = None) -> int:
        """Sketch the existing files under ``roots`` (never replacing a newer sketch) and
        learn their suffixes; return how many files were sketched. At most ``max_files``
        (default: the cache's capacity)."""
        limit = self.sketches.capacity if max_files is None else max_files
        done = 0
        stack = [os.fsencode(r) for r in roots]
        while stack and done < limit:
            top = stack.pop()
            try:
                entries = list(os.scandir(top))
            except OSError:
                continue
            for entry in entries:
                if stop is not None and stop.is_set():
                    return done
                path = entry.path
                if path in self.ignore or excluded(path):
                    continue
                try:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(path)
                        continue
                    if not entry.is_file(follow_symlinks=False):
                        continue
                except OSError:
                    continue
                self.suffix_first_seen.setdefault(magic.suffix_of(path), -math.inf)
                if done >= limit:
                    continue
                sample = read_sample(path, self.config.region)
                if sample is not None:
                    self.sketches.put(path, sketch_of(sample), only_if_absent=True)
                    done += 1
        return done

    # -- windows ----------------------------------------------------------------------
    def advance(self, now: float) -> Window | None:
        """Close the current window if its time is up; return it if so."""
        w = self.current
        if w is not None and now >= w.end:
            self.current = None
            return w
        return None

    def observe(self, batch: Batch, now: float) -> Window:
        """Add a batch to the current window (opening one if needed); return the window."""
        w = self.current
        if w is None:
            lower = self._last_observe if self._last_observe > -math.inf else now - self.config.window
            w = self.current = Window(start=now, end=now + self.config.window, lower_bound=lower)
        self._last_observe = now
        w.last = now
        w.batches += 1
        w.latest = frozenset(p for p in batch.kinds if p not in self.ignore)
        content: list[bytes] = []
        for path, kinds in batch.kinds.items():
            if path in self.ignore:
                continue
            if kinds & _WRITE:
                w.written.add(path)
            if "create" in kinds:
                w.created.add(path)
            if "delete" in kinds:
                w.deleted.add(path)
            if "move_from" in kinds:
                w.moved_from.add(path)
            if "move_to" in kinds:
                w.moved_to.add(path)
            if kinds & _CONTENT:
                content.append(path)
            if kinds & {"delete", "move_from", "modify", "close_write"}:
                self._note_dir(w, os.path.dirname(path))
        for path in sorted(p for p in batch.kinds if "move_to" in batch.kinds[p]):
            self._pair_rename(w, path)
        for path in sorted(w.created | w.moved_to):
            if path not in w.novel:
                self._check_suffix(w, path, now)
        # rewrites of known files first: they carry the strongest evidence
        content.sort(key=lambda p: (self._previous(w, p) is None, p))
        for path in content:
            if w.sampled_files >= self.config.max_files or w.sampled_bytes >= self.config.max_bytes:
                break
            self._sample(w, path)
        return w

    # -- per file ---------------------------------------------------------------------
    def _previous(self, w: Window, path: bytes) -> Sketch | None:
        if path in w.baseline:
            return w.baseline[path]
        prev = self.sketches.get(path)
        if prev is None:
            source = w.derived_from.get(path) or self._derived_source(path)
            if source is not None:
                prev = self.sketches.get(source)
                if prev is not None:
                    w.derived_from[path] = source
        w.baseline[path] = prev
        return prev

    def _derived_source(self, path: bytes) -> bytes | None:
        """A file in the same directory whose name ``path``'s name extends with a suffix."""
        head, name = os.path.split(path)
        while True:
            dot = name.rfind(b".")
            if dot <= 0:
                return None
            name = name[:dot]
            candidate = os.path.join(head, name)
            if self.sketches.get(candidate) is not None:
                return candidate

    def _pair_rename(self, w: Window, dest: bytes) -> None:
        """Find the source of a rename to ``dest``; count a suffix change."""
        d = os.path.dirname(dest)
        paired = set(w.derived_from.values())
        candidates = sorted(s for s in w.moved_from if os.path.dirname(s) == d and s not in paired)
        if not candidates:
            return
        name = os.path.basename(dest)
        stem = _stem(name)

        def rank(src: bytes) -> int:
            base = os.path.basename(src)
            if name.startswith(base + b"."):
                return 0  # x.pdf -> x.pdf.locked
            if _stem(base) == stem:
                return 1  # x.pdf -> x.enc
            return 2
        src = min(candidates, key=rank)
        old_sfx, new_sfx = magic.suffix_of(src), magic.suffix_of(dest)
        if rank(src) < 2 or len(candidates) == 1:
            w.derived_from.setdefault(dest, src)
        if (rank(src) < 2 and old_sfx != new_sfx and not magic.is_temporary(old_sfx)
                and not magic.is_temporary(new_sfx) and not new_sfx[1:].isdigit()
                and not os.path.basename(src).startswith(b".")):
            w.ext_changes.add(dest)  # not a save from a temporary, nor a log rotation

    def _check_suffix(self, w: Window, path: bytes, now: float) -> None:
        sfx = magic.suffix_of(path)
        if magic.is_known_suffix(sfx):
            return
        first = self.suffix_first_seen.get(sfx)
        if first is None:
            if len(self.suffix_first_seen) >= self.config.max_suffixes:
                # a copy: the priming thread may be adding suffixes meanwhile
                oldest = min(list(self.suffix_first_seen.items()), key=lambda kv: kv[1])[0]
                self.suffix_first_seen.pop(oldest, None)
            first = self.suffix_first_seen[sfx] = now
        if now - first <= self.config.novel_suffix_ttl:
            w.novel.add(path)

    def _note_dir(self, w: Window, d: bytes) -> None:
        if d in w.dir_sizes or len(w.dir_sizes) >= 256:
            return
        try:
            n = sum(1 for _ in os.scandir(d))
        except OSError:
            n = 0
        w.dir_sizes[d] = n + len([p for p in w.deleted | w.moved_from if os.path.dirname(p) == d])

    def _sample(self, w: Window, path: bytes) -> None:
        prev = self._previous(w, path)
        sample = read_sample(path, self.config.region)
        if sample is None:
            return
        w.sampled_files += 1
        w.sampled_bytes += len(sample)
        sk = sketch_of(sample)
        w.evidence[path] = evidence_of(path, sample, sk, prev, self.config.high_entropy)
        self.sketches.put(path, sk)


def evidence_of(path: bytes, sample: Sample, sk: Sketch, prev: Sketch | None,
                high_entropy: float = 7.2) -> FileEvidence:
    """Compare one sampled file with its previous version (if known).

    Content that is a recognised type fitting its name (*consistent*: a gzip called
    ``.gz``, a zip called ``.docx``) was converted or re-saved, not scrambled: its
    entropy gain does not count, nor its similarity when the type changed (text
    compressed to ``app.log.1.gz`` shares nothing with the text, by design). A rewrite
    of a file that was intact (:func:`~corestate.models.magic.intact`), as large as
    before or larger, whose end marker is gone is *broken*, and not consistent: its
    header was kept, the rest was not (a smaller one may be still being written)."""
    data = sample.data
    ratio = compress_ratio(data)
    mism = magic.mismatch(path, sk.ftype)
    broken = (prev is not None and prev.intact is True and sk.intact is False
              and sk.ftype == prev.ftype and sk.size >= prev.size)
    # an emptied file (truncated, rotated) contradicts nothing
    consistent = ((magic.recognised(sk.ftype) and not mism and not broken)
                  or sk.ftype == "empty")
    opaque = sk.entropy >= high_entropy and len(data) >= 256 and not consistent
    if prev is None:
        return FileEvidence(path, sk.ftype, sk.entropy, ratio, len(data), mismatch=mism,
                            opaque=opaque, consistent=consistent)
    gain = 0.0 if consistent else max(sk.entropy - prev.entropy,
                                      sk.head_entropy - prev.head_entropy, 0.0)
    comparable = sk.ftype == prev.ftype or not consistent
    return FileEvidence(path, sk.ftype, sk.entropy, ratio, len(data), previous_type=prev.ftype,
                        entropy_gain=gain,
                        similarity=similarity(sk, prev) if comparable else None,
                        dedup_miss=dedup_miss(sk, prev) if comparable else None,
                        mismatch=mism, opaque=opaque, consistent=consistent, broken=broken)


def _stem(name: bytes) -> bytes:
    dot = name.find(b".", 1)
    return name if dot <= 0 else name[:dot]


__all__ = ["Batch", "FEATURES", "FEATURE_NAMES", "Feature", "FeatureConfig", "FeatureExtractor",
           "FileEvidence", "LIMITS", "SimpleBatch", "Window", "evidence_of"]
