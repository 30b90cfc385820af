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
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable

from ..core.dtypes import BY_SAFETENSORS, dtype as _dtype
from ..core.errors import ConvertError
from .files import check_not_lfs_pointer, open_input, parse_json_object, read_small
from .payload import PAGE, FileRanges, Payload, write_bytes
from .tensor import TensorRef

# The reference implementation (huggingface/safetensors) refuses headers above 100 MB; so do we, so
# that a file it would reject is never converted here.
_MAX_HEADER = 100_000_000
_BAD = "the file is corrupt or was not written by a safetensors writer; re-download or re-copy it"


# HuggingFace's names: one model.safetensors, or shards listed by model.safetensors.index.json.
HF_SINGLE = "model.safetensors"
HF_INDEX = "model.safetensors.index.json"
# A MindSpore safetensors directory, as mindspore.load_distributed_checkpoint(..., format="safetensors",
# unified_safetensors_dir=DIR) reads it: the weight files beside NAME_MAP, which maps every parameter to
# the file holding it ({"metadata": {"total_size": N}, "weight_map": {parameter: file}}, as MindSpore's
# unified_safetensors writes it; MindSpore also reads the bare mapping, as MindFormers' converter writes
# it). MindSpore demands the map as soon as there are two files. HF's names are avoided: MindFormers
# takes a directory holding model.safetensors or *model.safetensors.index.json for a HuggingFace
# checkpoint (mindformers/checkpoint/utils.py, is_hf_checkpoint). Earlier versions of this tool wrote
# HF's names; the readers read both.
NAME_MAP = "param_name_map.json"


def shard_names(n: int, mindspore: bool) -> list[str]:
    """The names of n weight files: numbered shards, except HF's single model.safetensors."""
    if n == 1 and not mindspore:
        return [HF_SINGLE]
    return [f"model-{k + 1:05d}-of-{n:05d}.safetensors" for k in range(n)]


def weight_map_text(total_bytes: int, weight_map: dict[str, str]) -> str:
    """An index (HF) or parameter name map (MindSpore): the two are one format."""
    return json.dumps({"metadata": {"total_size": total_bytes}, "weight_map": weight_map}, indent=2) + "\n"


def read_weight_map(index: Path, bare: bool = False) -> dict[str, str]:
    """weight_map of an index, each value a file name that stays inside the index's directory. `bare`:
    a mapping without the weight_map key is the map itself (MindSpore reads a name map either way)."""
    data = parse_json_object(read_small(index, "checkpoint index"), index, "checkpoint index",
                             "the file is truncated or corrupt")
    weight_map = data if bare and "weight_map" not in data else data.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise ConvertError(index, "has no weight_map", "the index file is corrupt")
    for name, file in weight_map.items():
        if not isinstance(file, str):
            raise ConvertError(index, f"weight_map[{json.dumps(name)}] is {json.dumps(file)[:60]}, not a shard "
                               "file name", "the index file is corrupt")
        if not file or "\0" in file:
            what = "an empty string" if not file else "a name with a NUL byte"
            raise ConvertError(index, f"weight_map[{json.dumps(name)}] is {what}, not a shard file name",
                               "the index file is corrupt")
        # Judge the name as written, not where it resolves: HF cache snapshots are symlinks into
        # ../../blobs and must keep working, but an index must not send us to read files elsewhere.
        if PurePosixPath(file).is_absolute() or ".." in PurePosixPath(file).parts:
            raise ConvertError(index, f"weight_map[{json.dumps(name)}] names {json.dumps(file)}, which is outside "
                               "the checkpoint directory", "an index may only name shards next to it")
    return weight_map


def _is_count(x: object) -> bool:
    return type(x) is int and x >= 0  # bool is an int subclass, and 1.0 or Infinity is not a count


def _entry(path: Path, name: str, info: object) -> tuple[str, tuple[int, ...], int, int]:
    """(dtype, shape, begin, end) of one header entry, each checked for type and size."""
    def bad(rule: str) -> ConvertError:
        return ConvertError(path, f"tensor {name!r}: {rule}", _BAD)

    if not isinstance(info, dict):
        raise bad(f"header entry must be an object with dtype, shape and data_offsets, not {info!r:.80}")
    missing = [k for k in ("dtype", "shape", "data_offsets") if k not in info]
    if missing:
        raise bad(f"header entry lacks {', '.join(missing)}")
    dt, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(dt, str) or dt not in BY_SAFETENSORS:
        raise bad(f"unsupported dtype {dt!r:.40}")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise bad(f"shape {shape!r:.80} must be a list of non-negative integers")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(x) for x in offsets)):
        raise bad(f"data_offsets {offsets!r:.80} must be two non-negative integers [begin, end]")
    begin, end = offsets
    if end < begin:
        raise bad(f"data_offsets {begin}..{end} end before they begin")
    itemsize = _dtype(BY_SAFETENSORS[dt].name).itemsize
    nbytes = 0 if 0 in shape else itemsize
    needs: int | str = 0
    for d in shape:  # stop early: a hostile shape can make this product astronomically large
        nbytes *= d
        if nbytes > end - begin:
            needs = "more"
            break
    if nbytes != end - begin:
        needs = needs or nbytes
        raise bad(f"data_offsets {begin}..{end} hold {end - begin} bytes, but shape {shape} of "
                  f"{BY_SAFETENSORS[dt].name} needs {needs}")
    return BY_SAFETENSORS[dt].name, tuple(shape), begin, end


def read_header(path: Path) -> tuple[dict[str, TensorRef], dict[str, str]]:
    """Tensors and __metadata__ of one safetensors file, held to the reference library's rules: the
    tensors' bytes tile the data section exactly, in order, with no gaps, overlaps or spare bytes."""
    path = Path(path)
    with open_input(path, "safetensors file") as f:
        try:
            size = os.fstat(f.fileno()).st_size
            check_not_lfs_pointer(path, f)
            head = f.read(8)
            if len(head) < 8:
                raise ConvertError(path, f"truncated: {size} bytes is too short for a safetensors file",
                                   "re-download or re-copy the file")
            (n,) = struct.unpack("<Q", head)
            if n > _MAX_HEADER:
                raise ConvertError(path, f"corrupt safetensors header: declares {n} header bytes, more than the "
                                   f"{_MAX_HEADER} the format allows", "re-download or re-copy the file")
            if n > size - 8:
                raise ConvertError(path, f"corrupt or truncated safetensors header (declares {n} header bytes, "
                                   f"file has {size})", "re-download or re-copy the file")
            raw = f.read(n)
        except OSError as e:
            raise ConvertError(path, f"cannot read: {e.strerror or e}") from None
    header = parse_json_object(raw, path, "safetensors header", _BAD)
    metadata = header.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ConvertError(path, f"__metadata__ must map strings to strings, not {metadata!r:.80}", _BAD)
    base, data_len = 8 + n, size - 8 - n
    entries = sorted(((*_entry(path, name, info), name) for name, info in header.items()),
                     key=lambda e: (e[2], e[3]))
    tensors, prev, pos = {}, None, 0
    for dt, shape, begin, end, name in entries:
        if begin < pos:
            raise ConvertError(path, f"tensor {name!r}: data_offsets {begin}..{end} overlap those of {prev!r}, "
                               f"which end at {pos}", _BAD)
        if begin > pos:
            after = f"after {prev!r}" if prev else "at the start of the data section"
            raise ConvertError(path, f"tensor {name!r}: data_offsets start at {begin}, leaving {begin - pos} "
                               f"unclaimed bytes {after}", _BAD)
        tensors[name] = TensorRef(name, dt, shape, path, FileRanges(path, ((base + begin, end - begin),)))
        prev, pos = name, end
    if pos > data_len:
        raise ConvertError(path, f"truncated: tensor data needs {base + pos} bytes, file has {size}",
                           "re-download or re-copy the file")
    if pos < data_len:
        raise ConvertError(path, f"{data_len - pos} bytes after the last tensor's data belong to no tensor",
                           _BAD)
    return {name: tensors[name] for name in header}, metadata  # header order, as the user wrote it


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

    def begin(self, name: str) -> Callable[[bytes | memoryview], None]:
        """For a tensor whose bytes arrive in pieces: append(piece), in order, until they make the tensor."""
        expected, _ = self._order[self._next]
        if name != expected:
            raise AssertionError(f"writer expected {expected}, got {name}")
        self._next += 1
        return lambda piece: write_bytes(self._fd, piece)

    def close(self) -> None:
        if self._next != len(self._order):
            raise AssertionError(f"{self.path}: {len(self._order) - self._next} tensors were never written")
        os.close(self._fd)
