"""Whether a file range is in the page cache, without reading it: cachestat(2).

A response sent with sendfile(2) from the event loop must not wait for a disk, and
sendfile has no "only if cached" flag (preadv2 has RWF_NOWAIT, but reading is the copy
sendfile avoids). cachestat (Linux 6.5+) counts the cached pages of a range. Where the
kernel lacks it, or this is not Linux on x86-64 or arm64, every range counts as not
cached, and callers read instead.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import platform

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
# The same number on both (the generic syscall table since 6.5).
_NR_CACHESTAT = {"x86_64": 451, "aarch64": 451}.get(platform.machine())


class _Range(ctypes.Structure):
    _fields_ = [("off", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class _Stat(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_uint64)
        for name in ("nr_cache", "nr_dirty", "nr_writeback", "nr_evicted", "nr_recently_evicted")
    ]


def _syscall() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    if _NR_CACHESTAT is None or platform.system() != "Linux":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    except OSError:
        return None
    return libc.syscall


_call = _syscall()


def all_cached(fd: int, offset: int, length: int) -> bool:
    """True when every page of ``[offset, offset + length)`` of the open file ``fd`` is
    in the page cache; False when one is not, or when the kernel cannot tell."""
    global _call
    if _call is None or length <= 0:
        return False
    query, stat = _Range(offset, length), _Stat()
    if _call(_NR_CACHESTAT, fd, ctypes.byref(query), ctypes.byref(stat), 0) != 0:
        if ctypes.get_errno() in (errno.ENOSYS, errno.EPERM):  # old kernel, or seccomp
            _call = None
        return False
    pages = (offset + length + _PAGE - 1) // _PAGE - offset // _PAGE
    return int(stat.nr_cache) >= pages
