"""One event of every type with every field set to a non-default value, so a field that a
codec drops or a schema forgets shows up as a difference."""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone

from corestate.schemas.events import (Alert, AlertFeature, BarrierAck, Chunk, DataSegment,
                                      DeadLetter, Delete, Event, FileBegin, FileEnd, FileManifest,
                                      NodeMeta, Rename, SnapshotCommitted, SnapshotMarker, Xattr)

T = datetime(2024, 5, 1, 12, 30, 15, 123456, tzinfo=timezone.utc)
NODE = NodeMeta(type="file", mode=0o4755 | (1 << 23), mtime=1_600_000_000_123_456_789,
                atime=1_600_000_001_987_654_321, ctime=1_700_000_000_000_000_001, uid=4_000_000_000,
                gid=1001, user="alice", group="staff", inode=2**62 + 5, device_id=64769, size=3 << 30,
                links=2, linktarget=b"../t\xff", device=259,
                xattrs=(Xattr("user.a", b"\x00\x01"), Xattr("security.selinux", b"ctx\x00")))
BLOB = hashlib.sha256(b"chunk").digest()

SAMPLES: list[Event] = [
    FileBegin(host="h1", snapshot_id="run-1", path=b"/srv/caf\xe9", node=NODE),
    DataSegment(host="h1", snapshot_id="run-1", path=b"/srv/caf\xe9", seq=3, offset=3 << 20,
                data=bytes(range(256)) * 4096),
    FileEnd(host="h1", snapshot_id="run-1", path=b"/srv/x", size=12, segments=1, consistent=False,
            sha256=hashlib.sha256(b"x").digest()),
    Delete(host="h1", snapshot_id="run-1", path=b"/srv/gone"),
    Rename(host="h1", snapshot_id="run-1", path=b"/srv/new", old_path=b"/srv/old"),
    SnapshotMarker(host="h1", snapshot_id="run-1", kind="end", paths=("/srv", "/etc"),
                   partition_count=6, time=T, tags=("nightly", "db"), source_partition=4, entries=1 << 33),
    Chunk(blob_id=BLOB, snapshot_id="run-1", data=b"chunk", source_partition=2),
    FileManifest(snapshot_id="run-1", path=b"/srv/x", node=NODE, blobs=(BLOB, bytes(32))),
    BarrierAck(snapshot_id="run-1", packer_partition=5, durable=True, partition_count=6,
               bytes_added=3 << 20),
    SnapshotCommitted(snapshot_id="run-1", restic_id="ab" * 32, host="h1", paths=("/srv",), time=T,
                      tree="cd" * 32, files=7, bytes_added=1 << 40, tags=("nightly",)),
    Alert(time=T, host="h1", score=0.97, reason="entropy of writes jumped",
          top_features=(AlertFeature("entropy", 7.9), AlertFeature("renames_per_s", 120.0)),
          paths=(b"/srv/a.locked", b"/srv/b\xff.locked"), clean_snapshot="ef" * 32),
    DeadLetter(topic="corestate.captures", partition=3, offset=12345, reason="garbage", time=T,
               key=b"h1\x00/srv/x", value=b"\xc3\x01junk"),
]
