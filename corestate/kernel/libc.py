"""The C library, for the Linux system calls that :mod:`os` does not wrap.

Terms:

- *function*: a C library function called through :mod:`ctypes`, for instance
  ``inotify_add_watch``. It returns -1 on failure and leaves the reason in ``errno``,
  which :func:`ctypes.get_errno` reads (the library is loaded with ``use_errno``).
- *prototype*: the argument and result types ctypes needs to call a function correctly
  (without them a 64-bit mask would be passed as a C ``int``). :data:`PROTOTYPES` holds
  one for every function the kernel package calls, and :func:`function` sets it before
  handing the function out.

The library is loaded once per process. On a system that is not Linux, or a C library
without the function asked for (an old glibc has no fanotify), :func:`function` raises
:class:`~corestate.errors.PermanentError` naming what is missing.

>>> import os
>>> fd = function("inotify_init1")(os.O_CLOEXEC)
>>> fd >= 0
True
>>> os.close(fd)
"""

from __future__ import annotations

import ctypes
import functools
import sys
from typing import Any

from corestate.errors import PermanentError

_int, _uint, _str = ctypes.c_int, ctypes.c_uint, ctypes.c_char_p

PROTOTYPES: dict[str, tuple[list[Any], Any]] = {
    "inotify_init1": ([_int], _int),
    "inotify_add_watch": ([_int, _str, ctypes.c_uint32], _int),
    "inotify_rm_watch": ([_int, _int], _int),
    "fanotify_init": ([_uint, _uint], _int),
    "fanotify_mark": ([_int, _uint, ctypes.c_uint64, _int, _str], _int),
    "open_by_handle_at": ([_int, _str, _int], _int),
    "name_to_handle_at": ([_int, _str, _str, ctypes.POINTER(_int), _int], _int),
}


@functools.cache
def _library() -> ctypes.CDLL:
    if not sys.platform.startswith("linux"):
        raise PermanentError(f"watching files needs Linux system calls; this is {sys.platform}")
    return ctypes.CDLL(None, use_errno=True)


@functools.cache
def function(name: str) -> Any:
    """The C function ``name`` with its prototype from :data:`PROTOTYPES` set."""
    if name not in PROTOTYPES:
        raise ValueError(f"no prototype for {name}(): add one to PROTOTYPES")
    func = getattr(_library(), name, None)
    if func is None:
        raise PermanentError(f"this C library has no {name}()")
    func.argtypes, func.restype = PROTOTYPES[name]
    return func
