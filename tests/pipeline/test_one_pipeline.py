"""One pipeline: the same tree through the embedded runner and through distributed
mode's path (an agent's capture events, chunk stage, pack stage on two partitions,
commit stage — in memory, no broker) gives the same snapshot, node for node and blob
for blob, big files' fixed blocks included. Drift between the two modes fails here."""

from __future__ import annotations

import itertools
import os
import random
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

from corestate.agents.agent import scan
from corestate.connectors.url import open_backend
from corestate.pipeline.backup import BackupOptions, backup
from corestate.pipeline.chunk import ChunkStage
from corestate.pipeline.commit import CommitStage
from corestate.pipeline.pack import PackStage
from corestate.pipeline.stage import Emit
from corestate.repository import ordinals
from corestate.repository.repository import Repository
from corestate.repository.walk import walk
from corestate.schemas.codec import decode, encode
from corestate.schemas.events import Event, SnapshotCommitted, SnapshotMarker
from tests.conftest import PASSWORD

POS = itertools.count()
BLOCKS = 1 << 20  # files this big are cut into fixed blocks (small, so the test is quick)


def make_tree(src: Path) -> None:
    rng = random.Random(3)
    (src / "a" / "b").mkdir(parents=True)
    (src / "empty").mkdir()
    (src / "a" / "small.txt").write_text("hello\n")
    (src / "a" / "b" / "mid.bin").write_bytes(rng.randbytes(700_000))
    (src / "big.bin").write_bytes(rng.randbytes(3 * BLOCKS + 12345))  # fixed blocks
    (src / "cdc.bin").write_bytes(rng.randbytes(BLOCKS - 1) * 1)      # FastCDC
    (src / "zero").write_bytes(b"")
    os.symlink("a/small.txt", src / "link")
    os.mkfifo(src / "fifo")
    os.link(src / "a" / "small.txt", src / "hard")


def distributed(repo: Repository, src: Path, partitions: int = 2) -> SnapshotCommitted:
    """An agent's full run through the stages, as the Kafka runner would drive them."""
    end = SnapshotMarker(host="h", snapshot_id="run-1", kind="end", paths=(str(src),),
                         partition_count=1, time=datetime.now(timezone.utc))
    captures: list[Event] = [replace(end, kind="begin")]
    scan([str(src)], "h", "run-1", captures.append)
    captures.append(end)
    chunker = ChunkStage(partitions, block_threshold=BLOCKS, block_size=BLOCKS)
    packer, committer = PackStage(repo, partitions), CommitStage(repo)
    to_files: list[Emit] = []
    acks: list[Emit] = []
    for ev in captures:
        for e in chunker.handle(0, next(POS), decode(encode(ev))):  # the wire format, too
            if e.topic == "files":
                to_files.append(e)
            else:
                part = e.partition if e.partition is not None \
                    else e.event.blob_id[0] % partitions  # type: ignore[union-attr]
                acks += packer.handle(part, next(POS), decode(encode(e.event)))  # type: ignore[arg-type]
    packer.close()
    done: list[Emit] = []
    for e in [*to_files, *acks]:
        done += committer.handle(0, next(POS), decode(encode(e.event)))  # type: ignore[arg-type]
    [committed] = [e.event for e in done]
    assert isinstance(committed, SnapshotCommitted)
    return committed


def nodes(repo: Repository, tree: bytes, src: Path) -> dict[bytes, tuple[object, ...]]:
    """Every node of the source path and below but its atime (reading a file changes it)."""
    top = os.fsencode(str(src))
    return {path: (n.type, n.mode, n.size, n.mtime, n.ctime, n.uid, n.gid, n.inode,
                   n.links, n.linktarget, tuple(n.content or ()) if n.type == "file" else None)
            for path, n in walk(repo, tree) if path == top or path.startswith(top + b"/")}


def test_embedded_and_distributed_modes_make_the_same_snapshot(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src)
    embedded_repo = Repository.init(open_backend(str(tmp_path / "embedded")), PASSWORD)
    summary = backup(embedded_repo, BackupOptions(paths=[str(src)], workers=0,
                                                  block_threshold=BLOCKS, block_size=BLOCKS))
    distributed_repo = Repository.init(open_backend(str(tmp_path / "distributed")), PASSWORD)
    committed = distributed(distributed_repo, src)
    embedded_repo.load_index()
    one = nodes(embedded_repo, embedded_repo.load_snapshot(summary.snapshot_id).tree, src)
    two = nodes(distributed_repo, distributed_repo.load_snapshot(committed.restic_id).tree, src)
    assert one == two and len(one) == 12
    big = one[os.fsencode(str(src / "big.bin"))]
    assert len(big[-1]) == 4  # type: ignore[arg-type]  # 3 whole blocks and a tail, both modes
    # the same blobs: each repository holds exactly the data blobs of the other
    assert set(embedded_repo.index.blob_ids()) - set(distributed_repo.index.blob_ids()) \
        <= {b for b in embedded_repo.index.blob_ids()
            if embedded_repo.index.lookup(b).blob.type.value == "tree"}  # type: ignore[union-attr]
    # the sidecars too: both modes write the snapshot's blob bitmap over the ordinal table
    content = {b for n in one.values() if n[-1] for b in n[-1]}  # type: ignore[attr-defined]
    for repo, snap in ((embedded_repo, summary.snapshot_id), (distributed_repo, committed.restic_id)):
        bitmap = ordinals.load_bitmap(repo, snap, ordinals.load_table(repo))
        assert bitmap is not None, "no blob bitmap written"
        assert content <= set(ordinals.load_table(repo).resolve(bitmap))
