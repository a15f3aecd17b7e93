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
import binascii
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import orjson

from corestate.errors import IntegrityError
from corestate.repository.timefmt import format_time, parse_time

_T = TypeVar("_T")

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
NODE_TYPES = frozenset(("file", "dir", "symlink", "dev", "chardev", "fifo", "socket"))
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
_UNESCAPE = {"a": 7, "b": 8, "f": 12, "n": 10, "r": 13, "t": 9, "v": 11, "\\": 0x5C, '"': 0x22}
_HEX = frozenset("0123456789abcdefABCDEF")


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


class BadName(IntegrityError):
    """A stored name that is not the body of a Go-quoted string."""

    def __init__(self, quoted: str, why: str) -> None:
        super().__init__(f"name {quoted!r} is not validly quoted: {why}")


def _digits(quoted: str, at: int, start: int, count: int, allowed: str | frozenset[str],
            base: int) -> int:
    digits = quoted[start:start + count]
    if len(digits) != count or any(c not in allowed for c in digits):
        raise BadName(quoted, f"escape at offset {at} needs {count} "
                      f"{'hex' if base == 16 else 'octal'} digits")
    return int(digits, base)


def unquote_name(quoted: str) -> bytes:
    """Inverse of :func:`quote_name`: exactly what Go's ``strconv.Unquote`` accepts
    inside double quotes, else :class:`BadName` (an IntegrityError) saying why.

    >>> unquote_name('a\\\\x4')  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    corestate.repository.tree.BadName: name 'a\\\\x4' is not validly quoted: escape at ... digits
    """
    if "\\" not in quoted and '"' not in quoted and "\n" not in quoted:
        return quoted.encode("utf-8", "surrogatepass")
    out = bytearray()
    i = 0
    n = len(quoted)
    while i < n:
        ch = quoted[i]
        if ch in '"\n':
            raise BadName(quoted, f"unescaped {ch!r} at offset {i}")
        if ch != "\\":
            out += ch.encode("utf-8", "surrogatepass")
            i += 1
            continue
        if i + 1 >= n:
            raise BadName(quoted, "ends in a lone backslash")
        esc = quoted[i + 1]
        if esc in _UNESCAPE:
            out.append(_UNESCAPE[esc])
            i += 2
        elif esc == "x":
            out.append(_digits(quoted, i, i + 2, 2, _HEX, 16))
            i += 4
        elif esc in "uU":
            width = 4 if esc == "u" else 8
            cp = _digits(quoted, i, i + 2, width, _HEX, 16)
            if cp > 0x10FFFF or 0xD800 <= cp <= 0xDFFF:
                raise BadName(quoted, f"\\{esc} escape at offset {i} is not a code point")
            out += chr(cp).encode("utf-8")
            i += 2 + width
        elif esc in "01234567":
            value = _digits(quoted, i, i + 1, 3, "01234567", 8)
            if value > 255:
                raise BadName(quoted, f"octal escape at offset {i} is over 255")
            out.append(value)
            i += 4
        else:
            raise BadName(quoted, f"unknown escape \\{esc} at offset {i}")
    return bytes(out)


def name_problem(name: bytes) -> str | None:
    """Why a (decoded) node name is unsafe in a directory, or None if it is fine: an
    empty name, ``.`` and ``..``, and names holding ``/`` or NUL cannot be directory
    entries, and restoring them could write outside the target.

    >>> [name_problem(n) for n in (b"ok", b"..", b"x/y", b"")]
    [None, "name '..' is not a file name", "name 'x/y' contains '/'", 'empty name']
    """
    shown = name.decode("utf-8", "backslashreplace")
    if not name:
        return "empty name"
    if name in (b".", b".."):
        return f"name {shown!r} is not a file name"
    if b"/" in name:
        return f"name {shown!r} contains '/'"
    if b"\0" in name:
        return f"name {shown!r} contains a NUL byte"
    return None


@dataclass(slots=True)
class Node:
    """One directory entry. ``name`` and ``linktarget`` are raw bytes; times are ns.
    (Slotted: a tree of 100,000 files holds 100,000 of them.)"""

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
    # Why the stored JSON of this node could not be read in full ("" when it could):
    # such a node keeps what could be read, and readers report it instead of using it.
    damage: str = field(default="", compare=False)
    # A node loaded from a tree (or kept after its tree was built: protect's listing
    # cache) keeps the JSON it was stored with and serialises back to exactly it (an
    # unchanged file costs no re-encoding and yields an identical tree).
    # Code that modifies such a node must set this to None.
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
    def from_json(cls, d: object) -> Node:
        """A node from its stored JSON. Never raises: a field that cannot be read is
        left at its default and named in :attr:`damage` (a name that is not validly
        quoted is kept as its stored text)."""
        try:
            return cls._well_formed(d)
        except (_Irregular, KeyError, TypeError, ValueError, IntegrityError, binascii.Error):
            return cls._field_by_field(d)

    @classmethod
    def _well_formed(cls, d: object) -> Node:
        """The common case, fast: every field present has its type; anything else
        raises and :meth:`_field_by_field` says what is wrong. (Written out field by
        field: a tree of 100,000 files decodes this 100,000 times.)"""
        if type(d) is not dict:
            raise _Irregular
        get = d.get
        # (a JSON null, or a value of another type, takes the slow path)
        mode, uid, gid = get("mode", 0), get("uid", 0), get("gid", 0)
        inode, device_id, size = get("inode", 0), get("device_id", 0), get("size", 0)
        links, device = get("links", 0), get("device", 0)
        if not (type(mode) is type(uid) is type(gid) is type(inode) is type(device_id)
                is type(size) is type(links) is type(device) is int):
            raise _Irregular  # bool is not int here either
        name, ntype = get("name"), get("type")
        user, group = get("user", ""), get("group", "")
        link, error = get("linktarget", ""), get("error", "")
        if not (type(name) is type(ntype) is type(user) is type(group) is type(link)
                is type(error) is str) or not ntype:
            raise _Irregular
        raw_link = get("linktarget_raw")
        content = get("content")
        subtree = get("subtree")
        xattrs = get("extended_attributes")
        return cls(
            name=unquote_name(name), type=ntype, mode=mode,
            mtime=_time(get("mtime") or ""), atime=_time(get("atime") or ""),
            ctime=_time(get("ctime") or ""), uid=uid, gid=gid, user=user,
            group=group, inode=inode, device_id=device_id, size=size, links=links,
            linktarget=_b64(raw_link) if raw_link else link.encode("utf-8", "surrogatepass"),
            device=device, content=None if content is None else _ids(content),
            subtree=None if subtree is None else _id(subtree),
            xattrs=[] if xattrs is None else _xattrs(xattrs), error=error,
            stored_json=d)

    @classmethod
    def _field_by_field(cls, d: object) -> Node:
        if not isinstance(d, dict):
            return cls(name=b"", type="", damage=f"entry is {type(d).__name__}, not an object")
        problems: list[str] = []

        def get(key: str, parse: Callable[[object], _T], default: _T) -> _T:
            value = d.get(key)
            if value is None:
                return default
            try:
                return parse(value)
            except (IntegrityError, ValueError, TypeError, KeyError, binascii.Error) as exc:
                problems.append(f"{key}: {exc}")
                return default

        raw_name = d.get("name")
        try:
            name = unquote_name(_text(raw_name))
        except BadName as exc:
            problems.append(str(exc))
            name = str(raw_name).encode("utf-8", "backslashreplace")
        except TypeError as exc:
            problems.append(f"name: {exc}")
            name = str(raw_name).encode("utf-8", "backslashreplace")
        link = get("linktarget_raw", _b64, b"") or get("linktarget", _text, "").encode(
            "utf-8", "surrogatepass")
        node = cls(
            name=name, type=get("type", _text, ""), mode=get("mode", _int, 0),
            mtime=get("mtime", _time, 0), atime=get("atime", _time, 0),
            ctime=get("ctime", _time, 0), uid=get("uid", _int, 0), gid=get("gid", _int, 0),
            user=get("user", _text, ""), group=get("group", _text, ""),
            inode=get("inode", _int, 0), device_id=get("device_id", _int, 0),
            size=get("size", _int, 0), links=get("links", _int, 0), linktarget=link,
            device=get("device", _int, 0), content=get("content", _ids, None),
            subtree=get("subtree", _id, None), xattrs=get("extended_attributes", _xattrs, []),
            error=get("error", _text, ""), stored_json=d)
        if not node.type:
            problems.append("type: missing")
        node.damage = "; ".join(problems)
        return node


class _Irregular(Exception):
    """A node's JSON is not in the common shape: read it field by field."""




def _text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{type(value).__name__}, not a string")
    return value


def _int(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{type(value).__name__}, not an integer")
    return value


def _time(value: object) -> int:
    return parse_time(_text(value)) if value != "" else 0


def _b64(value: object) -> bytes:
    return base64.b64decode(_text(value), validate=True)


def _id(value: object) -> bytes:
    raw = bytes.fromhex(_text(value))
    if len(raw) != 32:
        raise ValueError(f"id of {len(raw)} bytes, not 32")
    return raw


def _ids(value: object) -> list[bytes]:
    if not isinstance(value, list):
        raise TypeError(f"{type(value).__name__}, not a list")
    return [_id(v) for v in value]


def _xattrs(value: object) -> list[tuple[str, bytes]]:
    if not isinstance(value, list):
        raise TypeError(f"{type(value).__name__}, not a list")
    out = []
    for x in value:
        if not isinstance(x, dict):
            raise TypeError(f"{type(x).__name__}, not an object")
        out.append((_text(x["name"]), _b64(x["value"]) if x.get("value") is not None else b""))
    return out


def encode_tree(nodes: list[Node]) -> bytes:
    """Serialise a directory's nodes (sorted by raw name) as a tree blob."""
    ordered = sorted(nodes, key=lambda n: n.name)
    for a, b in zip(ordered, ordered[1:]):
        if a.name == b.name:
            raise ValueError(f"duplicate name in tree: {a.name!r}")
    return orjson.dumps({"nodes": [n.to_json() for n in ordered]}) + b"\n"


def decode_tree(blob: bytes) -> list[Node]:
    """The nodes of a tree blob, damaged ones included (see :attr:`Node.damage`).

    Raises :class:`IntegrityError` only when the blob as a whole is not a tree."""
    try:
        doc = orjson.loads(blob)
    except orjson.JSONDecodeError:
        raise IntegrityError("not valid JSON") from None
    if not isinstance(doc, dict):
        raise IntegrityError(f"a tree is a JSON object, not {type(doc).__name__}")
    nodes = doc.get("nodes")
    if nodes is None:
        return []
    if not isinstance(nodes, list):
        raise IntegrityError(f"the nodes of a tree are a list, not {type(nodes).__name__}")
    return [Node.from_json(n) for n in nodes]
