"""Atomic, durable replacement of a small local file.

*Atomic*: a reader sees the old content or the new, never a mix (write a temporary file
in the same directory, then ``rename`` over the target). *Durable*: the data is fsynced
before the rename and the directory after it, so a crash cannot leave an empty file.
A temporary file of a failed write is removed.
"""

from __future__ import annotations

import os
import tempfile


def write_atomic(path: str, data: bytes, tmp_prefix: str = ".tmp-", tmp_suffix: str = "") -> None:
    """Replace ``path`` with ``data`` atomically and durably."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=tmp_prefix, suffix=tmp_suffix, dir=directory)
    try:
        with open(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
