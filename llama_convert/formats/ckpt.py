"""MindSpore .ckpt: protobuf messages, written and scanned without mindspore or protobuf.

The schema (mindspore/ccsrc/utils/checkpoint.proto) is small:

    message Checkpoint { message Value { required string tag = 1;
                                         oneof value { TensorProto tensor = 2; MapTensorProto maptensor = 3; } }
                         repeated Value value = 1; }
    message TensorProto { repeated int64 dims = 1; required string tensor_type = 2;
                          required bytes tensor_content = 3; }

MindSpore writes one Checkpoint message per slice and concatenates them; a parameter larger than
its slice size becomes consecutive Values with the same tag, whose contents are joined on load.
That also keeps every message below protobuf's 2 GiB limit. We write the same wire bytes by
hand so that tensor contents can stream straight from the source file.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable

from ..core.dtypes import BY_CKPT, dtype as _dtype
from ..core.errors import ConvertError
from .files import check_not_lfs_pointer, open_input
from .payload import PAGE, FileRanges, Payload, write_bytes
from .protowire import LEN, VARINT, key, len_field, varint
from .tensor import TensorRef

SLICE_BYTES = 512 << 20  # MindSpore's SLICE_SIZE: 512 MiB of content per Value


def value_prefix(name: str, ckpt_type: str, shape: tuple[int, ...], content_len: int) -> bytes:
    """Every byte of one Checkpoint{Value{tag, tensor}} message except the tensor content itself."""
    dims = b"".join(key(1, VARINT) + varint(d) for d in shape)  # proto2 repeated: not packed
    ttype = ckpt_type.encode()
    tensor_head = dims + len_field(2, len(ttype)) + ttype + len_field(3, content_len)
    tensor_len = len(tensor_head) + content_len
    tag = name.encode()
    value_head = len_field(1, len(tag)) + tag + len_field(2, tensor_len)
    value_len = len(value_head) + tensor_len
    return len_field(1, value_len) + value_head + tensor_head


# A copied tensor moves at full kernel speed only when it keeps its offset modulo the page (see
# payload._copy_range). A .ckpt has no gaps to spare, but protobuf parsers skip fields they do not
# know: a record of field 15, absent from MindSpore's schema, pads large tensors into place.
ALIGN_MIN_BYTES = 100 * PAGE  # padding stays under 1% of what it speeds up
_PAD_FIELD = 15


def padding_record(size: int) -> bytes | None:
    """A record of the unknown pad field that is exactly `size` bytes long, or None if none is."""
    if size == 0:
        return b""
    head = key(_PAD_FIELD, LEN)
    for len_bytes in (1, 2, 3):
        n = size - len(head) - len_bytes
        if n >= 0 and len(varint(n)) == len_bytes:
            return head + varint(n) + bytes(n)
    return None


class CkptWriter:
    def __init__(self, path: Path, slice_bytes: int | None = None, align_min_bytes: int | None = None):
        """slice_bytes, align_min_bytes: None (an option left unset) for MindSpore's slice size and our
        alignment threshold."""
        self.path = path
        self.slice_bytes = slice_bytes or SLICE_BYTES
        self.align_min_bytes = align_min_bytes or ALIGN_MIN_BYTES
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self._pos = 0

    def _write(self, data: bytes) -> None:
        write_bytes(self._fd, data)
        self._pos += len(data)

    def add(self, name: str, dt: str, shape: tuple[int, ...], payload: Payload,
            source_offset: int | None = None) -> None:
        """source_offset: where the payload starts in its source file when it is copied unchanged."""
        total = payload.nbytes
        # Slices end on element boundaries, like MindSpore's np.array_split of the tensor.
        item = _dtype(dt).itemsize
        step = max(item, self.slice_bytes // item * item)
        starts = range(0, total, step) if total else [0]
        for start in starts:
            length = min(step, total - start)
            prefix = value_prefix(name, _dtype(dt).ckpt, shape, length)
            if source_offset is not None and length >= self.align_min_bytes:
                want = (source_offset + start - self._pos - len(prefix)) % PAGE
                self._write(padding_record(want) or padding_record(want + PAGE))
            self._write(prefix)
            payload.write_to(self._fd, start, length)
            self._pos += length

    def begin(self, name: str, dt: str, shape: tuple[int, ...]) -> Callable[[bytes | memoryview], None]:
        """For a tensor whose bytes arrive in pieces (a column block, gathered row window by row window
        while other files take the other columns): append(piece) until the pieces add up to the
        tensor. Sliced as add() slices."""
        item, ckpt_type = _dtype(dt).itemsize, _dtype(dt).ckpt
        total = math.prod(shape) * item
        step = max(item, self.slice_bytes // item * item)
        done = 0

        def append(piece: bytes | memoryview) -> None:
            nonlocal done
            view = memoryview(piece).cast("B")
            while len(view):
                if done % step == 0:  # a slice begins
                    self._write(value_prefix(name, ckpt_type, shape, min(step, total - done)))
                n = min(len(view), step - done % step)
                self._write(view[:n])
                done += n
                view = view[n:]
        return append

    def close(self) -> None:
        os.close(self._fd)


class _Reader:
    """Bounds every length a field declares by the bytes really left in its message, so a flipped
    or truncated byte is reported as corruption rather than as a huge read or seek."""

    def __init__(self, path: Path):
        self.path = path
        self.f = open_input(path, "MindSpore checkpoint")
        try:
            self.size = os.fstat(self.f.fileno()).st_size
            check_not_lfs_pointer(path, self.f)
        except BaseException:
            self.f.close()
            raise

    def varint(self, limit: int) -> int:
        shift = result = 0
        while True:
            if self.f.tell() >= limit:
                raise self.corrupt("message ends inside a number")
            b = self.f.read(1)[0]
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7
            if shift > 63:
                raise self.corrupt("malformed number")

    def length(self, limit: int) -> int:
        """A length prefix, checked to fit in what is left of the message."""
        n = self.varint(limit)
        if n > limit - self.f.tell():
            raise self.corrupt(f"a field declares {n} bytes, but its message has {limit - self.f.tell()} left")
        return n

    def read(self, limit: int) -> bytes:
        n = self.length(limit)
        data = self.f.read(n)
        if len(data) != n:
            raise self.corrupt("unexpected end of data")
        return data

    def text(self, limit: int, what: str) -> str:
        try:
            return self.read(limit).decode("utf-8")
        except UnicodeDecodeError:
            raise self.corrupt(f"{what} is not UTF-8 text") from None

    def corrupt(self, why: str) -> ConvertError:
        return ConvertError(self.path, f"not a readable MindSpore checkpoint at byte {self.f.tell()}: {why}",
                            "the file is truncated, corrupt, encrypted or not a .ckpt")

    def skip(self, wire: int, limit: int) -> None:
        if wire == VARINT:
            self.varint(limit)
            return
        n = self.length(limit) if wire == LEN else {1: 8, 5: 4}.get(wire)
        if n is None:
            raise self.corrupt(f"unexpected wire type {wire}")
        if n > limit - self.f.tell():
            raise self.corrupt("field runs past the end of its message")
        self.f.seek(n, 1)


def scan(path: Path) -> tuple[list[TensorRef], list[str]]:
    """Tensors of a .ckpt from its headers (contents are skipped, not read), and non-tensor entries."""
    r = _Reader(path)
    found: list[tuple[str, str, tuple[int, ...], list[tuple[int, int]]]] = []
    others: list[str] = []
    try:
        while r.f.tell() < r.size:
            start = r.f.tell()
            if r.size - start == 17 and r.f.read(7) == b"crc_num":  # optional CRC trailer
                break
            r.f.seek(start)
            tag_key = r.varint(r.size)
            if tag_key != (1 << 3 | LEN):  # a field Checkpoint does not define, e.g. our padding: skip it
                r.skip(tag_key & 7, r.size)
                continue
            end = r.length(r.size) + r.f.tell()
            tag, tensor = None, None
            while r.f.tell() < end:
                k = r.varint(end)
                if k == (1 << 3 | LEN):
                    tag = r.text(end, "a parameter name")
                elif k == (2 << 3 | LEN):
                    tensor = _scan_tensor(r, r.length(end) + r.f.tell())
                else:
                    r.skip(k & 7, end)
            if tag is None:
                raise r.corrupt("entry without a name")
            if tensor is None:
                others.append(tag)
                continue
            ttype, dims, seg = tensor
            if found and found[-1][0] == tag:  # a slice continuing the previous parameter
                if found[-1][1:3] != (ttype, dims):
                    raise r.corrupt(f"slices of parameter {tag!r} disagree on dtype or shape")
                found[-1][3].append(seg)
            else:
                found.append((tag, ttype, dims, [seg]))
    except IndexError:
        raise r.corrupt("unexpected end of data") from None
    except OSError as e:
        raise ConvertError(path, f"cannot read: {e.strerror or e}") from None
    finally:
        r.f.close()
    refs, seen = [], set()
    for tag, ttype, dims, segs in found:
        if tag in seen:  # MindSpore would keep the last one: which copy is meant is a guess
            raise ConvertError(path, f"parameter {tag!r} appears more than once", "the file is corrupt")
        seen.add(tag)
        if ttype not in BY_CKPT:
            others.append(tag)  # strings and other non-numeric entries
            continue
        dt = BY_CKPT[ttype].name
        shape = () if dims == (0,) else dims
        ref = TensorRef(tag, dt, shape, path, FileRanges(path, tuple(segs)))
        if ref.ranges.nbytes != ref.nbytes:
            raise ConvertError(path, f"parameter {tag!r}: {ref.ranges.nbytes} content bytes do not fit shape "
                               f"{list(shape)} of {dt}", "the file is corrupt")
        refs.append(ref)
    return refs, others


def _scan_tensor(r: _Reader, end: int) -> tuple[str, tuple[int, ...], tuple[int, int]]:
    dims: list[int] = []
    ttype, seg = "", (0, 0)
    while r.f.tell() < end:
        k = r.varint(end)
        field, wire = k >> 3, k & 7
        if field == 1 and wire == VARINT:
            dims.append(_dim(r, r.varint(end)))
        elif field == 1 and wire == LEN:  # packed dims, as other writers may emit
            stop = r.length(end) + r.f.tell()
            while r.f.tell() < stop:
                dims.append(_dim(r, r.varint(stop)))
        elif field == 2 and wire == LEN:
            ttype = r.text(end, "a tensor type")
        elif field == 3 and wire == LEN:
            n = r.length(end)
            seg = (r.f.tell(), n)
            r.f.seek(n, 1)
        else:
            r.skip(wire, end)
    return ttype, tuple(dims), seg


def _dim(r: _Reader, d: int) -> int:
    # int64 on the wire: a negative dimension arrives as a huge unsigned number.
    if d >= 1 << 63:
        raise r.corrupt(f"negative dimension {d - (1 << 64)}")
    return d
