"""Where a tensor's bytes come from, and how they reach an output file.

A tensor that needs no change is a list of byte ranges in a source file; those move with
os.copy_file_range (the kernel copies, Python never sees the bytes and no page of the source
is mapped into our process). Everything else is an in-memory array written as it is.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

_CHUNK = 16 << 20


class Payload(Protocol):
    nbytes: int

    def write_to(self, fd: int, start: int, length: int) -> None:
        """Append bytes [start, start+length) of the payload to the file descriptor."""


@dataclass(frozen=True)
class FileRanges:
    path: Path
    segments: tuple[tuple[int, int], ...]  # (offset, nbytes) in file order

    @property
    def nbytes(self) -> int:
        return sum(n for _, n in self.segments)

    def _pieces(self, start: int, length: int):
        pos = 0
        for off, n in self.segments:
            lo, hi = max(start, pos), min(start + length, pos + n)
            if lo < hi:
                yield off + lo - pos, hi - lo
            pos += n

    def write_to(self, fd: int, start: int, length: int) -> None:
        with open(self.path, "rb", buffering=0) as src:
            for off, n in self._pieces(start, length):
                _copy_range(src.fileno(), off, fd, n)

    def read(self) -> np.ndarray:
        out = np.empty(self.nbytes, dtype=np.uint8)
        view, pos = memoryview(out), 0
        with open(self.path, "rb", buffering=0) as src:
            for off, n in self.segments:
                got = os.preadv(src.fileno(), [view[pos:pos + n]], off)
                if got != n:
                    raise EOFError(f"{self.path}: expected {n} bytes at offset {off}, got {got}")
                pos += n
        return out


# "kernel": os.copy_file_range, bytes never enter the process. "buffered": pread into one reusable
# buffer and write it out; RSS grows by the buffer only. Which is faster depends on the file system.
COPY_MODE = os.environ.get("LLAMA_CONVERT_COPY", "kernel")
_buffer: bytearray | None = None


def _copy_range(src_fd: int, offset: int, dst_fd: int, n: int) -> None:
    while n > 0:
        done = 0
        if COPY_MODE == "kernel":
            try:
                done = os.copy_file_range(src_fd, dst_fd, min(n, 1 << 30), offset)
            except OSError:
                done = 0  # e.g. EXDEV on old kernels, or a file system without support
        if done <= 0:
            done = _buffered_copy(src_fd, offset, dst_fd, min(n, _CHUNK))
        offset += done
        n -= done


def _buffered_copy(src_fd: int, offset: int, dst_fd: int, n: int) -> int:
    global _buffer
    if _buffer is None:
        _buffer = bytearray(_CHUNK)
    view = memoryview(_buffer)[:n]
    got = os.preadv(src_fd, [view], offset)
    if got <= 0:
        raise EOFError(f"source ended before offset {offset + n}")
    return _write_all(dst_fd, view[:got])


def _write_all(fd: int, data) -> int:
    view, total = memoryview(data).cast("B"), 0
    while total < len(view):
        total += os.write(fd, view[total:total + _CHUNK])
    return total


_IOV_MAX = 1024


def gather(sources: list[tuple["FileRanges", list[tuple[int, int]]]], itemsize: int, nbytes: int) -> np.ndarray:
    """Read each source's bytes, in file order, straight into the given runs of one new buffer.

    sources: (contiguous file range, [(element offset in the buffer, element count), ...]).
    """
    out = np.empty(nbytes, dtype=np.uint8)
    view = memoryview(out)
    for ranges, runs in sources:
        (offset, length), = ranges.segments
        with open(ranges.path, "rb", buffering=0) as src:
            for i in range(0, len(runs), _IOV_MAX):
                iov = [view[a * itemsize:(a + n) * itemsize] for a, n in runs[i:i + _IOV_MAX]]
                want = sum(len(b) for b in iov)
                if os.preadv(src.fileno(), iov, offset) != want:
                    raise EOFError(f"{ranges.path}: short read at offset {offset}")
                offset += want
    return out


@dataclass(frozen=True)
class InMemory:
    array: np.ndarray

    @property
    def nbytes(self) -> int:
        return int(self.array.nbytes)

    def write_to(self, fd: int, start: int, length: int) -> None:
        flat = np.ascontiguousarray(self.array).reshape(-1).view(np.uint8)
        _write_all(fd, flat[start:start + length])


def write_bytes(fd: int, data: bytes) -> None:
    _write_all(fd, data)
