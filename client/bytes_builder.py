"""``BytesBuilder``: a new ``bytes`` object of a given size, written in place before anyone sees it.

The message frames (``client/messages.py``) and the broker's chunked frames
(``client/transports/amqp/chunks.py``) read a payload of up to a GiB straight into the ``bytes``
object they hand out. Python offers no writable view of a ``bytes`` object, so on CPython this
module asks the C API for one (ctypes); a large buffer also asks Linux for huge pages (madvise).
Both are checked once at import and fall back to plain Python where they are not available.
"""
from __future__ import annotations

import ctypes
import mmap
import sys


class BytesBuilder:
    """A new ``bytes`` object of a given size, filled through ``view`` before anyone else sees it.

    On CPython the bytes object is allocated uninitialised (``PyBytes_FromStringAndSize(NULL, n)``,
    what the interpreter's own readers do) and written in place, so a GiB payload is not copied
    once more from a bytearray; elsewhere (or if the layout check at import fails) it is a
    bytearray copied into bytes at the end. A large one asks for huge pages (``_advise_huge_pages``).
    ``finish`` hands out the object and drops the view."""

    def __init__(self, size: int):
        if _NEW_BYTES is not None and size >= IN_PLACE_FROM:
            self._target = _NEW_BYTES(None, size)
            self.view = _VIEW_OF(id(self._target) + _BYTES_DATA_OFFSET, size, PYBUF_WRITE)
            _advise_huge_pages(id(self._target) + _BYTES_DATA_OFFSET, size)
        else:
            self._target = bytearray(size)
            self.view = memoryview(self._target)

    def finish(self) -> bytes:
        self.view.release()
        target, self._target = self._target, None
        return target if isinstance(target, bytes) else bytes(target)


def _in_place_bytes():
    """(PyBytes_FromStringAndSize, PyMemoryView_FromMemory) on CPython, checked once; (None, None) elsewhere."""
    if sys.implementation.name != "cpython":
        return None, None
    try:
        new, view_of = ctypes.pythonapi.PyBytes_FromStringAndSize, ctypes.pythonapi.PyMemoryView_FromMemory
        new.restype, new.argtypes = ctypes.py_object, (ctypes.c_void_p, ctypes.c_ssize_t)
        view_of.restype, view_of.argtypes = ctypes.py_object, (ctypes.c_void_p, ctypes.c_ssize_t, ctypes.c_int)
        probe = new(None, 8)
        view = view_of(id(probe) + _BYTES_DATA_OFFSET, 8, PYBUF_WRITE)
        view[:] = b"wbprobe!"
        view.release()
        if probe == b"wbprobe!" and type(probe) is bytes:
            return new, view_of
    except (AttributeError, OSError, TypeError, ValueError):
        pass
    return None, None


def _advise_huge_pages(address: int, size: int) -> None:
    """Ask Linux for transparent huge pages under a large fresh buffer (where THP is 'madvise').

    Filling fresh memory costs a page fault per 4 KiB page; with 2 MiB pages a GiB payload fills
    about four times as fast. Only advice: where it is refused nothing changes."""
    if _MADVISE is None or size < HUGE_PAGES_FROM:
        return
    page = mmap.PAGESIZE
    start, end = (address + page - 1) & ~(page - 1), (address + size) & ~(page - 1)
    _MADVISE(start, end - start, MADV_HUGEPAGE)


def _madvise():
    if sys.platform != "linux":
        return None
    try:
        madvise = ctypes.CDLL(None, use_errno=True).madvise
        madvise.restype, madvise.argtypes = ctypes.c_int, (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        return madvise
    except (AttributeError, OSError):
        return None


HUGE_PAGES_FROM = 32 * 1024 * 1024  # always a mapping of its own (glibc's mmap threshold is at most 32 MiB)
MADV_HUGEPAGE = 14  # Linux
_MADVISE = _madvise()
IN_PLACE_FROM = 1024 * 1024  # smaller objects are a bytearray copied into bytes: cheap, and no ctypes
PYBUF_WRITE = 0x200
_BYTES_DATA_OFFSET = bytes.__basicsize__ - 1  # PyBytesObject: the header, then ob_sval (with its NUL)
_NEW_BYTES, _VIEW_OF = _in_place_bytes()
