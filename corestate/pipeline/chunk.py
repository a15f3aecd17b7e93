"""Content-defined chunking of a byte stream.

A *chunk* is a run of bytes whose boundaries depend only on the content around them
(FastCDC, from the compiled ``fastcdc`` library), so an insertion early in a file moves
only the chunks near it. Bounds follow restic: minimum 512 KiB, average 1 MiB, maximum
8 MiB. Each chunk becomes one data blob named by the SHA-256 of its bytes.

The stream is read in windows of :data:`WINDOW` bytes; the last chunk found in a window
is not final unless the stream ended (its end may be a window edge, not a content
boundary), so its bytes are carried into the next window. Memory is bounded by
``WINDOW`` (at least twice the maximum chunk) whatever the file's size.

>>> import io, random
>>> data = random.Random(1).randbytes(5_000_000)
>>> chunks = list(chunk_stream(io.BytesIO(data)))
>>> b"".join(chunks) == data, all(MIN_SIZE <= len(c) <= MAX_SIZE for c in chunks[:-1])
(True, True)
>>> [len(c) for c in chunk_stream(io.BytesIO(data), window=1)] == [len(c) for c in chunks]
True
>>> [len(c) for c in chunk_stream(io.BytesIO(bytes(20_000_000)))]
[8388608, 8388608, 3222784]
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

from fastcdc import fastcdc as _fastcdc  # the Cython build; pure Python is far slower

MIN_SIZE = 512 * 1024
AVG_SIZE = 1024 * 1024
MAX_SIZE = 8 * 1024 * 1024
WINDOW = 16 * 1024 * 1024


def _cut_points(buf: memoryview) -> Iterator[tuple[int, int]]:
    for c in _fastcdc(buf, min_size=MIN_SIZE, avg_size=AVG_SIZE, max_size=MAX_SIZE):
        yield c.offset, c.length


def chunk_stream(stream: BinaryIO, window: int = WINDOW) -> Iterator[bytes]:
    """Yield the chunks of ``stream`` in order; an empty stream yields nothing."""
    window = max(window, 2 * MAX_SIZE)  # so a full window always holds a final chunk
    carry = b""
    while True:
        fresh = stream.read(window - len(carry))
        buf = carry + fresh if carry else fresh
        eof = len(buf) < window
        if not buf:
            return
        view = memoryview(buf)
        last_start = 0
        cuts = list(_cut_points(view))
        for i, (off, length) in enumerate(cuts):
            if not eof and i == len(cuts) - 1:
                last_start = off
                break
            yield bytes(view[off:off + length])
        else:
            return
        carry = bytes(view[last_start:])
