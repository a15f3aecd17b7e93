"""Content-defined chunking of a byte stream.

A *chunk* is a run of bytes whose boundaries depend only on the content around them
(FastCDC, from the compiled ``fastcdc`` library), so an insertion early in a file moves
only the chunks near it. Bounds follow restic: minimum 512 KiB, average 1 MiB, maximum
8 MiB. Each chunk becomes one data blob named by the SHA-256 of its bytes.

The stream is read into one reused buffer of :data:`WINDOW` bytes; the last chunk found
in a window is not final unless the stream ended or it has the maximum size (its end
may be a window edge, not a content boundary), so its bytes are moved to the front and
the window is refilled behind them. Memory is bounded by the window (at least the
maximum chunk size) whatever the file's size.

>>> import io, random
>>> data = random.Random(1).randbytes(5_000_000)
>>> chunks = list(chunk_stream(io.BytesIO(data)))
>>> b"".join(chunks) == data, all(MIN_SIZE <= len(c) <= MAX_SIZE for c in chunks[:-1])
(True, True)
>>> [len(c) for c in chunk_stream(io.BytesIO(data), window=1)] == [len(c) for c in chunks]
True
>>> [len(c) for c in chunk_stream(io.BytesIO(data), size_hint=10)] == [len(c) for c in chunks]
True
>>> [len(c) for c in chunk_stream(io.BytesIO(bytes(20_000_000)))]
[8388608, 8388608, 3222784]
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

from fastcdc import fastcdc as _fastcdc  # type: ignore[import-untyped]  # Cython build

MIN_SIZE = 512 * 1024
AVG_SIZE = 1024 * 1024
MAX_SIZE = 8 * 1024 * 1024
WINDOW = 8 * 1024 * 1024


def chunk_stream(stream: BinaryIO, window: int = WINDOW, size_hint: int | None = None
                 ) -> Iterator[bytes]:
    """Yield the chunks of ``stream`` in order; an empty stream yields nothing.

    ``size_hint`` (the file's size) only sizes the first buffer: small files do not
    get a whole window; a file that grows past the hint gets the full window."""
    window = max(window, MAX_SIZE)
    buf = bytearray(window if size_hint is None else min(window, size_hint + 1))
    filled = 0
    eof = False
    while not eof:
        while True:  # fill the window (short reads are fine)
            if filled == len(buf):
                if len(buf) >= window:
                    break
                buf.extend(bytes(window - len(buf)))
            with memoryview(buf) as whole:
                n = stream.readinto(whole[filled:])  # type: ignore[attr-defined]
            if not n:
                eof = True
                break
            filled += n
        if filled == 0:
            return
        with memoryview(buf)[:filled] as view:
            cuts = [(c.offset, c.length) for c in
                    _fastcdc(view, min_size=MIN_SIZE, avg_size=AVG_SIZE, max_size=MAX_SIZE)]
            if not eof and cuts[-1][1] < MAX_SIZE:
                keep = cuts.pop()  # may end at the window edge, not at a content boundary
            else:
                keep = (filled, 0)
            for off, length in cuts:
                yield bytes(view[off:off + length])
        rest = filled - keep[0]
        buf[:rest] = buf[keep[0]:filled]  # carry the unfinished chunk to the front
        filled = rest
