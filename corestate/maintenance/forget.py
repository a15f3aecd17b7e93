"""Forget: remove snapshots according to a retention policy, as ``restic forget`` does.

Terms:

- *policy*: how many snapshots to keep per *bucket kind*: ``last`` (every snapshot is its
  own bucket), ``hourly``, ``daily``, ``weekly`` (ISO weeks), ``monthly``, ``yearly``;
  plus *keep tags*: a snapshot carrying every tag of one of the tag lists is kept.
- *bucket*: the hour, day, ... a snapshot's time falls in, in local time (restic uses the
  zone recorded in the snapshot, which is the local zone of the machine that made it).
- Applying a policy (restic's ``ApplyPolicy``): walk a group's snapshots newest first;
  for each bucket kind with a count left, a snapshot whose bucket differs from the last
  kept one of that kind is kept, and that kind's count drops by one. A snapshot is kept
  if any rule keeps it; its *reasons* list the rules, its *counters* what each rule has
  left afterwards.
- *group*: snapshots with the same host and paths (the default ``group_by``); each group
  is expired on its own.
- *protection list*: snapshots that must never be removed, whatever the policy says
  (:mod:`corestate.repository.protected`; the anomaly detector protects the last
  snapshots before suspected ransomware).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone, tzinfo

from corestate.errors import CoreStateError, ImmutableError, PermanentError
from corestate.maintenance import ProgressFn, no_progress
from corestate.repository.backend import Kind
from corestate.repository.protected import is_protected, load_protected
from corestate.repository.repository import OnDamaged, Repository
from corestate.repository.snapshot import Snapshot

DEFAULT_GROUP_BY = ("host", "paths")

_BUCKETS: tuple[tuple[str, str, Callable[[datetime, int], int]], ...] = (
    ("last", "last snapshot", lambda t, nr: nr),
    ("hourly", "hourly snapshot", lambda t, nr: t.year * 1_000_000 + t.month * 10_000
     + t.day * 100 + t.hour),
    ("daily", "daily snapshot", lambda t, nr: t.year * 10_000 + t.month * 100 + t.day),
    ("weekly", "weekly snapshot", lambda t, nr: t.isocalendar()[0] * 100 + t.isocalendar()[1]),
    ("monthly", "monthly snapshot", lambda t, nr: t.year * 100 + t.month),
    ("yearly", "yearly snapshot", lambda t, nr: t.year),
)


@dataclass(frozen=True)
class Policy:
    """Counts per bucket kind (0 = rule unused) and keep-tag lists."""

    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0
    tags: tuple[tuple[str, ...], ...] = ()

    def empty(self) -> bool:
        return not self.tags and not any(getattr(self, k) > 0 for k, _, _ in _BUCKETS)

    def describe(self) -> str:
        """restic's wording, e.g. ``keep 3 latest, 7 daily snapshots``."""
        parts = [f"{self.last} latest"] if self.last > 0 else []
        parts += [f"{getattr(self, k)} {k}" for k, _, _ in _BUCKETS[1:] if getattr(self, k) > 0]
        text = "keep " + ", ".join(parts) + " snapshots" if parts else "keep"
        for tag_list in self.tags:
            text += f", snapshots with tags [{', '.join(tag_list)}]"
        return text


@dataclass
class Decision:
    """What the policy says about one snapshot."""

    snapshot: Snapshot
    keep: bool
    reasons: list[str] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)


def apply_policy(snaps: Iterable[Snapshot], policy: Policy, protected: Sequence[str] = (),
                 tz: tzinfo | None = None) -> list[Decision]:
    """Decide every snapshot of one group, newest first (see the module doc).

    ``tz`` is the zone buckets are taken in (default: local time). Protected snapshots
    are kept with the reason ``protected``; they count towards the buckets as restic's
    tag-kept snapshots do.

    >>> mk = lambda day, sid: Snapshot(time=(day * 86400 + 3600) * 10**9, tree=b"", paths=["/"], id=sid)
    >>> ds = apply_policy([mk(d, f"s{d}") for d in range(5)], Policy(daily=2), tz=timezone.utc)
    >>> [(d.snapshot.id, d.keep) for d in ds]
    [('s4', True), ('s3', True), ('s2', False), ('s1', False), ('s0', False)]
    """
    ordered = sorted(snaps, key=lambda s: (s.time, s.id), reverse=True)
    counts = {k: getattr(policy, k) for k, _, _ in _BUCKETS}
    last: dict[str, int | None] = {k: None for k, _, _ in _BUCKETS}
    out = []
    for nr, snap in enumerate(ordered):
        seconds = snap.time // 10**9
        when = datetime.fromtimestamp(seconds, tz) if tz else datetime.fromtimestamp(seconds)
        reasons = [f"has tags [{', '.join(t)}]" for t in policy.tags if set(t) <= set(snap.tags)]
        for kind, reason, bucket in _BUCKETS:
            if counts[kind] > 0:
                value = bucket(when, nr)
                if value != last[kind]:
                    last[kind] = value
                    counts[kind] -= 1
                    reasons.append(reason)
        keep = bool(reasons)
        if is_protected(snap.id, protected):
            reasons.append("protected")
            keep = True
        counters = {k: c for k, c in counts.items() if c > 0}
        out.append(Decision(snap, keep, reasons if keep else [], counters))
    return out


@dataclass
class Group:
    """The decisions for one group of snapshots."""

    host: str | None
    paths: list[str] | None
    tags: list[str] | None
    decisions: list[Decision]

    @property
    def keep(self) -> list[Snapshot]:
        return [d.snapshot for d in self.decisions if d.keep]

    @property
    def remove(self) -> list[Snapshot]:
        return [d.snapshot for d in self.decisions if not d.keep]

    def to_json(self) -> dict[str, object]:
        """restic's ``forget --json`` shape for one group."""
        return {
            "tags": self.tags, "host": self.host or "", "paths": self.paths,
            "keep": [s.summary() for s in self.keep] or None,
            "remove": [s.summary() for s in self.remove] or None,
            "reasons": [{"snapshot": d.snapshot.summary(), "matches": d.reasons,
                         "counters": d.counters} for d in self.decisions if d.keep] or None,
        }


def group_snapshots(snaps: Iterable[Snapshot], group_by: Sequence[str] = DEFAULT_GROUP_BY
                    ) -> list[tuple[tuple[str | None, tuple[str, ...] | None, tuple[str, ...] | None],
                                    list[Snapshot]]]:
    """Snapshots grouped by any of ``host``, ``paths``, ``tags`` (sorted keys)."""
    unknown = set(group_by) - {"host", "paths", "tags"}
    if unknown:
        raise PermanentError(f"cannot group by {', '.join(sorted(unknown))}: "
                             "use host, paths and/or tags")
    groups: dict[tuple[str | None, tuple[str, ...] | None, tuple[str, ...] | None],
                 list[Snapshot]] = {}
    for s in snaps:
        key = (s.hostname if "host" in group_by else None,
               tuple(sorted(s.paths)) if "paths" in group_by else None,
               tuple(sorted(s.tags)) if "tags" in group_by else None)
        groups.setdefault(key, []).append(s)
    return sorted(groups.items(), key=lambda kv: repr(kv[0]))


def plan(snaps: Iterable[Snapshot], policy: Policy, protected: Sequence[str] = (),
         group_by: Sequence[str] = DEFAULT_GROUP_BY, tz: tzinfo | None = None) -> list[Group]:
    """Apply ``policy`` to each group; refuses an empty policy."""
    if policy.empty():
        raise PermanentError("no retention policy given: use --keep-last, --keep-daily, ... or "
                             "--keep-tag; refusing to remove every snapshot")
    out = []
    for (host, paths, tags), members in group_snapshots(snaps, group_by):
        out.append(Group(host, list(paths) if paths is not None else None,
                         list(tags) if tags is not None else None,
                         apply_policy(members, policy, protected, tz)))
    return out


@dataclass
class ForgetResult:
    groups: list[Group]
    removed: list[str]
    dry_run: bool
    locked: dict[str, float] = field(default_factory=dict)  # snapshot id -> locked until


def remove_snapshots(repo: Repository, snaps: Iterable[Snapshot], protected: Sequence[str],
                     progress: ProgressFn = no_progress,
                     locked: dict[str, float] | None = None) -> list[str]:
    """Delete snapshot files (and their bitmaps); protected ones are refused outright.
    A snapshot file under retention (S3 Object Lock) stays: it is noted in ``locked``
    with the time its lock ends. The caller holds the exclusive lock."""
    snaps = list(snaps)
    for s in snaps:
        if is_protected(s.id, protected):
            raise PermanentError(f"snapshot {s.short_id} is on the protection list; "
                                 "it cannot be removed")
    removed = []
    for done, s in enumerate(snaps):
        progress("forget", done, len(snaps))
        try:
            repo.backend.delete(Kind.SNAPSHOTS, s.id)
        except ImmutableError as exc:
            if locked is not None:
                locked[s.id] = exc.until
            continue
        with contextlib.suppress(CoreStateError):
            repo.backend.delete(Kind.SIDECAR, f"bitmap-{s.id}")  # prune also sweeps these
        removed.append(s.id)
    progress("forget", len(snaps), len(snaps))
    return removed


def forget(repo: Repository, policy: Policy, host: str | None = None,
           group_by: Sequence[str] = DEFAULT_GROUP_BY, dry_run: bool = False,
           progress: ProgressFn = no_progress, on_damaged: OnDamaged | None = None
           ) -> ForgetResult:
    """Apply ``policy`` to the snapshots (of ``host`` if given) and delete the ones it
    does not keep. The caller holds the exclusive lock (``repo.locked(exclusive=True)``).
    Snapshot files that cannot be loaded go to ``on_damaged`` and are left alone (as
    restic does); without it they raise."""
    protected = load_protected(repo)
    snaps = [s for s in repo.list_snapshots(on_damaged) if host is None or s.hostname == host]
    groups = plan(snaps, policy, protected, group_by)
    doomed = [s for g in groups for s in g.remove]
    if dry_run:
        return ForgetResult(groups, [s.id for s in doomed], True)
    locked: dict[str, float] = {}
    removed = remove_snapshots(repo, doomed, protected, progress, locked)
    return ForgetResult(groups, removed, False, locked)
