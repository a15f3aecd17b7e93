"""Listing: how a snapshot node is shown to people and to scripts.

A node's *permissions* string is Go's ``os.FileMode.String()`` of its mode: one letter
per set type bit (``d`` directory, ``L`` symlink, ``D`` device, ``c`` character device,
``p`` named pipe, ``S`` socket, ``u`` setuid, ``g`` setgid, ``t`` sticky), or ``-`` for
a regular file, then ``rwx`` triplets. The *long* line is restic's ``ls --long``:
permissions, uid, gid, size, local modification time and path (``-> target`` for a
symlink). The *JSON* form is restic's ``ls --json`` node object. Paths are bytes: for
display they are decoded with ``surrogateescape`` (printing re-encodes them, so the
original bytes come out); JSON cannot hold those, so there invalid UTF-8 becomes U+FFFD
and a ``path_raw`` field carries the exact bytes in base64.

>>> permissions((1 << 31) | 0o755), permissions(0o644), permissions((1 << 27) | 0o777)
('drwxr-xr-x', '-rw-r--r--', 'Lrwxrwxrwx')
>>> permissions((1 << 26) | (1 << 21) | 0o620)
'Dcrw--w----'
"""

from __future__ import annotations

import base64
import os
from datetime import datetime

from corestate.repository.timefmt import format_time
from corestate.repository.tree import Node

_TYPE_LETTERS = "dalTLDpSugct?"


def permissions(mode: int) -> str:
    """Go's ``FileMode.String()``."""
    out = [c for i, c in enumerate(_TYPE_LETTERS) if mode & (1 << (31 - i))]
    if not out:
        out.append("-")
    out += [c if mode & (1 << (8 - i)) else "-" for i, c in enumerate("rwxrwxrwx")]
    return "".join(out)


def show(path: bytes) -> str:
    """A snapshot path for display (undecodable bytes kept as surrogates)."""
    return os.fsdecode(path)


def json_text(raw: bytes) -> str:
    """Bytes as JSON-safe text: invalid UTF-8 becomes U+FFFD, as restic's JSON does
    (JSON strings cannot hold the surrogates :func:`show` keeps)."""
    return raw.decode("utf-8", "replace")


def json_path_fields(path: bytes) -> dict[str, object]:
    """``path``, plus ``path_raw`` (standard base64 of the bytes) when it is not UTF-8."""
    out: dict[str, object] = {"path": json_text(path)}
    try:
        path.decode("utf-8")
    except UnicodeDecodeError:
        out["path_raw"] = base64.standard_b64encode(path).decode()
    return out


def local_time(ns: int) -> str:
    """``2006-01-02 15:04:05`` in local time, restic's table format."""
    return datetime.fromtimestamp(ns // 10**9).strftime("%Y-%m-%d %H:%M:%S")


def long_line(path: bytes, node: Node) -> str:
    """restic's ``ls --long`` line."""
    target = f" -> {os.fsdecode(node.linktarget)}" if node.type == "symlink" else ""
    return (f"{permissions(node.mode)} {node.uid:5d} {node.gid:5d} {node.size:6d} "
            f"{local_time(node.mtime)} {show(path)}{target}")


def node_json(path: bytes, node: Node) -> dict[str, object]:
    """restic's ``ls --json`` node object (plus user, group, inode, links, linktarget)."""
    out: dict[str, object] = {
        "name": json_text(node.name), "type": node.type, **json_path_fields(path),
        "uid": node.uid, "gid": node.gid, "user": node.user, "group": node.group,
        "size": node.size, "mode": node.mode, "permissions": permissions(node.mode),
        "mtime": format_time(node.mtime), "atime": format_time(node.atime),
        "ctime": format_time(node.ctime), "inode": node.inode, "links": node.links,
    }
    if node.type == "symlink":
        out["linktarget"] = json_text(node.linktarget)
    out["struct_type"] = "node"
    return out
