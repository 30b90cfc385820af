"""Where a tensor's bytes come from, and how they reach an output file.

- FileRanges: a tensor stored as it is in a source file. It moves with os.copy_file_range: the
  kernel copies, Python never sees the bytes and no page of the source is mapped into our process.
- Scatter: a tensor assembled from runs of source bytes (a fused tensor on the way in, one part
  of it on the way out). It is read window by window with preadv, straight into place.
- Cast: another payload with its elements cast to a new dtype, window by window.
- InMemory: an array that is already in memory (pickled .bin sources, ops without a placement).

Everything but InMemory needs one window of memory, however large the tensor: memory stays flat
from a 1B to a 405B model.
"""
from __future__ import annotations

import bisect
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Protocol

from ..core.dtypes import cast_bytes, dtype
from ..core.errors import ConvertError

if TYPE_CHECKING:
    import numpy as np

# 1 MiB: a multiple of every itemsize, so windows end on element boundaries, and small enough to stay
# in the CPU cache between the read and the write (16 MiB windows ran 1.5-2x slower and erratically).
WINDOW = 1 << 20
_MAX_GAP = 64 << 10  # source bytes between two wanted runs that are read and dropped rather than seeked over
_IOV_MAX = 1024


class Payload(Protocol):
    nbytes: int

    def read_into(self, view: memoryview, start: int) -> None:
        """Fill `view` with bytes [start, start + len(view)) of the payload."""

    def write_to(self, fd: int, start: int, length: int) -> None:
        """Append bytes [start, start + length) of the payload to the file descriptor."""


_scratch: dict[str, bytearray] = {}


def _buffer(purpose: str, size: int) -> memoryview:
    """A reusable buffer per purpose: fresh allocations would be zero-filled by the kernel every time.
    Whole-tensor reads (verify, diff) get a buffer of their own, so the process does not keep it."""
    if size > 8 * WINDOW:
        return memoryview(bytearray(size))
    buf = _scratch.get(purpose)
    if buf is None or len(buf) < size:
        buf = _scratch[purpose] = bytearray(size)
    return memoryview(buf)[:size]


def read_all(payload: Payload) -> np.ndarray:
    """The whole payload as a new uint8 array."""
    import numpy as np
    out = np.empty(payload.nbytes, dtype=np.uint8)
    if payload.nbytes:
        payload.read_into(memoryview(out), 0)
    return out


def same_bytes(a: Payload, b: Payload) -> bool:
    """Compare two payloads window by window, without holding either whole."""
    if a.nbytes != b.nbytes:
        return False
    for pos in range(0, a.nbytes, WINDOW):
        n = min(WINDOW, a.nbytes - pos)
        va, vb = _buffer("compare-a", n), _buffer("compare-b", n)
        a.read_into(va, pos)
        b.read_into(vb, pos)
        if va != vb:
            return False
    return True


class _Windowed:
    """write_to for payloads that are produced by read_into: one reusable window at a time."""

    def write_to(self, fd: int, start: int, length: int) -> None:
        end = start + length
        for pos in range(start, end, WINDOW):
            view = _buffer("write", min(WINDOW, end - pos))
            self.read_into(view, pos)
            _write_all(fd, view)


def source_changed(path: Path, end: int) -> ConvertError:
    """A source that ends before bytes its header promised, found while copying: the headers were read
    whole and checked against the size, so the file was truncated or replaced under us."""
    return ConvertError(path, f"ended before byte {end} while being copied: the file changed (was truncated or "
                        "replaced) during the conversion", "make sure nothing writes to the source while it "
                        "converts, then run again; nothing was left in OUT_DIR")


def _pread_exact(fd: int, buffers: list, offset: int, path: Path) -> None:
    want = sum(len(b) for b in buffers)
    if os.preadv(fd, buffers, offset) != want:
        raise source_changed(path, offset + want)


@dataclass(frozen=True)
class FileRanges:
    path: Path
    segments: tuple[tuple[int, int], ...]  # (offset, nbytes) in file order

    @property
    def nbytes(self) -> int:
        return sum(n for _, n in self.segments)

    def locate(self, start: int, length: int) -> Iterable[tuple[int, int]]:
        """(file offset, nbytes) pieces holding payload bytes [start, start + length)."""
        pos = 0
        for off, n in self.segments:
            lo, hi = max(start, pos), min(start + length, pos + n)
            if lo < hi:
                yield off + lo - pos, hi - lo
            pos += n

    def read_into(self, view: memoryview, start: int) -> None:
        with open(self.path, "rb", buffering=0) as src:
            pos = 0
            for off, n in self.locate(start, len(view)):
                _pread_exact(src.fileno(), [view[pos:pos + n]], off, self.path)
                pos += n

    def write_to(self, fd: int, start: int, length: int) -> None:
        with open(self.path, "rb", buffering=0) as src:
            for off, n in self.locate(start, length):
                _copy_range(src.fileno(), off, fd, n, self.path)

    def read(self) -> np.ndarray:
        return read_all(self)


@dataclass(frozen=True)
class Runs:
    """Runs of one source file that land in an assembled tensor: run i is length[i] bytes at file_off[i],
    placed at out_off[i]. Sorted by both offsets. Plain lists: a window touches a few hundred runs."""
    path: Path
    file_off: list[int]
    out_off: list[int]
    length: list[int]

    @cached_property
    def out_end(self) -> list[int]:
        return [o + n for o, n in zip(self.out_off, self.length)]

    @classmethod
    def of(cls, ranges: FileRanges, src_off: list[int], out_off: list[int], length: list[int]) -> "Runs":
        """Runs given by byte offsets in the source tensor, mapped onto the file's segments."""
        if len(ranges.segments) == 1:
            base = ranges.segments[0][0]
            return cls(ranges.path, [base + s for s in src_off], list(out_off), list(length))
        pieces = [(f, o + done, m) for s, o, n in zip(src_off, out_off, length)
                  for done, (f, m) in _with_progress(ranges.locate(s, n))]
        f, o, m = (list(c) for c in zip(*pieces))
        return cls(ranges.path, f, o, m)


def _with_progress(pieces: Iterable[tuple[int, int]]) -> Iterable[tuple[int, tuple[int, int]]]:
    done = 0
    for off, n in pieces:
        yield done, (off, n)
        done += n


@dataclass(frozen=True)
class Scatter(_Windowed):
    runs: tuple[Runs, ...]
    nbytes: int

    def read_into(self, view: memoryview, start: int) -> None:
        end = start + len(view)
        for r in self.runs:
            lo = bisect.bisect_right(r.out_end, start)
            hi = bisect.bisect_left(r.out_off, end)
            if lo >= hi:
                continue
            f, o, n = r.file_off[lo:hi], [x - start for x in r.out_off[lo:hi]], r.length[lo:hi]
            if o[0] < 0:  # the first run starts before the window
                f[0] -= o[0]
                n[0] += o[0]
                o[0] = 0
            n[-1] -= max(0, o[-1] + n[-1] - len(view))
            _read_runs(r.path, view, f, o, n)


def _read_runs(path: Path, view: memoryview, file_off: list[int], dst: list[int], length: list[int]) -> None:
    """Read file runs into view[dst:dst+length]. Runs separated by small gaps share one preadv, the
    gap bytes going to a scratch buffer: one syscall per 1024 runs instead of one per run."""
    scratch = _buffer("gap", _MAX_GAP)
    with open(path, "rb", buffering=0) as src:
        start = 0
        while start < len(dst):
            iov, offset, i = [], file_off[start], start
            while True:
                iov.append(view[dst[i]:dst[i] + length[i]])
                i += 1
                if i == len(dst):
                    break
                gap = file_off[i] - (file_off[i - 1] + length[i - 1])
                if not 0 <= gap <= _MAX_GAP:
                    break
                if gap:
                    iov.append(scratch[:gap])
            for k in range(0, len(iov), _IOV_MAX):
                group = iov[k:k + _IOV_MAX]
                _pread_exact(src.fileno(), group, offset, path)
                offset += sum(len(g) for g in group)
            start = i


def gather(stored: FileRanges | Scatter, src_off: list[int], out_off: list[int], length: list[int]) -> tuple[Runs, ...]:
    """The file runs that carry bytes [src_off[i], src_off[i] + length[i]) of a stored tensor to
    out_off[i], whether the tensor sits in one file (FileRanges) or is assembled from several (a Scatter:
    a tensor merged from the slices of several ranks). The requested runs may step back in either
    offset (a regrouping of one source, Phi-3's [q; k; v] into per-KV-head groups or [gate; up]
    interleaved, lands q's runs, then k's, then v's): they are taken in chains that ascend in both,
    because a Scatter finds a window's runs by bisecting offsets sorted both ways; otherwise a window
    that starts inside the tensor would take the wrong bytes."""
    runs, begin = [], 0
    for i in range(1, len(src_off) + 1):
        if i == len(src_off) or out_off[i] < out_off[i - 1] or src_off[i] < src_off[i - 1]:
            runs.extend(_gather_ascending(stored, src_off[begin:i], out_off[begin:i], length[begin:i]))
            begin = i
    return tuple(runs)


def _gather_ascending(stored: FileRanges | Scatter, src_off: list[int], out_off: list[int],
                      length: list[int]) -> tuple[Runs, ...]:
    """gather() for requested runs that ascend in both offsets."""
    if isinstance(stored, FileRanges):
        return (Runs.of(stored, src_off, out_off, length),)
    out = []
    for r in stored.runs:  # intersect two ascending lists of intervals in one sweep
        f, o, n = [], [], []
        i = j = 0
        while i < len(r.out_off) and j < len(src_off):
            lo = max(r.out_off[i], src_off[j])
            hi = min(r.out_end[i], src_off[j] + length[j])
            if lo < hi:
                f.append(r.file_off[i] + lo - r.out_off[i])
                o.append(out_off[j] + lo - src_off[j])
                n.append(hi - lo)
            if r.out_end[i] <= src_off[j] + length[j]:
                i += 1
            else:
                j += 1
        if n:
            order = sorted(range(len(o)), key=o.__getitem__)  # by output offset, as Scatter reads them
            out.append(Runs(r.path, [f[k] for k in order], [o[k] for k in order], [n[k] for k in order]))
    return tuple(out)


@dataclass(frozen=True)
class Cast(_Windowed):
    inner: Payload
    src: str
    dst: str

    @property
    def nbytes(self) -> int:
        return self.inner.nbytes // dtype(self.src).itemsize * dtype(self.dst).itemsize

    def read_into(self, view: memoryview, start: int) -> None:
        si, di = dtype(self.src).itemsize, dtype(self.dst).itemsize
        if start % di or len(view) % di:
            raise ValueError("a cast reads whole elements only")
        raw = _buffer("cast", len(view) // di * si)
        self.inner.read_into(raw, start // di * si)
        view[:] = cast_bytes(raw, self.src, self.dst)


@dataclass(frozen=True)
class InMemory:
    array: np.ndarray

    @property
    def nbytes(self) -> int:
        return int(self.array.nbytes)

    def _flat(self) -> memoryview:
        if not self.array.size:
            return memoryview(b"")
        a = self.array if self.array.flags.c_contiguous else self.array.copy(order="C")
        return memoryview(a).cast("B")

    def read_into(self, view: memoryview, start: int) -> None:
        view[:] = self._flat()[start:start + len(view)]

    def write_to(self, fd: int, start: int, length: int) -> None:
        _write_all(fd, self._flat()[start:start + length])


def block_runs(shape: tuple[int, ...], itemsize: int, block: tuple[slice, ...]) -> list[tuple[int, int]]:
    """The byte runs (start, length), in order, of a C-order tensor of `shape` that hold `block` (one
    slice per axis): one run for a block of whole rows, one per row for a block of columns."""
    import itertools
    import math
    cut = len(shape)
    while cut and (block[cut - 1].start, block[cut - 1].stop) == (0, shape[cut - 1]):
        cut -= 1  # trailing axes held whole ride along inside each run
    if cut == 0:
        return [(0, math.prod(shape) * itemsize)]
    inner = math.prod(shape[cut:]) * itemsize
    strides = [math.prod(shape[a + 1:]) * itemsize for a in range(len(shape))]
    last = block[cut - 1]
    length = (last.stop - last.start) * inner
    runs = []
    for idx in itertools.product(*(range(b.start, b.stop) for b in block[:cut - 1])):
        runs.append((sum(i * strides[a] for a, i in enumerate(idx)) + last.start * inner, length))
    return runs


def pick(payload: Payload, runs: list[tuple[int, int]]) -> Payload:
    """Bytes `runs` (start, length) of `payload`, laid end to end: one rank's block of a tensor. Bytes
    still in a source file stay there (kernel copies); a cast is applied after picking."""
    if isinstance(payload, FileRanges):
        segments: list[tuple[int, int]] = []
        for start, length in runs:
            for off, n in payload.locate(start, length):
                if segments and segments[-1][0] + segments[-1][1] == off:
                    segments[-1] = (segments[-1][0], segments[-1][1] + n)
                else:
                    segments.append((off, n))
        return FileRanges(payload.path, tuple(segments))
    if isinstance(payload, Cast):
        si, di = dtype(payload.src).itemsize, dtype(payload.dst).itemsize
        return Cast(pick(payload.inner, [(a // di * si, n // di * si) for a, n in runs]), payload.src, payload.dst)
    if isinstance(payload, InMemory):
        import numpy as np
        flat = payload._flat()
        return InMemory(np.frombuffer(b"".join(bytes(flat[a:a + n]) for a, n in runs), dtype=np.uint8))
    return Picked(payload, tuple(runs))


@dataclass(frozen=True)
class Picked(_Windowed):
    """Runs of another payload (a Scatter's), read piece by piece as windows ask for them."""
    inner: Payload
    runs: tuple[tuple[int, int], ...]

    @cached_property
    def _ends(self) -> list[int]:
        import itertools
        return list(itertools.accumulate(n for _, n in self.runs))

    @property
    def nbytes(self) -> int:
        return self._ends[-1] if self.runs else 0

    def read_into(self, view: memoryview, start: int) -> None:
        end, done = start + len(view), 0
        i = bisect.bisect_right(self._ends, start)
        while done < len(view):
            run_start, length = self.runs[i]
            begin = self._ends[i] - length  # where run i starts in the picked bytes
            lo, hi = max(start, begin), min(end, self._ends[i])
            self.inner.read_into(view[done:done + hi - lo], run_start + lo - begin)
            done += hi - lo
            i += 1


# "kernel": os.copy_file_range, bytes never enter the process. "buffered": pread into one reusable
# buffer and write it out. Which is faster depends on the file system; here the kernel path was
# both faster and steadier under load.
COPY_MODE = os.environ.get("LLAMA_CONVERT_COPY", "kernel")


# The kernel copies at full speed (3.4 GB/s measured here, against 2.5) only when a tensor keeps its
# offset modulo the page between source and output, which the writers arrange with padding, and when
# each copy starts on a 64 KiB boundary of the output, so that the page cache gives the new file large
# folios: a short first piece gets there.
PAGE = 4096
_FOLIO = 64 << 10


def _copy_range(src_fd: int, offset: int, dst_fd: int, n: int, path: Path) -> None:
    kernel = COPY_MODE == "kernel"
    piece = -os.lseek(dst_fd, 0, os.SEEK_CUR) % _FOLIO or (1 << 30)
    while n > 0:
        done = 0
        if kernel:
            try:
                done = os.copy_file_range(src_fd, dst_fd, min(n, piece), offset)
            except OSError:
                kernel = False  # e.g. EXDEV on old kernels, or a file system without support
        if done <= 0:
            done = _buffered_copy(src_fd, offset, dst_fd, min(n, piece, WINDOW), path)
        offset += done
        n -= done
        piece = 1 << 30


def _buffered_copy(src_fd: int, offset: int, dst_fd: int, n: int, path: Path) -> int:
    view = _buffer("copy", n)
    got = os.preadv(src_fd, [view], offset)
    if got <= 0:
        raise source_changed(path, offset + n)
    return _write_all(dst_fd, view[:got])


def _write_all(fd: int, data) -> int:
    view, total = memoryview(data).cast("B"), 0
    while total < len(view):
        total += os.write(fd, view[total:total + WINDOW])
    return total


def write_bytes(fd: int, data: bytes) -> None:
    _write_all(fd, data)
