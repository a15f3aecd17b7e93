"""Trees and nodes: how directories are recorded.

A *tree* is a blob holding ``{"nodes": [...]}`` plus a newline: one *node* per directory
entry, sorted by name bytewise, no duplicates. A node records a name, a *type*
(``file``, ``dir``, ``symlink``, ``dev``, ``chardev``, ``fifo``, ``socket``), its mode
as Go's ``os.FileMode`` bits (not POSIX ``st_mode``), times in RFC 3339 with
nanoseconds, ownership, inode and device (hardlinks are found by them when restoring),
and then: ``content`` (ordered data blob ids) for a file, ``subtree`` for a directory,
``linktarget`` for a symlink, ``device`` (``st_rdev``) for device nodes.

Names are arbitrary bytes. Like restic, a node's name is stored Go-quoted (the body of
``strconv.Quote``): printable UTF-8 as is, everything else as escapes such as ``\\xff``.

>>> quote_name(b'plain.txt')
'plain.txt'
>>> quote_name(b'caf\\xc3\\xa9 "q" \\\\ \\xff\\n')
'café \\\\"q\\\\" \\\\\\\\ \\\\xff\\\\n'
>>> unquote_name(quote_name(b'caf\\xc3\\xa9 "q" \\\\ \\xff\\n\\x01\\xe2\\x80\\x8b'))
b'caf\\xc3\\xa9 "q" \\\\ \\xff\\n\\x01\\xe2\\x80\\x8b'
>>> go_mode(0o100644), go_mode(0o040755) == (1 << 31) | 0o755
(420, True)
>>> posix_mode(go_mode(0o020600), 'chardev') == 0o020600
True
"""

from __future__ import annotations

import base64
import stat
from dataclasses import dataclass, field

import orjson

from corestate.repository.timefmt import format_time, parse_time

# Go os.FileMode bits.
MODE_DIR = 1 << 31
MODE_SYMLINK = 1 << 27
MODE_DEVICE = 1 << 26
MODE_NAMED_PIPE = 1 << 25
MODE_SOCKET = 1 << 24
MODE_SETUID = 1 << 23
MODE_SETGID = 1 << 22
MODE_CHAR_DEVICE = 1 << 21
MODE_STICKY = 1 << 20

_TYPE_BITS = {
    "dir": MODE_DIR, "symlink": MODE_SYMLINK, "dev": MODE_DEVICE,
    "chardev": MODE_DEVICE | MODE_CHAR_DEVICE, "fifo": MODE_NAMED_PIPE, "socket": MODE_SOCKET,
    "file": 0,
}
_POSIX_TYPE = {
    "dir": stat.S_IFDIR, "symlink": stat.S_IFLNK, "dev": stat.S_IFBLK, "chardev": stat.S_IFCHR,
    "fifo": stat.S_IFIFO, "socket": stat.S_IFSOCK, "file": stat.S_IFREG,
}


def node_type(st_mode: int) -> str:
    """restic's node type for a POSIX ``st_mode``."""
    for name, bit in _POSIX_TYPE.items():
        if stat.S_IFMT(st_mode) == bit:
            return name
    raise ValueError(f"unknown file type {stat.S_IFMT(st_mode):o}")


def go_mode(st_mode: int) -> int:
    """Go ``os.FileMode`` bits for a POSIX ``st_mode``."""
    mode = st_mode & 0o777 | _TYPE_BITS[node_type(st_mode)]
    if st_mode & stat.S_ISUID:
        mode |= MODE_SETUID
    if st_mode & stat.S_ISGID:
        mode |= MODE_SETGID
    if st_mode & stat.S_ISVTX:
        mode |= MODE_STICKY
    return mode


def posix_mode(mode: int, ntype: str) -> int:
    """POSIX ``st_mode`` (type and permission bits) from Go mode bits and node type."""
    out = mode & 0o777 | _POSIX_TYPE[ntype]
    if mode & MODE_SETUID:
        out |= stat.S_ISUID
    if mode & MODE_SETGID:
        out |= stat.S_ISGID
    if mode & MODE_STICKY:
        out |= stat.S_ISVTX
    return out


_SIMPLE_ESCAPES = {0x07: "\\a", 0x08: "\\b", 0x0C: "\\f", 0x0A: "\\n", 0x0D: "\\r",
                   0x09: "\\t", 0x0B: "\\v", 0x5C: "\\\\", 0x22: '\\"'}
_UNESCAPE = {"a": 7, "b": 8, "f": 12, "n": 10, "r": 13, "t": 9, "v": 11,
             "\\": 0x5C, '"': 0x22, "'": 0x27}


def quote_name(raw: bytes) -> str:
    """The body of Go's ``strconv.Quote`` for ``raw`` (restic's stored form of a name)."""
    out: list[str] = []
    text = raw.decode("utf-8", "surrogateescape")
    for ch in text:
        cp = ord(ch)
        if 0xDC80 <= cp <= 0xDCFF:  # an undecodable byte
            out.append(f"\\x{cp - 0xDC00:02x}")
        elif cp in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[cp])
        elif cp < 0x20 or cp == 0x7F:
            out.append(f"\\x{cp:02x}")
        elif ch.isprintable():
            out.append(ch)
        elif cp < 0x10000:
            out.append(f"\\u{cp:04x}")
        else:
            out.append(f"\\U{cp:08x}")
    return "".join(out)


def unquote_name(quoted: str) -> bytes:
    """Inverse of :func:`quote_name` (accepts every escape Go's ``Unquote`` does)."""
    if "\\" not in quoted:
        return quoted.encode("utf-8")
    out = bytearray()
    i = 0
    n = len(quoted)
    while i < n:
        ch = quoted[i]
        if ch != "\\":
            out += ch.encode("utf-8")
            i += 1
            continue
        esc = quoted[i + 1]
        if esc in _UNESCAPE:
            out.append(_UNESCAPE[esc])
            i += 2
        elif esc == "x":
            out.append(int(quoted[i + 2:i + 4], 16))
            i += 4
        elif esc == "u":
            out += chr(int(quoted[i + 2:i + 6], 16)).encode("utf-8")
            i += 6
        elif esc == "U":
            out += chr(int(quoted[i + 2:i + 10], 16)).encode("utf-8")
            i += 10
        elif esc in "01234567":
            out.append(int(quoted[i + 1:i + 4], 8))
            i += 4
        else:
            raise ValueError(f"bad escape in stored name {quoted!r}")
    return bytes(out)


@dataclass
class Node:
    """One directory entry. ``name`` and ``linktarget`` are raw bytes; times are ns."""

    name: bytes
    type: str
    mode: int = 0
    mtime: int = 0
    atime: int = 0
    ctime: int = 0
    uid: int = 0
    gid: int = 0
    user: str = ""
    group: str = ""
    inode: int = 0
    device_id: int = 0
    size: int = 0
    links: int = 0
    linktarget: bytes = b""
    device: int = 0
    content: list[bytes] | None = None
    subtree: bytes | None = None
    xattrs: list[tuple[str, bytes]] = field(default_factory=list)
    error: str = ""
    # A node loaded from a tree keeps the JSON it was stored with and serialises back to
    # exactly it (an unchanged file costs no re-encoding and yields an identical tree).
    # Code that modifies a loaded node must set this to None.
    stored_json: dict[str, object] | None = field(default=None, repr=False, compare=False)

    def to_json(self) -> dict[str, object]:
        if self.stored_json is not None:
            return self.stored_json
        d: dict[str, object] = {"name": quote_name(self.name), "type": self.type}
        if self.mode:
            d["mode"] = self.mode
        d["mtime"] = format_time(self.mtime)
        d["atime"] = format_time(self.atime)
        d["ctime"] = format_time(self.ctime)
        d["uid"] = self.uid
        d["gid"] = self.gid
        for key in ("user", "group", "inode", "device_id", "size", "links"):
            value = getattr(self, key)
            if value:
                d[key] = value
        if self.linktarget:
            try:
                d["linktarget"] = self.linktarget.decode("utf-8")
            except UnicodeDecodeError:
                # restic >= 0.16 reads linktarget_raw; older ones see the lossy string.
                d["linktarget"] = self.linktarget.decode("utf-8", "replace")
                d["linktarget_raw"] = base64.standard_b64encode(self.linktarget).decode()
        if self.xattrs:
            d["extended_attributes"] = [
                {"name": n, "value": base64.standard_b64encode(v).decode()} for n, v in self.xattrs]
        if self.device:
            d["device"] = self.device
        if self.type == "file":
            d["content"] = [c.hex() for c in (self.content or [])]
        else:
            d["content"] = None
        if self.subtree is not None:
            d["subtree"] = self.subtree.hex()
        if self.error:
            d["error"] = self.error
        return d

    @classmethod
    def from_json(cls, d: dict[str, object]) -> Node:
        def ns(key: str) -> int:
            v = d.get(key)
            return parse_time(v) if isinstance(v, str) and v else 0

        raw_link = d.get("linktarget_raw")
        link = base64.standard_b64decode(str(raw_link)) if raw_link else str(
            d.get("linktarget") or "").encode("utf-8")
        content = d.get("content")
        subtree = d.get("subtree")
        xattrs = [(str(x["name"]), base64.standard_b64decode(str(x["value"] or "")))
                  for x in (d.get("extended_attributes") or [])]  # type: ignore[attr-defined]
        return cls(
            name=unquote_name(str(d["name"])), type=str(d["type"]), mode=int(d.get("mode") or 0),  # type: ignore[call-overload]
            mtime=ns("mtime"), atime=ns("atime"), ctime=ns("ctime"),
            uid=int(d.get("uid") or 0), gid=int(d.get("gid") or 0),  # type: ignore[call-overload]
            user=str(d.get("user") or ""), group=str(d.get("group") or ""),
            inode=int(d.get("inode") or 0), device_id=int(d.get("device_id") or 0),  # type: ignore[call-overload]
            size=int(d.get("size") or 0), links=int(d.get("links") or 0),  # type: ignore[call-overload]
            linktarget=link, device=int(d.get("device") or 0),  # type: ignore[call-overload]
            content=[bytes.fromhex(c) for c in content] if isinstance(content, list) else None,
            subtree=bytes.fromhex(subtree) if isinstance(subtree, str) else None,
            xattrs=xattrs, error=str(d.get("error") or ""), stored_json=d,
        )


def encode_tree(nodes: list[Node]) -> bytes:
    """Serialise a directory's nodes (sorted by raw name) as a tree blob."""
    ordered = sorted(nodes, key=lambda n: n.name)
    for a, b in zip(ordered, ordered[1:]):
        if a.name == b.name:
            raise ValueError(f"duplicate name in tree: {a.name!r}")
    return orjson.dumps({"nodes": [n.to_json() for n in ordered]}) + b"\n"


def decode_tree(blob: bytes) -> list[Node]:
    doc = orjson.loads(blob)
    return [Node.from_json(n) for n in (doc.get("nodes") or [])]
