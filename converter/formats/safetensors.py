"""safetensors: an 8-byte little-endian header length, a JSON header, then raw tensor bytes.

Reading parses the header only. Writing lays out the header from the plan, then streams each
tensor's bytes in header order, so nothing but the current tensor is ever in memory.
"""
from __future__ import annotations

import itertools
import json
import math
import os
import struct
from pathlib import Path
from typing import Iterable

from ..dtypes import BY_SAFETENSORS, dtype as _dtype
from ..errors import ConvertError
from .payload import PAGE, FileRanges, Payload, write_bytes
from .tensor import TensorRef

_MAX_HEADER = 100 << 20


def read_header(path: Path) -> tuple[dict[str, TensorRef], dict[str, str]]:
    """Tensors and __metadata__ of one safetensors file, validated against the file size."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ConvertError(path, f"truncated: {size} bytes is too short for a safetensors file",
                                   "re-download or re-copy the file")
            (n,) = struct.unpack("<Q", head)
            if n > _MAX_HEADER or n > size - 8:
                raise ConvertError(path, f"corrupt or truncated safetensors header (declares {n} header bytes, "
                                   f"file has {size})", "re-download or re-copy the file")
            raw = f.read(n)
    except OSError as e:
        raise ConvertError(path, f"cannot read: {e.strerror}") from None
    try:
        header = json.loads(raw)
        if not isinstance(header, dict):
            raise ValueError("not an object")
    except (ValueError, UnicodeDecodeError):
        raise ConvertError(path, "corrupt safetensors header (not a JSON object)",
                           "re-download or re-copy the file") from None
    metadata = header.pop("__metadata__", None) or {}
    base, tensors, end_max = 8 + n, {}, 0
    for name, info in header.items():
        try:
            dt = BY_SAFETENSORS[info["dtype"]].name
            shape = tuple(int(d) for d in info["shape"])
            begin, end = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise ConvertError(path, f"tensor {name!r} has an unsupported dtype or a malformed header entry "
                               f"({info!r:.120})") from None
        if end - begin != math.prod(shape) * _dtype(dt).itemsize or begin < 0:
            raise ConvertError(path, f"tensor {name!r}: data_offsets {begin}..{end} do not fit shape {list(shape)} "
                               f"of {dt}", "the file is corrupt")
        end_max = max(end_max, end)
        tensors[name] = TensorRef(name, dt, shape, path, FileRanges(path, ((base + begin, end - begin),)))
    if base + end_max > size:
        raise ConvertError(path, f"truncated: tensor data needs {base + end_max} bytes, file has {size}",
                           "re-download or re-copy the file")
    return tensors, metadata


def _congruent_padding(header_len: int, tensors: list[tuple[int, int, int | None]]) -> int:
    """Spaces to add to the header so that most bytes copied from a source keep their offset modulo
    the page, which the kernel's copy needs for full speed (see payload._copy_range).

    tensors: (offset in the data section, nbytes, offset in its source file or None when not copied).
    """
    votes: dict[int, int] = {}
    for rel, nbytes, src in tensors:
        if src is not None and (src - rel) % 8 == 0:  # the data section stays 8-byte aligned
            residue = (src - rel) % PAGE
            votes[residue] = votes.get(residue, 0) + nbytes
    if not votes:
        return 0
    residue = max(votes, key=votes.get)
    return (residue - (8 + header_len)) % PAGE


class SafetensorsWriter:
    """Writes one safetensors file whose header is fixed up front by the plan."""

    def __init__(self, path: Path, entries: Iterable[tuple[str, str, tuple[int, ...]]],
                 metadata: dict[str, str] | None = None, source_offsets: Iterable[int | None] = ()):
        self.path = path
        header: dict = {"__metadata__": dict(metadata)} if metadata else {}
        self._order: list[tuple[str, int]] = []
        offset, layout = 0, []
        for (name, dt, shape), src in itertools.zip_longest(entries, source_offsets):
            nbytes = math.prod(shape) * _dtype(dt).itemsize
            header[name] = {"dtype": _dtype(dt).safetensors, "shape": list(shape),
                            "data_offsets": [offset, offset + nbytes]}
            self._order.append((name, nbytes))
            layout.append((offset, nbytes, src))
            offset += nbytes
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)  # keep tensor data 8-byte aligned, as the reference writer does
        blob += b" " * _congruent_padding(len(blob), layout)  # the format allows trailing spaces
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        write_bytes(self._fd, struct.pack("<Q", len(blob)) + blob)
        self._next = 0

    def add(self, name: str, payload: Payload) -> None:
        expected, nbytes = self._order[self._next]
        if name != expected or payload.nbytes != nbytes:
            raise AssertionError(f"writer expected {expected} ({nbytes} B), got {name} ({payload.nbytes} B)")
        payload.write_to(self._fd, 0, nbytes)
        self._next += 1

    def close(self) -> None:
        if self._next != len(self._order):
            raise AssertionError(f"{self.path}: {len(self._order) - self._next} tensors were never written")
        os.close(self._fd)
