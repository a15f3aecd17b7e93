"""Block-level change tracking for big files.

Terms:

- *block*: the fixed-size byte range ``[i * block_size, (i + 1) * block_size)`` of a
  file (default 1 MiB; the last block may be shorter). ``i`` is its *index*.
- *block map*: the xxh3-64 digest of every block of a file's last protected version,
  with that version's *identity* (``st_dev``, ``st_ino``, size, ``mtime_ns``).
- *changed block*: a block of the current file whose digest differs from the map's, or
  that the map does not have (the file grew).

Why: a VM image or database file of many GiB often changes in a few places. Hashing it
with xxh3 (~10 GB/s) finds those places at disk speed, and only the changed blocks go on
to chunking and encryption. xxh3-64 is not collision resistant: a change that keeps a
block's digest (odds 2**-64 per changed block, no adversary gains by it since the writer
can change the file anyway) would be missed; the map is an accelerator, not the proof
of content, which remains the repository's SHA-256 blob ids.

Maps persist in a :class:`BlockMapStore`, keyed by (``st_dev``, ``st_ino``) so a
renamed file keeps its map. A damaged or unreadable map is treated as absent: the next
scan reports every block changed, which costs time, never correctness.
"""

from __future__ import annotations

import array
import os
import struct
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import xxhash

from corestate.errors import IntegrityError
from corestate.kernel.atomic import write_atomic

__all__ = ["DEFAULT_BLOCK_SIZE", "DEFAULT_READ_SIZE", "BlockMap", "BlockMapStore",
           "changed_blocks", "read_blocks", "scan"]

DEFAULT_BLOCK_SIZE = 1 << 20
DEFAULT_READ_SIZE = 8 << 20

# magic, version, block_size, size, dev, ino, mtime_ns, digest count; then the digests
# (u64 LE each), then xxh3-64 of everything before it (u64 LE).
_MAGIC = b"CSBM"
_VERSION = 1
_HEADER = struct.Struct("<4sB3xQQQQqQ")
_CHECKSUM = struct.Struct("<Q")
_SUFFIX = ".bmap"
_TMP_PREFIX = ".tmp-"
_STALE_TMP_SECONDS = 3600


def block_count(size: int, block_size: int) -> int:
    """How many blocks a file of ``size`` bytes has.

    >>> block_count(0, 4), block_count(4, 4), block_count(5, 4)
    (0, 1, 2)
    """
    return -(-size // block_size)


@dataclass(frozen=True)
class BlockMap:
    """Per-block digests of one version of a file, plus that version's identity.

    >>> m = BlockMap(block_size=4, size=6, digests=[1, 2], dev=1, ino=2, mtime_ns=3)
    >>> BlockMap.from_bytes(m.to_bytes()) == m
    True
    """

    block_size: int
    size: int
    digests: list[int] = field(repr=False)
    dev: int
    ino: int
    mtime_ns: int

    def matches(self, st: os.stat_result) -> bool:
        """Whether ``st`` has this map's identity (so a scan is likely unneeded)."""
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) == (
            self.dev, self.ino, self.size, self.mtime_ns)

    def to_bytes(self) -> bytes:
        """The versioned, checksummed binary form: 56-byte header, 8 bytes per block,
        8-byte xxh3-64 of all before it."""
        body = array.array("Q", self.digests)
        if sys.byteorder == "big":
            body.byteswap()
        data = _HEADER.pack(_MAGIC, _VERSION, self.block_size, self.size, self.dev,
                            self.ino, self.mtime_ns, len(self.digests)) + body.tobytes()
        return data + _CHECKSUM.pack(xxhash.xxh3_64_intdigest(data))

    @classmethod
    def from_bytes(cls, data: bytes) -> BlockMap:
        """Parse :meth:`to_bytes` output; :class:`IntegrityError` if damaged.

        >>> raw = bytearray(BlockMap(4, 6, [1, 2], 1, 2, 3).to_bytes()); raw[40] ^= 1
        >>> BlockMap.from_bytes(bytes(raw))
        Traceback (most recent call last):
        ...
        corestate.errors.IntegrityError: block map checksum mismatch
        """
        if len(data) < _HEADER.size + _CHECKSUM.size or data[:4] != _MAGIC:
            raise IntegrityError("not a block map (bad magic or too short)")
        body, (checksum,) = data[:-_CHECKSUM.size], _CHECKSUM.unpack(data[-_CHECKSUM.size:])
        if xxhash.xxh3_64_intdigest(body) != checksum:
            raise IntegrityError("block map checksum mismatch")
        _, version, block_size, size, dev, ino, mtime_ns, count = _HEADER.unpack_from(body)
        if version != _VERSION:
            raise IntegrityError(f"block map version {version} is not supported")
        if (block_size <= 0 or count != block_count(size, block_size)
                or len(body) != _HEADER.size + 8 * count):
            raise IntegrityError("block map header does not match its contents")
        digests = array.array("Q")
        digests.frombytes(body[_HEADER.size:])
        if sys.byteorder == "big":
            digests.byteswap()
        return cls(block_size, size, digests.tolist(), dev, ino, mtime_ns)


def changed_blocks(previous: BlockMap | None, block_size: int, digests: list[int]) -> list[int]:
    """Indices of ``digests`` that differ from ``previous`` or are new to it.

    Blocks only ``previous`` has (the file shrank) are not listed: the new size says
    where the file ends.

    >>> old = BlockMap(4, 12, [7, 8, 9], 0, 0, 0)
    >>> changed_blocks(old, 4, [7, 0, 9, 5]), changed_blocks(old, 4, [7])
    ([1, 3], [])
    >>> changed_blocks(old, 8, [7, 8]), changed_blocks(None, 4, [7, 8])
    ([0, 1], [0, 1])
    """
    if previous is None or previous.block_size != block_size:
        return list(range(len(digests)))
    old = previous.digests
    return [i for i, d in enumerate(digests) if i >= len(old) or old[i] != d]


def _read_full(fd: int, n: int) -> bytes:
    """Up to ``n`` bytes from ``fd``; fewer only at end of file."""
    parts = []
    while n > 0:
        data = os.read(fd, min(n, 1 << 24))
        if not data:
            break
        parts.append(data)
        n -= len(data)
    return b"".join(parts)


def _pread_full(fd: int, buf: memoryview, offset: int) -> int:
    """Fill ``buf`` from ``offset``; fewer bytes only at end of file."""
    done = 0
    while done < len(buf):
        n = os.preadv(fd, [buf[done:]], offset + done)
        if n == 0:
            break
        done += n
    return done


def scan(fd: int, block_size: int = DEFAULT_BLOCK_SIZE, previous: BlockMap | None = None,
         *, read_size: int = DEFAULT_READ_SIZE) -> tuple[BlockMap, list[int]]:
    """Hash every block of the open file ``fd``; return its map and changed indices.

    Reads go through one buffer of ``read_size`` (rounded to whole blocks, at least one
    block), so memory stays bounded whatever the file's size. The identity is taken
    before reading: if the file is written during the scan its mtime moves past the
    recorded one, so the next look does not trust this map. The size recorded is what
    was read.
    """
    if block_size <= 0:
        raise ValueError(f"block_size must be positive, not {block_size}")
    st = os.fstat(fd)
    buf = bytearray(max(block_size, read_size // block_size * block_size))
    view = memoryview(buf)
    digests: list[int] = []
    offset = 0
    try:
        while True:
            n = _pread_full(fd, view, offset)
            for start in range(0, n, block_size):
                digests.append(xxhash.xxh3_64_intdigest(view[start:min(start + block_size, n)]))
            offset += n
            if n < len(buf):
                break
    finally:
        view.release()
    new = BlockMap(block_size, offset, digests, st.st_dev, st.st_ino, st.st_mtime_ns)
    return new, changed_blocks(previous, block_size, digests)


def read_blocks(fd: int, block_size: int, indices: Iterable[int]) -> Iterator[tuple[int, bytes]]:
    """Yield ``(index, bytes)`` of the given blocks; blocks now past the end are skipped."""
    for i in indices:
        if i < 0:
            raise ValueError(f"block index must not be negative, not {i}")
        data = os.pread(fd, block_size, i * block_size)
        while data and len(data) < block_size:  # a short read before EOF: keep going
            more = os.pread(fd, block_size - len(data), i * block_size + len(data))
            if not more:
                break
            data += more
        if data:
            yield i, data


class BlockMapStore:
    """Block maps on disk, one file per (st_dev, st_ino), written atomically."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = os.fspath(directory)

    def _path(self, dev: int, ino: int) -> str:
        return os.path.join(self.directory, f"{dev:x}-{ino:x}{_SUFFIX}")

    def load(self, dev: int, ino: int) -> BlockMap | None:
        """The stored map of (dev, ino), or None if absent, damaged, misfiled or not
        readable at all (a directory in its place, no permission). A file is read only
        as far as its header says the map goes."""
        try:
            fd = os.open(self._path(dev, ino), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            header = _read_full(fd, _HEADER.size)
            if len(header) < _HEADER.size:
                return None
            count = _HEADER.unpack(header)[-1]
            length = _HEADER.size + 8 * count + _CHECKSUM.size
            if os.fstat(fd).st_size != length:
                return None
            found = BlockMap.from_bytes(header + _read_full(fd, length - _HEADER.size))
        except (OSError, IntegrityError):
            return None
        finally:
            os.close(fd)
        return found if (found.dev, found.ino) == (dev, ino) else None

    def save(self, block_map: BlockMap) -> None:
        """Store ``block_map``: temp file, fsync, rename over the old one, fsync dir."""
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        write_atomic(self._path(block_map.dev, block_map.ino), block_map.to_bytes(),
                     _TMP_PREFIX, _SUFFIX)

    def delete(self, dev: int, ino: int) -> None:
        """Forget the map of (dev, ino); no error if there is none."""
        try:
            os.unlink(self._path(dev, ino))
        except FileNotFoundError:
            pass

    def keys(self) -> set[tuple[int, int]]:
        """The (dev, ino) of every stored map."""
        out: set[tuple[int, int]] = set()
        for name in self._names():
            key = _parse_name(name)
            if key is not None:
                out.add(key)
        return out

    def prune(self, keep: set[tuple[int, int]]) -> int:
        """Delete every map not keyed in ``keep``, and temp files left by a crash an hour
        or more ago; return how many files were deleted."""
        removed = 0
        stale_before = time.time() - _STALE_TMP_SECONDS
        for name in self._names():
            path = os.path.join(self.directory, name)
            try:
                if name.startswith(_TMP_PREFIX):
                    if os.stat(path).st_mtime >= stale_before:
                        continue  # possibly a save in progress
                else:
                    key = _parse_name(name)
                    if key is None or key in keep:
                        continue
                os.unlink(path)
                removed += 1
            except FileNotFoundError:
                pass
        return removed

    def _names(self) -> list[str]:
        try:
            return os.listdir(self.directory)
        except FileNotFoundError:
            return []


def _parse_name(name: str) -> tuple[int, int] | None:
    """(dev, ino) from a map file name, None for other files.

    >>> _parse_name("803-1f.bmap"), _parse_name("notes.txt"), _parse_name(".tmp-x.bmap")
    ((2051, 31), None, None)
    """
    stem, dot, suffix = name.rpartition(".")
    dev, dash, ino = stem.partition("-")
    if "." + suffix != _SUFFIX or not dash or not dev or not ino:
        return None
    try:
        return int(dev, 16), int(ino, 16)
    except ValueError:
        return None
