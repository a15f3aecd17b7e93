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

from corestate.errors import IntegrityError
from corestate.repository.timefmt import format_time, parse_time


def _text(value: object, key: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{key} is not a string")
    return value


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
    def from_json(cls, d: object, snap_id: str) -> Snapshot:
        """A snapshot from its stored JSON; IntegrityError naming the file and the
        field if it is not one."""
        try:
            return cls._from_json(d, snap_id)
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            why = f"no {exc}" if isinstance(exc, KeyError) else str(exc)
            raise IntegrityError(f"snapshots/{snap_id[:16]}: not a snapshot ({why})") from None

    @classmethod
    def _from_json(cls, d: object, snap_id: str) -> Snapshot:
        if not isinstance(d, dict):
            raise TypeError(f"a {type(d).__name__}, not an object")
        for key in ("paths", "tags", "excludes"):
            value = d.get(key) or []
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise TypeError(f"{key} is not a list of strings")
        for key in ("uid", "gid"):
            if not isinstance(d.get(key) or 0, int):
                raise TypeError(f"{key} is not an integer")
        tree = bytes.fromhex(_text(d["tree"], "tree"))
        if len(tree) != 32:
            raise ValueError("tree is not a 32-byte id")
        known = {"time", "tree", "paths", "hostname", "username", "uid", "gid", "tags",
                 "excludes", "parent", "original"}
        return cls(
            time=parse_time(_text(d["time"], "time")), tree=tree,
            paths=list(d.get("paths") or []),
            hostname=str(d.get("hostname") or ""), username=str(d.get("username") or ""),
            uid=int(d.get("uid") or 0), gid=int(d.get("gid") or 0),
            tags=list(d.get("tags") or []), excludes=list(d.get("excludes") or []),
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
