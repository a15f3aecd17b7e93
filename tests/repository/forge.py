"""Forging repository content a correct writer never produces: trees with hostile or
damaged entries, damaged snapshot and key files. Tests use it to attack the readers."""

from __future__ import annotations

import hashlib
from pathlib import Path

import orjson

from corestate.connectors.local import LocalBackend
from corestate.repository.pack import BlobType, PackBuilder, seal_blob
from corestate.repository.repository import Repository
from corestate.repository.snapshot import Snapshot
from corestate.repository.timefmt import format_time
from tests.conftest import PASSWORD



def new_repo(path: Path) -> Repository:
    return Repository.init(LocalBackend(str(path)), PASSWORD)


def store_blobs(repo: Repository, btype: BlobType, blobs: list[bytes]) -> list[bytes]:
    """Store plaintexts as one pack of ``btype`` blobs, indexed; their ids."""
    builder = PackBuilder(btype)
    ids = []
    for plain in blobs:
        blob_id = hashlib.sha256(plain).digest()
        builder.add(seal_blob(repo.key, blob_id, btype, plain, None))
        ids.append(blob_id)
    pack_id, data, entries = builder.finish(repo.key)
    repo.add_pack(pack_id, data, entries)
    repo.flush_index()
    return ids


def file_node(name: str, content: list[bytes], size: int, **extra: object) -> dict[str, object]:
    """A file node's JSON; ``name`` is stored as given (already quoted)."""
    t = format_time(1_700_000_000_000_000_000)
    return {"name": name, "type": "file", "mode": 0o644, "mtime": t, "atime": t, "ctime": t,
            "uid": 0, "gid": 0, "size": size, "content": [c.hex() for c in content], **extra}


def dir_node(name: str, subtree: bytes) -> dict[str, object]:
    t = format_time(1_700_000_000_000_000_000)
    return {"name": name, "type": "dir", "mode": (1 << 31) | 0o755, "mtime": t, "atime": t,
            "ctime": t, "uid": 0, "gid": 0, "content": None, "subtree": subtree.hex()}


def store_tree(repo: Repository, nodes: list[object]) -> bytes:
    """Store a tree blob holding exactly ``nodes`` (no sorting, no checks)."""
    return store_blobs(repo, BlobType.TREE, [orjson.dumps({"nodes": nodes}) + b"\n"])[0]


def forge_snapshot(repo: Repository, root_nodes: list[object], time_ns: int = 1_700_000_000 * 10**9,
                   paths: list[str] | None = None) -> str:
    """A snapshot whose root tree holds ``root_nodes``; its id."""
    tree = store_tree(repo, root_nodes)
    return repo.save_snapshot(Snapshot(time=time_ns, tree=tree, paths=paths or ["/forged"],
                                       hostname="forge"))
