"""Memory: keep a process's resident size close to what it really holds.

glibc gives each thread its own malloc *arena* and moves its *mmap threshold* up as big
blocks are freed; with chunk- and pack-sized buffers (1-16 MiB) allocated and freed by
several threads, freed memory then stays in fragmented heaps and the resident size grows
far past what is live. :func:`tune_malloc` fixes the threshold at 1 MiB (such buffers are
mapped and returned to the system on free) and uses a single arena. Every CoreState
process calls it first: the command and its worker processes.
"""

from __future__ import annotations

import ctypes

_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8


def tune_malloc() -> None:
    """Apply the settings above (measured on a first backup: peak RSS 190 -> 116 MB for
    +10% CPU in page faults). Not glibc: nothing to tune."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, 1024 * 1024)
        libc.mallopt(_M_ARENA_MAX, 1)
    except (OSError, AttributeError):
        pass
