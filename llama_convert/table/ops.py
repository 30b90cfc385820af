"""Named tensor ops that turn HF tensors into one MindFormers tensor, each with its exact inverse.

Every op but one is a pure permutation of elements, so it works on any dtype (bf16 travels as uint16)
and its inverse restores the input bit for bit. The exception says so (`lossy`): Baichuan2's NormHead
normalises its rows at run time, and MindFormers' Llama can only hold them normalised.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

if TYPE_CHECKING:
    import numpy as np

Shape = tuple[int, ...]


@dataclass(frozen=True)
class OpContext:
    num_heads: int
    n_kv_heads: int


Placement = list[tuple[int, int]]  # (element offset in the output, element count), in source order


@dataclass(frozen=True)
class Op:
    name: str
    doc: str
    forward: Callable[[Sequence[np.ndarray], OpContext], np.ndarray]
    inverse: Callable[[np.ndarray, OpContext], list[np.ndarray]]
    out_shape: Callable[[Sequence[Shape], OpContext], Shape]
    in_shapes: Callable[[Shape, OpContext], list[Shape]]
    # Where each input's elements land in the output, run by run. It lets the executor read source
    # bytes straight into their final place (one copy) instead of reading, then rearranging.
    placement: Callable[[Sequence[Shape], OpContext], list[Placement]] | None = None
    # How many tensors forward takes (and inverse gives back). A table may name one of them (`part:`) to
    # take a packed source apart: the MindFormers tensor is that part of the source's inverse.
    parts: int = 1
    # Why the inverse cannot restore the input, for the one op that changes values; None: exact.
    lossy: str | None = None


def _copy_forward(xs, ctx):
    (x,) = xs
    return x


def _qkv_parts(ctx: OpContext) -> tuple[int, int]:
    return ctx.n_kv_heads, ctx.num_heads // ctx.n_kv_heads


def _qkv_forward(xs, ctx):
    # MindFormers' w_qkv: for each KV head, its group of query heads, then its key head, then its value head.
    import numpy as np  # here, not at the top: a conversion that streams never calls forward
    q, k, v = xs
    groups, per = _qkv_parts(ctx)
    rest = q.shape[1:]
    d = k.shape[0] // groups
    parts = [q.reshape(groups, per * d, *rest), k.reshape(groups, d, *rest), v.reshape(groups, d, *rest)]
    return np.concatenate(parts, axis=1).reshape(-1, *rest)


def _qkv_inverse(w, ctx):
    groups, per = _qkv_parts(ctx)
    rest = w.shape[1:]
    d = w.shape[0] // (groups * (per + 2))
    g = w.reshape(groups, (per + 2) * d, *rest)
    q, k, v = g[:, :per * d], g[:, per * d:(per + 1) * d], g[:, (per + 1) * d:]
    return [t.copy().reshape(-1, *rest) for t in (q, k, v)]


def _qkv_in_shapes(shape, ctx):
    groups, per = _qkv_parts(ctx)
    d = shape[0] // (groups * (per + 2))
    rest = tuple(shape[1:])
    return [(groups * per * d, *rest), (groups * d, *rest), (groups * d, *rest)]


def _qkv_placement(shapes, ctx):
    groups, per = _qkv_parts(ctx)
    row = math.prod(shapes[0][1:])
    d = shapes[1][0] // groups
    stride = (per + 2) * d * row
    q = [(g * stride, per * d * row) for g in range(groups)]
    k = [(g * stride + per * d * row, d * row) for g in range(groups)]
    v = [(g * stride + (per + 1) * d * row, d * row) for g in range(groups)]
    return [q, k, v]


def _gate_up_placement(shapes, ctx):
    rows, row = shapes[0][0], math.prod(shapes[0][1:])
    return [[(2 * j * row, row) for j in range(rows)], [((2 * j + 1) * row, row) for j in range(rows)]]


def _gate_up_forward(xs, ctx):
    # MindFormers' w_gate_hidden: row j of gate, then row j of up, for every j.
    import numpy as np
    gate, up = xs
    return np.stack([gate, up], axis=1).reshape(-1, *gate.shape[1:])


def _gate_up_inverse(w, ctx):
    pair = w.reshape(-1, 2, *w.shape[1:])
    return [pair[:, 0].copy(), pair[:, 1].copy()]


def _sum_rows(shapes, ctx):
    return (sum(s[0] for s in shapes), *shapes[0][1:])


# Packings of HF checkpoints that keep the parts whole, one after another (Phi-3's qkv_proj and
# gate_up_proj, Baichuan's W_pack): a row concatenation, and the regrouping of such a tensor into
# MindFormers' fused layouts. Forward packs, inverse takes apart; all are permutations of rows.

def _concat_forward(xs, ctx):
    import numpy as np
    return np.concatenate(list(xs), axis=0)


def _split_rows(w, sizes):
    import numpy as np
    return [part.copy() for part in np.split(w, list(itertools.accumulate(sizes))[:-1], axis=0)]


def _qkv_sizes(rows: int, ctx: OpContext) -> list[int]:
    """Rows of q, k and v in a [q; k; v] tensor of `rows` rows."""
    d = rows // (ctx.num_heads + 2 * ctx.n_kv_heads)
    return [ctx.num_heads * d, ctx.n_kv_heads * d, ctx.n_kv_heads * d]


def _concat_placement(shapes, ctx):
    row, at, out = math.prod(shapes[0][1:]), 0, []
    for s in shapes:
        out.append([(at, s[0] * row)])
        at += s[0] * row
    return out


def _qkv_contiguous_in_shapes(shape, ctx):
    return [(n, *shape[1:]) for n in _qkv_sizes(shape[0], ctx)]


def _halves(shape, ctx):
    return [(shape[0] // 2, *shape[1:])] * 2


def _regroup_qkv_forward(xs, ctx):
    (w,) = xs
    return _qkv_forward(_split_rows(w, _qkv_sizes(w.shape[0], ctx)), ctx)


def _regroup_qkv_inverse(w, ctx):
    return [_concat_forward(_qkv_inverse(w, ctx), ctx)]


def _regroup_qkv_placement(shapes, ctx):
    # the source is q, then k, then v: their runs, in that order, are the source's runs in order
    return [[run for runs in _qkv_placement(_qkv_contiguous_in_shapes(shapes[0], ctx), ctx) for run in runs]]


def _regroup_gate_up_forward(xs, ctx):
    (w,) = xs
    return _gate_up_forward(_split_rows(w, [w.shape[0] // 2] * 2), ctx)


def _regroup_gate_up_inverse(w, ctx):
    return [_concat_forward(_gate_up_inverse(w, ctx), ctx)]


def _regroup_gate_up_placement(shapes, ctx):
    return [[run for runs in _gate_up_placement(_halves(shapes[0], ctx), ctx) for run in runs]]


_STORAGE_NAMES = {"uint16": "bfloat16", "float16": "float16", "float32": "float32"}


def _normalize_rows_forward(xs, ctx):
    """Each row divided by its L2 norm, as torch.nn.functional.normalize(w) does (eps 1e-12), computed in
    float64 and rounded once to float32 (then to the model's dtype), a block of rows at a time."""
    import numpy as np
    from ..core.dtypes import cast, widen
    (w,) = xs
    name = _STORAGE_NAMES[w.dtype.name]  # bf16 travels as its uint16 bit patterns
    out = np.empty_like(w)
    for start in range(0, w.shape[0], 4096):
        rows = widen(w[start:start + 4096], name, "float32").astype(np.float64)
        norms = np.sqrt(np.einsum("ij,ij->i", rows, rows))[:, None]
        out[start:start + 4096] = cast((rows / np.maximum(norms, 1e-12)).astype(np.float32), "float32", name)
    return out


OPS: dict[str, Op] = {op.name: op for op in (
    Op("copy", "the tensor as it is", _copy_forward, lambda w, ctx: [w],
       lambda shapes, ctx: tuple(shapes[0]), lambda shape, ctx: [tuple(shape)]),
    Op("qkv_grouped", "q, k, v rows regrouped per KV head: [q-group, k, v] x n_kv_heads",
       _qkv_forward, _qkv_inverse, _sum_rows, _qkv_in_shapes, _qkv_placement, 3),
    Op("gate_up_interleaved", "gate and up rows interleaved one by one",
       _gate_up_forward, _gate_up_inverse, _sum_rows,
       lambda shape, ctx: [(shape[0] // 2, *shape[1:])] * 2, _gate_up_placement, 2),
    Op("qkv_contiguous", "q, k, v rows one after another: [q; k; v]",
       _concat_forward, lambda w, ctx: _split_rows(w, _qkv_sizes(w.shape[0], ctx)), _sum_rows,
       _qkv_contiguous_in_shapes, _concat_placement, 3),
    Op("gate_up_contiguous", "gate rows, then up rows: [gate; up]",
       _concat_forward, lambda w, ctx: _split_rows(w, [w.shape[0] // 2] * 2), _sum_rows, _halves,
       _concat_placement, 2),
    Op("qkv_contiguous_to_grouped", "a [q; k; v] tensor regrouped per KV head: [q-group, k, v] x n_kv_heads",
       _regroup_qkv_forward, _regroup_qkv_inverse, lambda shapes, ctx: tuple(shapes[0]),
       lambda shape, ctx: [tuple(shape)], _regroup_qkv_placement),
    Op("gate_up_contiguous_to_interleaved", "a [gate; up] tensor with its gate and up rows interleaved one by one",
       _regroup_gate_up_forward, _regroup_gate_up_inverse, lambda shapes, ctx: tuple(shapes[0]),
       lambda shape, ctx: [tuple(shape)], _regroup_gate_up_placement),
    Op("normalize_rows", "each row divided by its L2 norm (Baichuan2's NormHead, done once instead of at run time)",
       _normalize_rows_forward, lambda w, ctx: [w], lambda shapes, ctx: tuple(shapes[0]),
       lambda shape, ctx: [tuple(shape)],
       lossy="the rows are written normalised, as the model computes with them; their original norms are gone"),
)}


def get(name: str) -> Op:
    return OPS[name]
