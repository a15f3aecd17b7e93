"""FastCDC chunking: the small-file fast path gives exactly the general path's chunks,
also when the file is shorter or longer than the size it was stat-ed at."""

from __future__ import annotations

import io
import random

import pytest

from corestate.pipeline.chunk import MIN_SIZE, chunk_stream


class Trickle(io.RawIOBase):
    """A stream that returns at most 1000 bytes per read (short reads)."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)

    def readable(self) -> bool:
        return True

    def readinto(self, into: memoryview) -> int:  # type: ignore[override]
        n = min(len(into), len(self._data), 1000)
        into[:n] = self._data[:n]
        self._data = self._data[n:]
        return n


@pytest.mark.parametrize("size", [0, 1, 4096, MIN_SIZE - 1, MIN_SIZE, MIN_SIZE + 70_000])
@pytest.mark.parametrize("hint_delta", [0, -10, +5])
def test_small_file_path_matches_the_general_path(size: int, hint_delta: int) -> None:
    data = random.Random(size).randbytes(size)
    hint = max(0, size + hint_delta)
    general = list(chunk_stream(io.BytesIO(data)))
    assert list(chunk_stream(io.BytesIO(data), size_hint=hint)) == general
    assert list(chunk_stream(Trickle(data), size_hint=hint)) == general  # type: ignore[arg-type]
    assert b"".join(general) == data
