"""--parallel output: rank_K/ with each card's slice of every tensor, and the strategy files.

Each rank's file is written from the source window by window, like a single-card conversion: a block
of rows is one byte range of the full tensor, a block of columns one range per row (formats.payload
block_runs/pick), so a rank never holds more than one window however large the model. Bytes that need
no change move by the kernel's copy straight from the source file.
"""
from __future__ import annotations

import math
from pathlib import Path

from ..console.progress import Progress
from ..core.dtypes import dtype as dtype_info
from ..formats import strategy as st
from ..formats.ckpt import ALIGN_MIN_BYTES, SLICE_BYTES, CkptWriter
from ..formats.payload import FileRanges, Payload, block_runs, pick
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


def write_ranks(plan: Plan, tmp: Path, order: list[PlannedTensor], hashes: Hashes, progress: Progress) -> None:
    """Every rank's weight file (tensors in `order`, the source's), then one strategy file per stage."""
    par = plan.parallel
    make = Materializer(plan)
    for rank, fname in enumerate(plan.weight_files):
        path = tmp / fname
        path.parent.mkdir()
        members = [pt for pt in order if par.holds(rank, pt.name)]
        # A slice's runs are made as it is written, not all at once: a column block has one per row,
        # and a rank of a 70B model has millions of them.
        if plan.options.format == "ckpt":
            writer = CkptWriter(path, plan.options.ckpt_slice_bytes or SLICE_BYTES,
                                plan.options.ckpt_align_min_bytes or ALIGN_MIN_BYTES)
            hashes.follow(path)
            for pt in members:
                payload = _slice(plan, make, rank, pt)
                writer.add(pt.name, pt.dtype, rank_shape(plan, rank, pt), payload, _copied_from(payload))
                progress.advance(payload.nbytes)
        else:
            writer = SafetensorsWriter(path, [(pt.name, pt.dtype, rank_shape(plan, rank, pt)) for pt in members],
                                       plan.weight_metadata,
                                       [_copied_from(_slice(plan, make, rank, pt)) for pt in members])
            hashes.follow(path)
            for pt in members:
                payload = _slice(plan, make, rank, pt)
                writer.add(pt.name, payload)
                progress.advance(payload.nbytes)
        writer.close()
        progress.file_done(fname, path.stat().st_size)
        hashes.submit(path)
    (tmp / STRATEGY_DIR).mkdir()
    for stage in range(par.spec.pp):
        st.write(tmp / STRATEGY_DIR / strategy_file(par.stage_ranks(stage)[0]), par.strategy(stage))
