"""A repository: a backend plus the master key, read and written in restic's format v2.

*Unpacked files* (index, snapshots, locks) are stored as ``encrypt(0x02 || zstd(json))``
and named by the SHA-256 of the stored bytes; ``config`` is ``encrypt(json)``. Blobs live
in packs (:mod:`.pack`), found through the master index (:mod:`.index`).

Write order is what keeps a repository consistent when a process dies at any point:
packs first, then the index files that list them, then the snapshot. A pack without an
index entry is harmless (``adopt_orphan_packs`` indexes it on the next backup); an index
entry always points at an existing pack; a snapshot always points at indexed blobs.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Callable, Iterator

import orjson
import zstandard

from corestate.errors import (CoreStateError, IntegrityError, NotFoundError, PermanentError,
                              RepositoryLockedError)
from corestate.repository import keys as keyfiles
from corestate.repository import lock as locks
from corestate.repository.backend import Backend, Kind
from corestate.repository.config import Config
from corestate.repository.crypto import Key
from corestate.repository.index import MasterIndex, index_from_json, index_to_json
from corestate.repository.pack import (BlobType, PackedBlob, header_size_bound, open_blob,
                                       parse_header)
from corestate.repository.snapshot import Snapshot
from corestate.repository.tree import Node, decode_tree

_COMPRESSED_JSON = 0x02
OnDamaged = Callable[[str, CoreStateError], None]
"""``on_damaged(file id, error)``: told of a snapshot file that cannot be loaded."""
INDEX_PACKS_PER_FILE = 50


def decode_unpacked(plain: bytes, what: str) -> object:
    """The JSON of a decrypted unpacked file: raw JSON, or 0x02 then zstd-compressed
    JSON. IntegrityError naming ``what`` if it is neither."""
    if plain[:1] == bytes([_COMPRESSED_JSON]):
        try:
            plain = zstandard.ZstdDecompressor().decompressobj().decompress(plain[1:])
        except zstandard.ZstdError as exc:
            raise IntegrityError(f"{what}: cannot decompress ({exc})") from None
    try:
        return orjson.loads(plain)
    except orjson.JSONDecodeError:
        raise IntegrityError(f"{what}: not valid JSON") from None


class Repository:
    """An open repository. Thread-safe for concurrent blob reads and pack writes."""

    def __init__(self, backend: Backend, key: Key, config: Config, key_id: str) -> None:
        self.backend = backend
        self.key = key
        self.config = config
        self.key_id = key_id
        self.index = MasterIndex()
        self._index_loaded = False
        self._pending: dict[str, list[PackedBlob]] = {}
        self._lock = threading.Lock()

    def __reduce__(self) -> tuple[type[Repository], tuple[Backend, Key, Config, str]]:
        """A copy for another process: the same backend and key, nothing loaded yet."""
        return (Repository, (self.backend, self.key, self.config, self.key_id))

    # -- opening ------------------------------------------------------------------------
    @classmethod
    def init(cls, backend: Backend, password: keyfiles.Password) -> Repository:
        if backend.exists():
            try:
                backend.stat(Kind.CONFIG, "")
                raise PermanentError(f"{backend.location()}: a repository already exists here")
            except NotFoundError:
                pass
        if not password:  # before anything is created
            raise PermanentError("an empty password is not a password")
        backend.create()
        key = Key.random()
        config = Config.new()
        backend.write(Kind.CONFIG, "", key.encrypt(config.to_bytes()))
        key_id = keyfiles.create_key_file(backend, key, password)
        return cls(backend, key, config, key_id)

    @classmethod
    def open(cls, backend: Backend, password: keyfiles.Password) -> Repository:
        if not backend.exists():
            raise PermanentError(f"{backend.location()}: repository does not exist")
        try:
            raw_config = backend.read(Kind.CONFIG, "")
        except NotFoundError:
            raise PermanentError(f"{backend.location()}: not a repository (no config file)") from None
        key, key_id = keyfiles.open_master_key(backend, password)
        config = Config.from_bytes(key.decrypt(raw_config, "config"))
        if config.version < 2:
            raise PermanentError(f"{backend.location()}: repository format v1 is read-only here; "
                                 "run `restic migrate upgrade_repo_v2` first")
        return cls(backend, key, config, key_id)

    # -- unpacked files -----------------------------------------------------------------
    def save_json(self, kind: Kind, doc: object) -> str:
        plain = bytes([_COMPRESSED_JSON]) + zstandard.ZstdCompressor(level=3).compress(orjson.dumps(doc))
        data = self.key.encrypt(plain)
        file_id = hashlib.sha256(data).hexdigest()
        self.backend.write(kind, file_id, data)
        return file_id

    def load_json(self, kind: Kind, file_id: str) -> object:
        data = self.backend.read(kind, file_id)
        what = f"{kind.value}/{file_id[:16]}"
        if hashlib.sha256(data).hexdigest() != file_id:
            raise IntegrityError(f"{what}: content does not match its name")
        return decode_unpacked(self.key.decrypt(data, what), what)

    def resolve(self, kind: Kind, prefix: str) -> str:
        """The full name of the file of ``kind`` whose name starts with ``prefix``."""
        matches = [f.name for f in self.backend.list(kind) if f.name.startswith(prefix)]
        if not matches:
            raise NotFoundError(f"no {kind.value} file matches {prefix!r}")
        if len(matches) > 1:
            raise PermanentError(f"{prefix!r} is ambiguous: {len(matches)} {kind.value} files match")
        return matches[0]

    # -- CoreState's own sidecar files (restic ignores the directory) ---------------------
    def save_sidecar(self, name: str, payload: bytes) -> None:
        """Store our rebuildable metadata encrypted under ``corestate/<name>``."""
        self.backend.write(Kind.SIDECAR, name,
                           self.key.encrypt(zstandard.ZstdCompressor(level=3).compress(payload)))

    def load_sidecar(self, name: str) -> bytes:
        data = self.key.decrypt(self.backend.read(Kind.SIDECAR, name), f"corestate/{name}")
        try:
            return zstandard.ZstdDecompressor().decompressobj().decompress(data)
        except zstandard.ZstdError as exc:
            raise IntegrityError(f"corestate/{name}: cannot decompress ({exc})") from None

    def list_sidecar(self) -> list[str]:
        return [f.name for f in self.backend.list(Kind.SIDECAR)]

    # -- index ----------------------------------------------------------------------------
    def load_index(self) -> MasterIndex:
        """Read every index file (once) into :attr:`index`."""
        if self._index_loaded:
            return self.index
        for info in self.backend.list(Kind.INDEX):
            packs, _ = index_from_json(self.load_json(Kind.INDEX, info.name))
            for pack_id, blobs in packs.items():
                self.index.add_pack(pack_id, blobs)
            self.index.files.add(info.name)
        self._index_loaded = True
        return self.index

    def reload_index(self) -> MasterIndex:
        """Forget the loaded index and read every index file again."""
        with self._lock:
            self.index = MasterIndex()
            self._index_loaded = False
            self._pending.clear()
        return self.load_index()

    def refresh_index(self) -> bool:
        """Catch up with index files written since the last load (by other backups).

        Returns True if the index had to be reloaded from scratch because a file it
        knew is gone (prune rewrote the index): blobs known before may be gone too."""
        if not self._index_loaded:
            self.load_index()
            return True
        names = {f.name for f in self.backend.list(Kind.INDEX)}
        if not self.index.files <= names:
            with self._lock:
                self.index = MasterIndex()
                self._index_loaded = False
                self._pending.clear()
            self.load_index()
            return True
        for name in names - self.index.files:
            packs, _ = index_from_json(self.load_json(Kind.INDEX, name))
            for pack_id, blobs in packs.items():
                self.index.add_pack(pack_id, blobs)
            self.index.files.add(name)
        return False

    def read_pack_header(self, pack_id: str, size: int | None = None) -> list[PackedBlob]:
        """Entries of a stored pack, from its header (IntegrityError if damaged)."""
        if size is None:
            size = self.backend.stat(Kind.DATA, pack_id).size
        # Read a generous tail first; most headers fit in it.
        tail_len = min(size, 64 * 1024)
        tail = self.backend.read(Kind.DATA, pack_id, size - tail_len, tail_len)
        if len(tail) >= 4:
            hlen = int.from_bytes(tail[-4:], "little")
            if hlen + 4 > tail_len and hlen + 4 <= size:
                tail = self.backend.read(Kind.DATA, pack_id, size - hlen - 4, hlen + 4)
        return parse_header(self.key, pack_id, tail, size)

    def add_pack(self, pack_id: str, data: bytes | bytearray, entries: list[PackedBlob]) -> None:
        """Store a finished pack; its index entry is written by :meth:`flush_index`."""
        self.backend.write(Kind.DATA, pack_id, data)  # type: ignore[arg-type]  # bytes-like
        with self._lock:
            self.index.add_pack(pack_id, entries)
            self._pending[pack_id] = entries
            full = len(self._pending) >= INDEX_PACKS_PER_FILE
        if full:
            self.flush_index()

    def flush_index(self) -> str | None:
        """Write an index file for packs stored since the last flush."""
        with self._lock:
            pending, self._pending = self._pending, {}
        if not pending:
            return None
        try:
            file_id = self.save_json(Kind.INDEX, index_to_json(pending))
        except BaseException:  # still to be indexed: the next flush writes them
            with self._lock:
                self._pending = {**pending, **self._pending}
            raise
        with self._lock:
            self.index.files.add(file_id)
        return file_id

    def adopt_orphan_packs(self) -> int:
        """Index packs that are stored but listed in no index (left by a killed backup),
        so their blobs are reused. Damaged orphans are left for prune. Returns how many."""
        self.load_index()
        adopted = 0
        for info in self.backend.list(Kind.DATA):
            if info.name in self.index.packs:
                continue
            try:
                entries = self.read_pack_header(info.name, info.size)
            except IntegrityError:
                continue
            with self._lock:
                self.index.add_pack(info.name, entries)
                self._pending[info.name] = entries
            adopted += 1
        self.flush_index()
        return adopted

    # -- blobs ------------------------------------------------------------------------------
    def has_blob(self, blob_id: bytes, btype: BlobType) -> bool:
        return self.index.has_type(blob_id, btype)

    def load_blob(self, blob_id: bytes) -> bytes:
        """A blob's plaintext, verified; tries every copy before giving up."""
        locations = self.index.all_locations(blob_id)
        if not locations:
            raise NotFoundError(f"blob {blob_id.hex()[:16]} is not in the index")
        error: IntegrityError | None = None
        for loc in locations:
            try:
                stored = self.backend.read(Kind.DATA, loc.pack, loc.blob.offset, loc.blob.length)
                if len(stored) != loc.blob.length:
                    raise IntegrityError(f"pack {loc.pack[:16]}: truncated, blob "
                                         f"{blob_id.hex()[:16]} is cut off")
                return open_blob(self.key, loc.blob, stored)
            except (IntegrityError, NotFoundError) as exc:
                error = IntegrityError(f"{exc} (in pack {loc.pack[:16]})")
        assert error is not None
        raise error

    def load_tree(self, tree_id: bytes, damaged: bool = False) -> list[Node]:
        """The nodes of a tree. Nodes whose stored JSON is damaged (see
        :attr:`~.tree.Node.damage`) are left out unless ``damaged``: a reader that
        does not report them must not use them (a backup re-reads such a file)."""
        blob = self.load_blob(tree_id)
        try:
            nodes = decode_tree(blob)
        except IntegrityError as exc:
            raise IntegrityError(f"tree {tree_id.hex()[:16]}: {exc}") from None
        return nodes if damaged else [n for n in nodes if not n.damage]

    # -- snapshots ----------------------------------------------------------------------------
    def save_snapshot(self, snap: Snapshot) -> str:
        snap.id = self.save_json(Kind.SNAPSHOTS, snap.to_json())
        return snap.id

    def load_snapshot(self, snap_id: str) -> Snapshot:
        doc = self.load_json(Kind.SNAPSHOTS, snap_id)
        return Snapshot.from_json(doc, snap_id)

    def list_snapshots(self, on_damaged: OnDamaged | None = None) -> list[Snapshot]:
        """Every snapshot, oldest first. A snapshot file that cannot be loaded raises,
        unless ``on_damaged`` is given: then it is told the file's id and the error, and
        the file is left out (restic lists the intact ones and warns)."""
        snaps = []
        for info in self.backend.list(Kind.SNAPSHOTS):
            try:
                snaps.append(self.load_snapshot(info.name))
            except (IntegrityError, NotFoundError) as exc:
                if on_damaged is None:
                    raise
                on_damaged(info.name, exc)
        snaps.sort(key=lambda s: (s.time, s.id))
        return snaps

    def find_snapshot(self, ref: str, host: str | None = None,
                      paths: list[str] | None = None,
                      on_damaged: OnDamaged | None = None) -> Snapshot:
        """``latest`` (optionally for a host/paths) or an id prefix; ``on_damaged``
        as for :meth:`list_snapshots`."""
        if ref == "latest":
            snaps = [s for s in self.list_snapshots(on_damaged)
                     if (host is None or s.hostname == host)
                     and (paths is None or sorted(s.paths) == sorted(paths))]
            if not snaps:
                raise NotFoundError("no snapshot found" + (f" for host {host}" if host else ""))
            return snaps[-1]
        return self.load_snapshot(self.resolve(Kind.SNAPSHOTS, ref))

    def snapshot_at(self, at_ns: int, host: str | None = None,
                    path: str | None = None, on_damaged: OnDamaged | None = None) -> Snapshot:
        """The newest snapshot taken at or before ``at_ns`` (of a host, or containing
        a path): the state of the protected tree at that moment."""
        snaps = [s for s in self.list_snapshots(on_damaged)
                 if s.time <= at_ns and (host is None or s.hostname == host)
                 and (path is None or any(path == p or path.startswith(p.rstrip("/") + "/")
                                          for p in s.paths))]
        if not snaps:
            raise NotFoundError("no snapshot was taken at or before that time")
        return snaps[-1]

    # -- locks ---------------------------------------------------------------------------------
    def list_locks(self) -> list[locks.LockInfo]:
        out = []
        for info in self.backend.list(Kind.LOCKS):
            try:  # a lock that cannot be read holds nothing (restic ignores it too)
                doc = self.load_json(Kind.LOCKS, info.name)
                out.append(locks.parse_lock(info.name, orjson.dumps(doc)))
            except (IntegrityError, NotFoundError):
                continue
        return out

    @contextlib.contextmanager
    def locked(self, exclusive: bool = False,
               unlockable: Callable[[CoreStateError], None] | None = None) -> Iterator[None]:
        """Hold a restic-compatible lock for the duration of the block.

        A lock that cannot be written at all (a read-only repository) raises, unless
        ``unlockable`` is given: then it is called with the error and the block runs
        without a lock (fine for readers: nobody can prune what they cannot write)."""
        try:
            lock_id = self.save_json(Kind.LOCKS, orjson.loads(locks.lock_document(exclusive)))
        except PermanentError as exc:
            if unlockable is None:
                raise
            unlockable(exc)
            yield
            return
        existing = self.list_locks()
        for lock in existing:
            if lock.id != lock_id and lock.held_by_dead_local_process():
                # certainly stale (its process is gone); restic would need `unlock` first
                with contextlib.suppress(NotFoundError):
                    self.backend.delete(Kind.LOCKS, lock.id)
        try:
            locks.check_conflicts(existing, exclusive, lock_id)
        except RepositoryLockedError:
            self.backend.delete(Kind.LOCKS, lock_id)
            raise
        current = [lock_id]

        def refresh() -> None:
            new_id = self.save_json(Kind.LOCKS, orjson.loads(locks.lock_document(exclusive)))
            old, current[0] = current[0], new_id
            self.backend.delete(Kind.LOCKS, old)

        refresher = locks.Refresher(refresh)
        try:
            yield
        finally:
            refresher.stop()
            with contextlib.suppress(NotFoundError):
                self.backend.delete(Kind.LOCKS, current[0])

    def remove_stale_locks(self, all_locks: bool = False) -> int:
        removed = 0
        for lock in self.list_locks():
            if all_locks or lock.is_stale():
                with contextlib.suppress(NotFoundError):
                    self.backend.delete(Kind.LOCKS, lock.id)
                removed += 1
        return removed

    def close(self) -> None:
        self.flush_index()
        self.backend.close()


__all__ = ["Repository", "header_size_bound"]
