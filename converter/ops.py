"""Named tensor ops that turn HF tensors into one MindFormers tensor, each with its exact inverse.

Every op is a pure permutation of elements, so it works on any dtype (bf16 travels as uint16)
and its inverse restores the input bit for bit.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

Shape = tuple[int, ...]


@dataclass(frozen=True)
class OpContext:
    num_heads: int
    n_kv_heads: int


@dataclass(frozen=True)
class Op:
    name: str
    doc: str
    forward: Callable[[Sequence[np.ndarray], OpContext], np.ndarray]
    inverse: Callable[[np.ndarray, OpContext], list[np.ndarray]]
    out_shape: Callable[[Sequence[Shape], OpContext], Shape]
    in_shapes: Callable[[Shape, OpContext], list[Shape]]


def _copy_forward(xs, ctx):
    (x,) = xs
    return x


def _qkv_parts(ctx: OpContext) -> tuple[int, int]:
    return ctx.n_kv_heads, ctx.num_heads // ctx.n_kv_heads


def _qkv_forward(xs, ctx):
    # MindFormers' w_qkv: for each KV head, its group of query heads, then its key head, then its value head.
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
    q, k, v = np.split(g, [per * d, (per + 1) * d], axis=1)
    return [np.ascontiguousarray(t).reshape(-1, *rest) for t in (q, k, v)]


def _qkv_in_shapes(shape, ctx):
    groups, per = _qkv_parts(ctx)
    d = shape[0] // (groups * (per + 2))
    rest = tuple(shape[1:])
    return [(groups * per * d, *rest), (groups * d, *rest), (groups * d, *rest)]


def _gate_up_forward(xs, ctx):
    # MindFormers' w_gate_hidden: row j of gate, then row j of up, for every j.
    gate, up = xs
    return np.stack([gate, up], axis=1).reshape(-1, *gate.shape[1:])


def _gate_up_inverse(w, ctx):
    pair = w.reshape(-1, 2, *w.shape[1:])
    return [np.ascontiguousarray(pair[:, 0]), np.ascontiguousarray(pair[:, 1])]


def _sum_rows(shapes, ctx):
    return (sum(s[0] for s in shapes), *shapes[0][1:])


OPS: dict[str, Op] = {op.name: op for op in (
    Op("copy", "the tensor as it is", _copy_forward, lambda w, ctx: [w],
       lambda shapes, ctx: tuple(shapes[0]), lambda shape, ctx: [tuple(shape)]),
    Op("qkv_grouped", "q, k, v rows regrouped per KV head: [q-group, k, v] x n_kv_heads",
       _qkv_forward, _qkv_inverse, _sum_rows, _qkv_in_shapes),
    Op("gate_up_interleaved", "gate and up rows interleaved one by one",
       _gate_up_forward, _gate_up_inverse, _sum_rows,
       lambda shape, ctx: [(shape[0] // 2, *shape[1:])] * 2),
)}


def get(name: str) -> Op:
    return OPS[name]
