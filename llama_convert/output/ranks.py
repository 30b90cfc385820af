"""--parallel output: rank_K/ with each card's slice of every tensor, and the strategy files.

Each rank's file is written from the source window by window, like a single-card conversion, and the
ranks of a stage side by side: a block of rows is one byte range of the full tensor (formats.payload
block_runs/pick), moved by the kernel's copy when it needs no change; blocks of columns are cut from
windows of whole rows read once for all the ranks. Nothing holds more than one window of a tensor,
however large the model, and the source is read once, in order.
"""
from __future__ import annotations

import math
from pathlib import Path

from ..console.progress import Progress
from ..core.dtypes import dtype as dtype_info
from ..formats import strategy as st
from ..formats.ckpt import CkptWriter
from ..formats.payload import WINDOW, FileRanges, Payload, block_runs, pick
from ..formats.safetensors import SafetensorsWriter
from ..plan.parallel import strategy_file
from ..plan.plan import Plan, PlannedTensor
from .hashing import Hashes
from .materialize import Materializer

STRATEGY_DIR = "strategy"


def rank_shape(plan: Plan, rank: int, pt: PlannedTensor) -> tuple[int, ...]:
    return tuple(s.stop - s.start for s in plan.parallel.block(rank, pt.name, pt.shape))


def rank_bytes(plan: Plan) -> int:
    """What all the rank files hold together (a replicated tensor counts once per rank)."""
    return sum(math.prod(rank_shape(plan, k, pt)) * dtype_info(pt.dtype).itemsize
               for k in range(plan.parallel.ranks) for pt in plan.tensors if plan.parallel.holds(k, pt.name))


def _slice(plan: Plan, make: Materializer, rank: int, pt: PlannedTensor) -> Payload:
    block = plan.parallel.block(rank, pt.name, pt.shape)
    return pick(make(pt), block_runs(pt.shape, dtype_info(pt.dtype).itemsize, block))


def _copied_from(payload: Payload) -> int | None:
    """Where a slice that is one unchanged source range starts, so the writer can align it for the kernel."""
    if isinstance(payload, FileRanges) and len(payload.segments) == 1:
        return payload.segments[0][0]
    return None


def _column_block(block: tuple[slice, ...], shape: tuple[int, ...]) -> bool:
    """A block cut out of the columns of a matrix: one short run per row, better read once for all ranks."""
    return len(shape) == 2 and (block[1].start, block[1].stop) != (0, shape[1])


class _Rank:
    """One rank's open weight file."""

    def __init__(self, plan: Plan, rank: int, tmp: Path, members: list[PlannedTensor], make: Materializer,
                 hashes: Hashes):
        self.rank, self.path = rank, tmp / plan.weight_files[rank]
        self.path.parent.mkdir()
        opts = plan.options
        if opts.format == "ckpt":
            self.writer = CkptWriter(self.path, opts.ckpt_slice_bytes, opts.ckpt_align_min_bytes)
        else:
            offsets = [None if _column_block(plan.parallel.block(rank, pt.name, pt.shape), pt.shape)
                       else _copied_from(_slice(plan, make, rank, pt)) for pt in members]
            self.writer = SafetensorsWriter(self.path, [(pt.name, pt.dtype, rank_shape(plan, rank, pt))
                                                        for pt in members], plan.weight_metadata, offsets)
        hashes.follow(self.path)

    def add(self, pt: PlannedTensor, shape: tuple[int, ...], payload: Payload) -> None:
        if isinstance(self.writer, CkptWriter):
            self.writer.add(pt.name, pt.dtype, shape, payload, _copied_from(payload))
        else:
            self.writer.add(pt.name, payload)

    def begin(self, pt: PlannedTensor, shape: tuple[int, ...]):
        if isinstance(self.writer, CkptWriter):
            return self.writer.begin(pt.name, pt.dtype, shape)
        return self.writer.begin(pt.name)


def _write_columns(payload: Payload, shape: tuple[int, ...], item: int, cuts: list[tuple[slice, object]]) -> None:
    """Read the full rows of a matrix once, window by window, and hand each rank its columns of them."""
    import numpy as np
    row = shape[1] * item
    rows_per_window = max(1, WINDOW // row)
    buf = np.empty(rows_per_window * row, dtype=np.uint8)
    for r0 in range(0, shape[0], rows_per_window):
        n = min(rows_per_window, shape[0] - r0)
        view = buf[:n * row]
        payload.read_into(memoryview(view), r0 * row)
        rows = view.reshape(n, row)
        for columns, append in cuts:
            append(np.ascontiguousarray(rows[:, columns.start * item:columns.stop * item]).data)


def write_ranks(plan: Plan, tmp: Path, order: list[PlannedTensor], hashes: Hashes, progress: Progress) -> None:
    """Every rank's weight file, then one strategy file per stage.

    The ranks of a stage are written side by side, tensor by tensor in source order, so the source is
    read once and in order: a rank's block of rows is its own byte range (copied by the kernel), and a
    block of columns is gathered from row windows read once for all the stage's ranks."""
    par = plan.parallel
    make = Materializer(plan)
    for stage in range(par.spec.pp):
        members = [pt for pt in order if stage in par.stages[pt.name]]
        ranks = [_Rank(plan, k, tmp, members, make, hashes) for k in par.stage_ranks(stage)]
        for pt in members:
            item = dtype_info(pt.dtype).itemsize
            blocks = [par.block(r.rank, pt.name, pt.shape) for r in ranks]
            if _column_block(blocks[0], pt.shape):
                cuts = [(b[1], r.begin(pt, rank_shape(plan, r.rank, pt))) for r, b in zip(ranks, blocks)]
                _write_columns(make(pt), pt.shape, item, cuts)
                progress.advance(sum(math.prod(rank_shape(plan, r.rank, pt)) * item for r in ranks))
                continue
            for r in ranks:
                payload = _slice(plan, make, r.rank, pt)
                r.add(pt, rank_shape(plan, r.rank, pt), payload)
                progress.advance(payload.nbytes)
        for r in ranks:
            r.writer.close()
            progress.file_done(str(r.path.relative_to(tmp)), r.path.stat().st_size)
            hashes.submit(r.path)
    (tmp / STRATEGY_DIR).mkdir()
    for stage in range(par.spec.pp):
        st.write(tmp / STRATEGY_DIR / strategy_file(par.stage_ranks(stage)[0]), par.strategy(stage))
