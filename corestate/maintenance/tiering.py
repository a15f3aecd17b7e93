"""Tiering inputs from a repository: what could move to a colder storage class, how big
and how old it is, when it was read; then the advice of :mod:`corestate.models.tiering`.

Terms:

- *pack read*: a command read some bytes of a pack file (any range of ``data/``).
  :class:`RecordingBackend` wraps a backend and notes them; ``corestate restore`` and
  ``corestate check --read-data`` use it.
- *access log*: one sidecar file per command run that read packs,
  ``corestate/access-<unix seconds>-<8 hex>``, encrypted like every sidecar file. Its
  payload is JSON lines: a header ``{"time": <seconds since the epoch>, "command":
  "restore"|"check", "snapshot": <id or null>}``, then one ``{"pack": <id>, "bytes": <n>}``
  per pack read. It is written once, when the run ends (:func:`save_access_log`): a new
  name each time, so concurrent runs never race and a run killed while writing leaves
  the whole file or nothing (a killed run's reads are not counted). Unreadable files and
  lines are skipped: the log only ever informs advice.
- *candidate pack*: an indexed data pack that is stored and that some snapshot uses.
  Tree packs are never candidates: every backup (the parent's trees), ``ls``, ``find``,
  ``diff`` and ``check`` read them, and in a class without immediate reads they would
  stop all of those. Packs no snapshot uses are not candidates either: prune deletes
  them, and a class with a minimum duration would bill that early deletion.
- *snapshot object*: the candidate packs exactly one snapshot uses, as one object (the
  model's ``kind="snapshot"``): its id is the snapshot id, its size their total, its
  creation time the snapshot's time. Moving the snapshot moves those packs.
- *pack object*: a candidate pack that several snapshots use. Its creation time is the
  time of the oldest snapshot that uses it: the earliest time the pack is known to
  exist, since the repository keeps no file times (a pack that prune rewrote is younger
  than that, so its age is overstated).
- *access* of an object: a run in the access log that read any of its packs, at the
  run's time; one per run and object however many of its packs the run read, counted by
  the model as a read of the whole object (an upper bound on retrieval fees). A
  ``check --read-data`` reads every pack, so a regular full check makes cold storage
  cost what it really would.
- *class record*: one sidecar file per ``tiering --apply`` run,
  ``corestate/classes-<unix seconds>-<8 hex>``, encrypted; JSON lines: a header
  ``{"time"}``, then one ``{"pack", "class"}`` per pack moved. Later runs win. A pack
  with no record is in the first class of the price list (where backups write);
- *current class* of an object: the recorded class of its packs (of most of its bytes,
  should they differ);
- *moving* an object (:func:`apply`) changes the storage class of each of its packs on
  the store (S3: the object copied onto itself with the new class) and records it;
- an *archive class* (:data:`ARCHIVE_CLASSES`: S3's GLACIER and DEEP_ARCHIVE) serves no
  read until a restore request has made a temporary copy: restore and ``check
  --read-data`` refuse upfront, naming the packs' classes and what to do, rather than
  failing half-way on the first such pack.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import orjson

from corestate.errors import CoreStateError, NotFoundError, PermanentError
from corestate.maintenance import ProgressFn, no_progress
from corestate.maintenance.usage import snapshot_usage, tree_blob_ids
from corestate.models import tiering as model
from corestate.repository import ordinals
from corestate.repository.backend import Backend, Kind, WrappedBackend
from corestate.repository.pack import BlobType
from corestate.repository.repository import Repository
from corestate.repository.snapshot import Snapshot

ACCESS_PREFIX = "access-"
CLASSES_PREFIX = "classes-"
ARCHIVE_CLASSES = frozenset({"GLACIER", "DEEP_ARCHIVE"})  # S3: no read without a restore


# -- recording ------------------------------------------------------------------------------
def _unwrapped(inner: Backend) -> Backend:
    return inner


class RecordingBackend(WrappedBackend):
    """A :class:`~corestate.repository.backend.Backend` that passes everything to
    ``inner`` and notes, per pack, how many bytes were read from it (thread-safe)."""

    def __init__(self, inner: Backend) -> None:
        super().__init__(inner)
        self._reads: dict[str, int] = {}
        self._lock = threading.Lock()

    @property
    def reads(self) -> dict[str, int]:
        """Bytes read so far, per pack id."""
        with self._lock:
            return dict(self._reads)

    def note(self, reads: dict[str, int]) -> None:
        """Add reads made elsewhere (restore's worker processes) to the record."""
        with self._lock:
            for pack, n in reads.items():
                self._reads[pack] = self._reads.get(pack, 0) + n

    def __reduce__(self) -> tuple[object, tuple[Backend]]:
        # A copy for another process is the plain backend: what that process reads it
        # reports back, and :meth:`note` records it here.
        return (_unwrapped, (self.inner,))

    def read(self, kind: Kind, name: str, offset: int = 0, length: int | None = None) -> bytes:
        data = self.inner.read(kind, name, offset, length)
        if kind is Kind.DATA:
            with self._lock:
                self._reads[name] = self._reads.get(name, 0) + len(data)
        return data


@dataclass(frozen=True)
class AccessRun:
    """One command run of the access log: when, which command, and bytes per pack."""

    time: float
    command: str
    packs: Mapping[str, int]
    snapshot: str | None = None


def encode_run(run: AccessRun) -> bytes:
    """The JSON-lines payload of an access log file.

    >>> encode_run(AccessRun(1.5, "restore", {"ab": 10}, "s1")).decode().splitlines()
    ['{"time":1.5,"command":"restore","snapshot":"s1"}', '{"pack":"ab","bytes":10}']
    """
    lines = [orjson.dumps({"time": run.time, "command": run.command, "snapshot": run.snapshot})]
    lines += [orjson.dumps({"pack": p, "bytes": n}) for p, n in sorted(run.packs.items())]
    return b"\n".join(lines) + b"\n"


def decode_run(payload: bytes) -> AccessRun | None:
    """An access log payload back as a run; None without a valid header. Lines that are
    not valid are skipped.

    >>> head = b'{"time":3,"command":"check","snapshot":null}'
    >>> decode_run(head + b'\\nnot json\\n{"pack":"cd","bytes":4}\\n')
    AccessRun(time=3.0, command='check', packs={'cd': 4}, snapshot=None)
    >>> decode_run(b'{"pack":"cd","bytes":4}') is None
    True
    """
    docs = []
    for line in payload.splitlines():
        try:
            docs.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            continue
    head = docs[0] if docs else None
    if not isinstance(head, dict) or not isinstance(head.get("time"), (int, float)):
        return None
    packs: dict[str, int] = {}
    for doc in docs[1:]:
        if isinstance(doc, dict) and isinstance(doc.get("pack"), str):
            size = doc.get("bytes")
            packs[doc["pack"]] = packs.get(doc["pack"], 0) + (size if isinstance(size, int) else 0)
    snap = head.get("snapshot")
    return AccessRun(float(head["time"]), str(head.get("command") or "read"), packs,
                     snap if isinstance(snap, str) else None)


def save_access_log(repo: Repository, run: AccessRun) -> str | None:
    """Store ``run`` as a new access log file; returns its name (None if it read no pack).

    Raises what the backend raises; callers warn and carry on, a restore must not fail
    for its log."""
    if not run.packs:
        return None
    name = f"{ACCESS_PREFIX}{max(0, int(run.time)):012d}-{secrets.token_hex(4)}"
    repo.save_sidecar(name, encode_run(run))
    return name


@dataclass
class AccessLog:
    """Every readable run of a repository's access log, oldest first, and how many log
    files could not be read."""

    runs: list[AccessRun] = field(default_factory=list)
    unreadable: int = 0


def load_access_log(repo: Repository) -> AccessLog:
    """Every access log file of ``repo``; one that cannot be decrypted or has no valid
    header is counted in :attr:`AccessLog.unreadable` and otherwise ignored."""
    log = AccessLog()
    for name in repo.list_sidecar():
        if not name.startswith(ACCESS_PREFIX):
            continue
        try:
            run = decode_run(repo.load_sidecar(name))
        except NotFoundError:
            continue  # removed since the listing
        except CoreStateError:
            run = None
        if run is None:
            log.unreadable += 1
        else:
            log.runs.append(run)
    log.runs.sort(key=lambda r: r.time)
    return log


# -- objects ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Candidate:
    """A model object and the packs it stands for."""

    object: model.StoredObject
    packs: tuple[str, ...]


@dataclass
class Inventory:
    """The candidates of a repository, and what was left out (counts of packs)."""

    candidates: list[Candidate] = field(default_factory=list)
    tree_packs: int = 0
    unused_packs: int = 0


def inventory(repo: Repository, current: str = "STANDARD",
              progress: ProgressFn = no_progress,
              classes: Mapping[str, str] | None = None) -> Inventory:
    """Snapshot and pack objects (see the module doc), in their recorded class
    (``classes``: pack id -> class), else in class ``current``.

    Reads the index, the ordinal table and every snapshot's blob bitmap (walking the
    trees of a snapshot whose bitmap is missing or stale); stores nothing."""
    repo.load_index()
    sizes = {f.name: f.size for f in repo.backend.list(Kind.DATA)}
    table = ordinals.load_table(repo)
    owner: list[str | None] = [None] * len(table)
    data_packs: set[str] = set()
    inv = Inventory()
    for pack_id, entries in repo.index.packs.items():
        if pack_id not in sizes:
            continue  # indexed but missing: `corestate check` reports it
        if entries and entries[0].type is BlobType.DATA:
            data_packs.add(pack_id)
        elif entries:
            inv.tree_packs += 1
        for entry in entries:
            ordinal = table.get(entry.id)
            loc = repo.index.lookup(entry.id)
            if ordinal is not None and loc is not None and loc.pack == pack_id:
                owner[ordinal] = pack_id  # the copy reads go to
    snaps = repo.list_snapshots()
    first_user: dict[str, int] = {}  # pack -> index of the oldest snapshot using it
    shared: set[str] = set()
    for i, usage in enumerate(snapshot_usage(repo, snaps, table, progress=progress)):
        used = {owner[o] for o in usage.bitmap if o < len(owner)}
        for used_pack in used:
            if used_pack is None or used_pack not in data_packs:
                continue
            if used_pack in first_user:
                shared.add(used_pack)
            else:
                first_user[used_pack] = i
    inv.unused_packs = len(data_packs) - len(first_user)
    exclusive: dict[int, list[str]] = {}
    for pack_id in sorted(first_user):
        i = first_user[pack_id]
        if pack_id in shared:
            obj = model.StoredObject(pack_id, "pack", sizes[pack_id], snaps[i].time / 1e9,
                                     (classes or {}).get(pack_id, current))
            inv.candidates.append(Candidate(obj, (pack_id,)))
        else:
            exclusive.setdefault(i, []).append(pack_id)
    for i, packs in sorted(exclusive.items()):
        weight: dict[str, int] = {}
        for p in packs:
            cls = (classes or {}).get(p, current)
            weight[cls] = weight.get(cls, 0) + sizes[p]
        obj = model.StoredObject(snaps[i].id, "snapshot", sum(sizes[p] for p in packs),
                                 snaps[i].time / 1e9, max(weight, key=lambda c: weight[c]))
        inv.candidates.append(Candidate(obj, tuple(packs)))
    return inv


def accesses(candidates: Iterable[Candidate], runs: Iterable[AccessRun]) -> list[model.Access]:
    """One access per run and candidate that the run read any pack of."""
    of_pack = {p: c.object.id for c in candidates for p in c.packs}
    out = []
    for run in runs:
        hit = {of_pack[p] for p in run.packs if p in of_pack}
        out += [model.Access(run.time, obj_id, run.command) for obj_id in sorted(hit)]
    return out


# -- prices ---------------------------------------------------------------------------------------
def parse_prices(doc: object, source: str = "price list") -> tuple[model.StorageClass, ...]:
    """Storage classes from JSON: a list of objects with the fields of
    :class:`~corestate.models.tiering.StorageClass` (``name``, ``storage`` in USD per
    GiB-month, ``retrieval`` in USD per GiB read, ``min_days``, optional ``immediate``,
    default true). The first class is where objects are now.

    >>> parse_prices([{"name": "HOT", "storage": 0.02, "retrieval": 0, "min_days": 0},
    ...               {"name": "COLD", "storage": 0.001, "retrieval": 0.05, "min_days": 90,
    ...                "immediate": False}])[1]
    StorageClass(name='COLD', storage=0.001, retrieval=0.05, min_days=90.0, immediate=False)
    """
    if not isinstance(doc, list) or not doc:
        raise PermanentError(f"{source}: expected a non-empty JSON list of storage classes")
    out: list[model.StorageClass] = []
    for i, entry in enumerate(doc):
        where = f"{source}: class {i + 1}"
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(entry, dict) or not isinstance(name, str) or not name:
            raise PermanentError(f"{where}: expected an object with a \"name\"")
        numbers = {}
        for key in ("storage", "retrieval", "min_days"):
            value = entry.get(key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise PermanentError(f"{where} ({name}): \"{key}\" must be a number >= 0")
            numbers[key] = float(value)
        immediate = entry.get("immediate", True)
        if not isinstance(immediate, bool):
            raise PermanentError(f"{where} ({name}): \"immediate\" must be true or false")
        if any(c.name == name for c in out):
            raise PermanentError(f"{where}: class {name!r} is listed twice")
        out.append(model.StorageClass(name, numbers["storage"], numbers["retrieval"],
                                      numbers["min_days"], immediate))
    return tuple(out)


# -- advice --------------------------------------------------------------------------------------
@dataclass
class TieringReport:
    """Advice for a repository at ``now``, and what it was computed from."""

    now: float
    prices: tuple[model.StorageClass, ...]
    advice: list[model.Advice]
    objects: dict[str, Candidate]  # by object id
    last_read: dict[str, float]  # object id -> time of its latest access up to ``now``
    candidates: int
    tree_packs: int
    unused_packs: int
    access_runs: int
    unreadable_logs: int
    classes: dict[str, str] = field(default_factory=dict)  # recorded: pack id -> class

    @property
    def total_saving(self) -> float:
        return model.total_saving(self.advice)

    def by_target(self) -> dict[str, tuple[int, int, float]]:
        """Per advised class: ``(objects, bytes, monthly saving)``."""
        out: dict[str, tuple[int, int, float]] = {}
        for a in self.advice:
            n, size, saving = out.get(a.target, (0, 0, 0.0))
            out[a.target] = (n + 1, size + a.size, saving + a.monthly_saving)
        return out

    def to_json(self) -> dict[str, object]:
        return {
            "now": self.now,
            "current_class": self.prices[0].name,
            "prices": [{"name": c.name, "storage": c.storage, "retrieval": c.retrieval,
                        "min_days": c.min_days, "immediate": c.immediate} for c in self.prices],
            "advice": [{"id": a.object_id, "kind": a.kind, "size": a.size, "current": a.current,
                        "target": a.target, "reads_per_month": a.reads_per_month,
                        "monthly_cost_now": a.monthly_cost_now,
                        "monthly_cost_after": a.monthly_cost_after,
                        "monthly_saving": a.monthly_saving, "reason": a.reason,
                        "created": self.objects[a.object_id].object.created,
                        "last_read": self.last_read.get(a.object_id),
                        "packs": list(self.objects[a.object_id].packs)} for a in self.advice],
            "by_target": {name: {"objects": n, "size": size, "monthly_saving": saving}
                          for name, (n, size, saving) in self.by_target().items()},
            "total_size": sum(a.size for a in self.advice),
            "total_monthly_saving": self.total_saving,
            "candidates": self.candidates, "tree_packs": self.tree_packs,
            "unused_packs": self.unused_packs, "access_runs": self.access_runs,
            "unreadable_access_logs": self.unreadable_logs,
            "classes": class_counts(self.classes),
        }


def advise(repo: Repository, now: float,
           prices: tuple[model.StorageClass, ...] = model.EXAMPLE_PRICES,
           min_saving: float = 0.0, progress: ProgressFn = no_progress) -> TieringReport:
    """Which snapshots and packs of ``repo`` to move, as of ``now`` (seconds since the
    epoch), largest monthly saving first; moves saving less than ``min_saving`` USD a
    month are left out."""
    classes = load_classes(repo)
    inv = inventory(repo, prices[0].name, progress, classes)
    log = load_access_log(repo)
    reads = accesses(inv.candidates, log.runs)
    advice = model.advise([c.object for c in inv.candidates], reads, now, prices,
                          min_saving=min_saving)
    last_read: dict[str, float] = {}
    for a in reads:
        if a.time <= now:
            last_read[a.object_id] = max(a.time, last_read.get(a.object_id, a.time))
    return TieringReport(now, prices, advice, {c.object.id: c for c in inv.candidates},
                         last_read, len(inv.candidates), inv.tree_packs, inv.unused_packs,
                         len(log.runs), log.unreadable, classes)


# -- moving data ---------------------------------------------------------------------------
def class_counts(classes: Mapping[str, str]) -> dict[str, int]:
    """Packs per recorded class."""
    out: dict[str, int] = {}
    for cls in classes.values():
        out[cls] = out.get(cls, 0) + 1
    return dict(sorted(out.items()))


def load_classes(repo: Repository) -> dict[str, str]:
    """Every pack's recorded class (see the module doc), for packs still stored. Records
    only inform: an unreadable sidecar directory or file counts as no record."""
    runs: list[tuple[float, dict[str, str]]] = []
    try:
        names = repo.list_sidecar()
    except CoreStateError:
        names = []
    for name in names:
        if not name.startswith(CLASSES_PREFIX):
            continue
        try:
            lines = repo.load_sidecar(name).splitlines()
            head = orjson.loads(lines[0]) if lines else None
            if not isinstance(head, dict) or not isinstance(head.get("time"), (int, float)):
                continue
            moved = {}
            for line in lines[1:]:
                doc = orjson.loads(line)
                if isinstance(doc, dict) and isinstance(doc.get("pack"), str) \
                        and isinstance(doc.get("class"), str):
                    moved[doc["pack"]] = doc["class"]
            runs.append((float(head["time"]), moved))
        except (CoreStateError, orjson.JSONDecodeError):
            continue  # an unreadable record only informs advice less
    stored = {f.name for f in repo.backend.list(Kind.DATA)} if runs else set()
    out: dict[str, str] = {}
    for _, moved in sorted(runs, key=lambda run: run[0]):
        out.update((p, c) for p, c in moved.items() if p in stored)
    return out


def save_classes(repo: Repository, when: float, moved: Mapping[str, str]) -> str | None:
    """Record the packs moved by one run; returns the file's name (None if none moved)."""
    if not moved:
        return None
    name = f"{CLASSES_PREFIX}{max(0, int(when)):012d}-{secrets.token_hex(4)}"
    lines = [orjson.dumps({"time": when})]
    lines += [orjson.dumps({"pack": p, "class": c}) for p, c in sorted(moved.items())]
    repo.save_sidecar(name, b"\n".join(lines) + b"\n")
    return name


def apply(repo: Repository, report: TieringReport, move: Callable[[str, str], None],
          when: float, progress: ProgressFn = no_progress) -> dict[str, str]:
    """Move every advised object's packs to its target class with ``move(pack, class)``
    and record them (also when a move fails half-way: what moved stays recorded).
    Returns pack id -> new class."""
    todo = [(p, a.target) for a in report.advice for p in report.objects[a.object_id].packs]
    moved: dict[str, str] = {}
    try:
        for done, (pack_id, target) in enumerate(todo):
            progress("move packs", done, len(todo))
            move(pack_id, target)
            moved[pack_id] = target
        progress("move packs", len(todo), len(todo))
    finally:
        save_classes(repo, when, moved)
    return moved


def archived_packs(repo: Repository, snapshot: Snapshot | None = None) -> dict[str, str]:
    """Recorded packs in an archive class (of those ``snapshot`` uses, if given)."""
    cold = {p: c for p, c in load_classes(repo).items() if c in ARCHIVE_CLASSES}
    if not cold or snapshot is None:
        return cold
    repo.load_index()
    needed = set()
    for blob in tree_blob_ids(repo, snapshot.tree):
        loc = repo.index.lookup(blob)
        if loc is not None:
            needed.add(loc.pack)
    return {p: c for p, c in cold.items() if p in needed}


def archived_message(cold: Mapping[str, str], what: str) -> str:
    """What to do about ``cold`` packs that ``what`` (e.g. "this restore") would read."""
    counts = ", ".join(f"{n} in {c}" for c, n in class_counts(cold).items())
    return (f"{what} needs {len(cold)} packs that `corestate tiering --apply` moved to an "
            f"archive class ({counts}), which S3 reads only after a restore request: list "
            "them with `corestate tiering --archived`, request their restore (e.g. `aws s3api "
            "restore-object --bucket BUCKET --key KEY --restore-request Days=7`), and run "
            "this again once they are readable")
