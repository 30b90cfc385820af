"""Each planned tensor's payload: its bytes copied, assembled or cast on their way out, window by window."""
from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

from ..core.dtypes import cast, dtype as dtype_info
from ..formats.payload import Cast, InMemory, Payload, Scatter, gather
from ..plan.lora import merged
from ..plan.plan import Plan, PlannedTensor
from ..table import ops

if TYPE_CHECKING:
    import numpy as np


class Materializer:
    """Makes each planned tensor's payload: bytes that are copied, assembled or cast on their way out.

    Source bytes that need no change stay in the source file (a FileRanges). Fused and split tensors
    are a Scatter of source runs laid out by the op's placement, and casts wrap either; all of them
    stream window by window. Only sources without byte ranges (pickled .bin) or an op without a
    placement go through whole in-memory arrays.
    """

    def __init__(self, plan: Plan):
        self.plan = plan
        self._split: tuple[str, list[np.ndarray]] | None = None

    def __call__(self, pt: PlannedTensor) -> Payload:
        refs = [self.plan.ref(s) for s in pt.sources]
        src_dtype = refs[0].dtype
        if any(s in self.plan.merges for s in pt.sources):
            return self._in_memory(pt, refs)
        if pt.op == "copy":
            payload = refs[0].payload()
        elif self._streamable(pt, refs):
            payload = self._scatter(pt, refs)
        else:
            return self._in_memory(pt, refs)
        return payload if src_dtype == pt.dtype else Cast(payload, src_dtype, pt.dtype)

    def _streamable(self, pt: PlannedTensor, refs: list) -> bool:
        return (ops.get(pt.op).placement is not None and all(r.stored is not None for r in refs)
                and len({r.dtype for r in refs}) == 1)

    def _scatter(self, pt: PlannedTensor, refs: list) -> Scatter:
        op, ctx = ops.get(pt.op), self.plan.op_context()
        item = dtype_info(refs[0].dtype).itemsize
        if pt.part is None:  # forward: each source's runs, in source order, land at their output offsets
            runs = []
            for ref, placed in zip(refs, op.placement([r.shape for r in refs], ctx)):
                at, count = _bytes(placed, item)
                runs.extend(gather(ref.stored, _starts(count), at, count))
            return Scatter(tuple(runs), sum(r.nbytes for r in refs))
        (ref,) = refs  # backward: one part of a fused tensor, its runs gathered in order
        at, count = _bytes(op.placement(op.in_shapes(ref.shape, ctx), ctx)[pt.part], item)
        return Scatter(gather(ref.stored, at, _starts(count), count), sum(count))

    def _in_memory(self, pt: PlannedTensor, refs: list) -> InMemory:
        op, ctx = ops.get(pt.op), self.plan.op_context()
        if pt.part is None:
            return InMemory(op.forward([self._read(r, pt.dtype) for r in refs], ctx))
        (ref,) = refs
        if self._split is None or self._split[0] != ref.name:  # q, k, v come from one w_qkv: split it once
            self._split = (ref.name, op.inverse(self._read(ref, pt.dtype), ctx))
        return InMemory(self._split[1][pt.part])

    def _read(self, ref, dtype: str) -> np.ndarray:
        """A source tensor in `dtype`: cast, or with a LoRA delta merged in (rounded once to `dtype`)."""
        merge = self.plan.merges.get(ref.name)
        return cast(ref.read(), ref.dtype, dtype) if merge is None else merged(ref.read(), ref.dtype, merge, dtype)


def _bytes(placed: list[tuple[int, int]], item: int) -> tuple[list[int], list[int]]:
    """A placement's (element offset, element count) runs as byte offsets and byte counts."""
    return [at * item for at, _ in placed], [n * item for _, n in placed]


def _starts(counts: list[int]) -> list[int]:
    """Where each run starts when the runs are laid end to end."""
    return [0, *itertools.accumulate(counts[:-1])]
