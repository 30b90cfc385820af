"""MindSpore strategy files: the protobuf `ParallelStrategyMap` (mindspore/ccsrc/utils/node_strategy.proto)
that `save_param_strategy_file` writes, `build_searched_strategy` reads and `transform_checkpoints`
slices by. Written and read by hand, like .ckpt: the base install has neither protobuf nor MindSpore.

    ParallelStrategyMap { required uint32 current_stage = 1;
                          repeated ParallelStrategyItem parallel_strategy_item = 2;   // per operator
                          repeated ParallelLayoutItem parallel_layout_item = 3; }     // per parameter
    ParallelStrategyItem { required string node_name = 1; required ParallelStrategys parallel_strategys = 2; }
    ParallelStrategys { required uint32 stage = 1; repeated ParallelStrategy parallel_strategy = 2; }
    ParallelStrategy { repeated uint32 dim = 1; }
    ParallelLayoutItem { required string param_name = 1; required ParallelLayouts parallel_layouts = 2; }
    ParallelLayouts { repeated DevMatrix dev_matrix = 1; repeated TensorMap tensor_map = 2;
                      repeated ParamSplitShape param_split_shape = 3; repeated IndicesOffset indices_offset = 4;
                      required int32 field = 5; required int32 opt_weight_shard_step = 6;
                      required int32 opt_weight_shard_size = 7; }
    DevMatrix { repeated uint32 dim = 1; }  TensorMap { repeated int32 dim = 1; }
    ParamSplitShape, IndicesOffset { repeated int64 dim = 1; }

A merged pipeline file (`merge_pipeline_strategys`) names each layout `"{stage}-{param}"`; MindSpore
reads a file's pipeline stage from its first operator item, so every file we write carries one.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field as _field
from pathlib import Path

from ..core.errors import ConvertError
from . import protowire as pw
from .files import read_small

MAX_STRATEGY_BYTES = 256 << 20  # a 70B graph's operator strategies are a few MB


@dataclass(frozen=True)
class Layout:
    """How one parameter is cut across the devices of its pipeline stage.

    `tensor_map[i]` names the device axis that splits tensor axis i, counted from the RIGHT of
    `dev_matrix` (0 is its last entry); -1 keeps the axis whole. Devices of a stage are numbered
    row-major over `dev_matrix` (its last axis varies fastest)."""
    dev_matrix: tuple[int, ...]
    tensor_map: tuple[int, ...]
    param_split_shape: tuple[int, ...] = ()
    indices_offset: tuple[int, ...] = ()
    field: int = 0
    opt_weight_shard_step: int = 0
    opt_weight_shard_size: int = 0

    def splits(self) -> tuple[int, ...]:
        """Into how many parts each tensor axis is cut (before any optimizer shard)."""
        return tuple(1 if m < 0 else self.dev_matrix[len(self.dev_matrix) - 1 - m] for m in self.tensor_map)

    def coordinates(self, device: int) -> tuple[int, ...]:
        """A device's index along each axis of dev_matrix (device < product(dev_matrix))."""
        coords = []
        for size in reversed(self.dev_matrix):
            coords.append(device % size)
            device //= size
        return tuple(reversed(coords))

    def block(self, device: int, shape: tuple[int, ...]) -> tuple[slice, ...]:
        """The part of a full tensor of `shape` that `device` (its index within the stage) holds."""
        if len(shape) != len(self.tensor_map):
            raise ValueError(f"a tensor of {len(shape)} axes under a tensor_map of {len(self.tensor_map)}")
        coords = self.coordinates(device)
        out = []
        for size, m in zip(shape, self.tensor_map):
            if m < 0:
                out.append(slice(0, size))
                continue
            parts = self.dev_matrix[len(self.dev_matrix) - 1 - m]
            if size % parts:
                raise ValueError(f"an axis of {size} cannot be cut into {parts} equal parts")
            step = size // parts
            i = coords[len(coords) - 1 - m]
            out.append(slice(i * step, (i + 1) * step))
        return tuple(out)

    def held(self, device: int, shape: tuple[int, ...]) -> tuple[slice, ...]:
        """The part of a full tensor of `shape` that `device` stores: its block, narrowed along axis 0
        by the optimizer shard (parallel optimizer), which cuts the block into row chunks over the
        devices holding the same block, as MindSpore's `_construct_tensor_layout_for_opt_shard` does."""
        block = self.block(device, shape)
        part, parts = self._opt_shard(device)
        if parts == 1 or not shape:
            return block
        rows = block[0].stop - block[0].start
        if rows % parts:
            raise ValueError(f"a block of {rows} rows cannot be cut into {parts} optimizer shards")
        step = rows // parts
        first = block[0].start + part * step
        return (slice(first, first + step), *block[1:])

    def _opt_shard(self, device: int) -> tuple[int, int]:
        """(which optimizer shard `device` holds, how many there are). The shards run over the device axes
        that split nothing (rightmost first; an axis larger than what is left gives its inner part),
        the leftmost such axis counting slowest."""
        size = self.opt_weight_shard_size
        if self.opt_weight_shard_step == 0 or size in (0, 1):
            return 0, 1
        dev = self.dev_matrix
        used = {len(dev) - 1 - m for m in self.tensor_map if m >= 0}
        repeated = [i for i, n in enumerate(dev) if i not in used and n > 1]
        left = size if size != -1 else math.prod(dev[i] for i in repeated)
        coords = self.coordinates(device)
        digits: list[tuple[int, int]] = []
        for axis in reversed(repeated):
            n = dev[axis]
            take = n if left >= n else left
            if (left % n if left >= n else n % left):
                raise ValueError(f"an optimizer shard of {size} does not divide device axis {n}")
            digits.append((coords[axis] % take, take))
            left //= take
            if left == 1:
                break
        if left != 1:
            raise ValueError(f"{size} optimizer shards need more devices than repeat the block")
        part = 0
        for coord, radix in reversed(digits):
            part = part * radix + coord
        return part, math.prod(r for _, r in digits)

    def full_shape(self, stored: tuple[int, ...]) -> tuple[int, ...]:
        """The full tensor's shape from the shape one device stores (the inverse of `held`'s size)."""
        if len(stored) != len(self.tensor_map):
            raise ValueError(f"a tensor of {len(stored)} axes under a tensor_map of {len(self.tensor_map)}")
        full = [n * k for n, k in zip(stored, self.splits())]
        if full:
            full[0] *= self._opt_shard(0)[1]
        return tuple(full)

    @property
    def devices(self) -> int:
        """How many devices one pipeline stage has."""
        return math.prod(self.dev_matrix)


@dataclass(frozen=True)
class OperatorStrategy:
    """One operator's shard strategy; files carry them, and MindSpore reads the stage from the first."""
    node_name: str
    stage: int
    dims: tuple[tuple[int, ...], ...] = ()


@dataclass(frozen=True)
class StrategyMap:
    current_stage: int
    layouts: dict[str, Layout]
    operators: tuple[OperatorStrategy, ...] = _field(default_factory=tuple)


# ------------------------------------------------------------------ writing

def _layout_bytes(name: str, layout: Layout) -> bytes:
    body = (pw.message(1, pw.numbers(1, layout.dev_matrix)) + pw.message(2, pw.numbers(1, layout.tensor_map))
            + pw.message(3, pw.numbers(1, layout.param_split_shape))
            + pw.message(4, pw.numbers(1, layout.indices_offset))
            + pw.number(5, layout.field) + pw.number(6, layout.opt_weight_shard_step)
            + pw.number(7, layout.opt_weight_shard_size))
    return pw.message(3, pw.text(1, name) + pw.message(2, body))


def _operator_bytes(op: OperatorStrategy) -> bytes:
    strategys = pw.number(1, op.stage) + b"".join(pw.message(2, pw.numbers(1, d)) for d in op.dims)
    return pw.message(2, pw.text(1, op.node_name) + pw.message(2, strategys))


def encode(smap: StrategyMap) -> bytes:
    return (pw.number(1, smap.current_stage) + b"".join(_operator_bytes(op) for op in smap.operators)
            + b"".join(_layout_bytes(n, lay) for n, lay in smap.layouts.items()))


def write(path: Path, smap: StrategyMap) -> None:
    path.write_bytes(encode(smap))


# ------------------------------------------------------------------ reading

def _dims(data: bytes, signed: bool = False) -> tuple[int, ...]:
    out: list[int] = []
    for f, wire, value in pw.fields(data):
        if f == 1:
            out.extend(pw.repeated_numbers(wire, value))
    return tuple(pw.signed(v) for v in out) if signed else tuple(out)


def _named(data: bytes) -> tuple[str | None, bytes]:
    """Both item kinds are {required string name = 1; required <message> body = 2}."""
    name, body = None, b""
    for f, _, value in pw.fields(data):
        if f == 1:
            name = bytes(value).decode("utf-8")
        elif f == 2:
            body = bytes(value)
    return name, body


_LAYOUT_NUMBERS = {5: "field", 6: "opt_weight_shard_step", 7: "opt_weight_shard_size"}


def _layout(data: bytes) -> tuple[str, Layout]:
    name, body = _named(data)
    kw: dict = {}
    maps: list[tuple[int, ...]] = []
    for g, _, v in pw.fields(body):
        if g == 1:
            kw.setdefault("dev_matrix", _dims(v))
        elif g == 2:
            maps.append(_dims(v, signed=True))
        elif g in (3, 4):
            kw.setdefault("param_split_shape" if g == 3 else "indices_offset", _dims(v, signed=True))
        elif g in _LAYOUT_NUMBERS:
            kw[_LAYOUT_NUMBERS[g]] = pw.signed(v)
    if name is None or "dev_matrix" not in kw or not maps:
        raise pw.WireError("a parameter layout lacks its name, device matrix or tensor map")
    if sum(1 for m in maps if m) > 1:  # MindSpore's "one axis, two device axes" layouts
        raise pw.WireError(f"{name} is split over two device axes on one tensor axis, which is not supported")
    return name, Layout(tensor_map=next((m for m in maps if m), maps[0]), **kw)


def _operator(data: bytes) -> OperatorStrategy:
    name, body = _named(data)
    stage, dims = 0, []
    for g, _, v in pw.fields(body):
        if g == 1:
            stage = v
        elif g == 2:
            dims.append(_dims(v))
    return OperatorStrategy(name or "", stage, tuple(dims))


def decode(data: bytes) -> StrategyMap:
    """Raises protowire.WireError (a ValueError) on anything that is not a strategy map."""
    stage, layouts, ops = None, {}, []
    try:
        for f, wire, value in pw.fields(data):
            if f == 1 and wire == pw.VARINT:
                stage = value
            elif f == 2 and wire == pw.LEN:
                ops.append(_operator(value))
            elif f == 3 and wire == pw.LEN:
                name, layout = _layout(value)
                layouts[name] = layout
    except UnicodeDecodeError:
        raise pw.WireError("a name is not UTF-8 text") from None
    if stage is None or not layouts:
        raise pw.WireError("no current_stage or no parameter layouts")
    return StrategyMap(stage, layouts, tuple(ops))


def read(path: Path) -> StrategyMap:
    data = read_small(path, "strategy file", limit=MAX_STRATEGY_BYTES)
    try:
        return decode(data)
    except pw.WireError as e:
        raise ConvertError(path, f"not a MindSpore strategy file (ParallelStrategyMap): {e}",
                           "give the strategy .ckpt MindSpore saved (strategy/ckpt_strategy_rank_0.ckpt), "
                           "not a checkpoint or a JSON strategy") from None


_STAGED = re.compile(r"(\d+)-(.+)")


def stage_of(smap: StrategyMap) -> int:
    """The pipeline stage a file describes, read as MindSpore reads it: from its first operator."""
    return smap.operators[0].stage if smap.operators else 0


def by_stage(maps: list[StrategyMap]) -> dict[int, dict[str, Layout]]:
    """Stage -> that stage's layouts, from per-rank files and/or merged ones, as
    `merge_pipeline_strategys` joins them: the first file of each stage counts; a merged file's
    `"{stage}-{param}"` names go to their stage."""
    stages: dict[int, dict[str, Layout]] = {}
    for smap in maps:
        if all(_STAGED.fullmatch(n) for n in smap.layouts):  # parameter names never start with digits and -
            for name, layout in smap.layouts.items():
                m = _STAGED.fullmatch(name)
                stages.setdefault(int(m.group(1)), {}).setdefault(m.group(2), layout)
            continue
        stage = stage_of(smap)
        if stage not in stages:
            stages[stage] = dict(smap.layouts)
    return stages
