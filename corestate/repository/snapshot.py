"""Snapshots: the root of one backup.

A *snapshot* file (in ``snapshots/``) is encrypted JSON naming the root *tree*, the
backed-up ``paths``, the ``time`` and who made it; ``parent`` points at the snapshot the
backup compared against (unchanged files are not re-read). Unknown fields are kept, so
snapshots written by restic survive a round trip.
"""

from __future__ import annotations

import getpass
import os
import socket
from dataclasses import dataclass, field

from corestate.repository.timefmt import format_time, parse_time


@dataclass
class Snapshot:
    time: int  # ns since the epoch
    tree: bytes
    paths: list[str]
    hostname: str = field(default_factory=socket.gethostname)
    username: str = field(default_factory=getpass.getuser)
    uid: int = field(default_factory=os.getuid)
    gid: int = field(default_factory=os.getgid)
    tags: list[str] = field(default_factory=list)
    excludes: list[str] = field(default_factory=list)
    parent: str | None = None
    original: str | None = None
    extra: dict[str, object] = field(default_factory=dict)
    id: str = ""  # set once stored or loaded

    @property
    def short_id(self) -> str:
        return self.id[:8]

    def to_json(self) -> dict[str, object]:
        d: dict[str, object] = dict(self.extra)
        d.update({"time": format_time(self.time), "tree": self.tree.hex(), "paths": self.paths,
                  "hostname": self.hostname, "username": self.username,
                  "uid": self.uid, "gid": self.gid})
        if self.parent:
            d["parent"] = self.parent
        if self.tags:
            d["tags"] = self.tags
        if self.excludes:
            d["excludes"] = self.excludes
        if self.original:
            d["original"] = self.original
        return d

    @classmethod
    def from_json(cls, d: dict[str, object], snap_id: str) -> Snapshot:
        known = {"time", "tree", "paths", "hostname", "username", "uid", "gid", "tags",
                 "excludes", "parent", "original"}
        return cls(
            time=parse_time(str(d["time"])), tree=bytes.fromhex(str(d["tree"])),
            paths=list(d.get("paths") or []),  # type: ignore[call-overload]
            hostname=str(d.get("hostname") or ""), username=str(d.get("username") or ""),
            uid=int(d.get("uid") or 0), gid=int(d.get("gid") or 0),  # type: ignore[call-overload]
            tags=list(d.get("tags") or []), excludes=list(d.get("excludes") or []),  # type: ignore[call-overload]
            parent=str(d["parent"]) if d.get("parent") else None,
            original=str(d["original"]) if d.get("original") else None,
            extra={k: v for k, v in d.items() if k not in known}, id=snap_id,
        )

    def summary(self) -> dict[str, object]:
        """restic's ``snapshots --json`` shape."""
        return {"id": self.id, "short_id": self.short_id, "time": format_time(self.time),
                "tree": self.tree.hex(), "paths": self.paths, "hostname": self.hostname,
                "username": self.username, "uid": self.uid, "gid": self.gid,
                "tags": self.tags or None, "parent": self.parent}
