"""One model's mapping: the table expanded, once, into edges that both directions read.

An edge joins one MindFormers tensor to the HF tensors it is made of, by a named op. hf2ms reads the
edges forward (HF sources -> one MindFormers tensor); ms2hf reads the same edges backward (one
MindFormers source -> its HF parts, by the op's inverse). Checking a checkpoint against the edges
(every expected tensor present with its shape, every other tensor skipped by the table or refused) is
also done once here, for either side.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from . import exprs, ops
from ..core.dtypes import FLOATS
from ..core.errors import ConvertError
from ..formats.tensor import TensorRef
from .schema import Table, holds, layer_name, layer_names, pattern_regex

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Edge:
    ms: str                      # the MindFormers tensor
    ms_shape: Shape
    hf: tuple[str, ...]          # the HF tensors it is made of, in the op's input order
    hf_shapes: tuple[Shape, ...]
    op: str
    dtype: str                   # role: "param" (param_init_type) or "norm" (layernorm_compute_type)
    layer: int | None            # None: a whole-model tensor
    part: int | None = None      # set: ms is this part of op's inverse of the one packed hf tensor
    split: str | None = None     # --parallel: the table's split and stage words (schema.TensorRule)
    stage: str | None = None


@dataclass
class Edges:
    edges: list[Edge]            # whole-model tensors first, then layer by layer, in table order
    flags: dict[str, bool]
    dims: dict[str, int]

    def expected(self, side: str) -> dict[str, Shape]:
        """Every tensor `side` ("hf" or "ms") must hold, with its shape."""
        if side == "ms":
            return {e.ms: e.ms_shape for e in self.edges}
        return {n: s for e in self.edges for n, s in zip(e.hf, e.hf_shapes)}


def flags(table: Table, mc: dict, hf: dict) -> dict[str, bool]:
    """The table's flags for a model: expressions over its model_config, `hf` being its config.json."""
    env = {**mc, "hf": hf}
    try:
        return {name: bool(exprs.evaluate(flag.expr, env)) for name, flag in table.flags.items()}
    except exprs.ExprError as e:
        raise ConvertError(table.path, f"flags: {e}") from None


def dims(table: Table, mc: dict) -> dict[str, int]:
    """The table's shape symbols for a (checked) model_config, each able to use the ones before it."""
    env, out = dict(mc), {}
    for name, expr in table.dims.items():
        try:
            value = exprs.evaluate(expr, env)
        except exprs.ExprError as e:
            raise ConvertError(table.path, f"dims.{name}: {e}") from None
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConvertError(table.path, f"dims.{name}: {expr!r} is {value!r}, not a positive size")
        env[name] = out[name] = value
    return out


def expand(table: Table, mc: dict, hf: dict) -> Edges:
    """The edges of one model: the table's rules that hold, for every layer it has."""
    fl, dm = flags(table, mc, hf), dims(table, mc)
    ctx = ops.OpContext(mc["num_heads"], mc.get("n_kv_heads") or mc["num_heads"])
    keyed = []
    for order, rule in enumerate(table.ms_tensors):
        if not holds(rule.when, fl):
            continue
        specs = [table.hf_tensors[k] for k in rule.sources]
        hf_shapes = tuple(tuple(dm[d] if isinstance(d, str) else int(d) for d in s.shape) for s in specs)
        op = ops.get(rule.op)
        if rule.part is None:
            ms_shape = tuple(op.out_shape(list(hf_shapes), ctx))
        else:
            ms_shape = tuple(op.in_shapes(hf_shapes[0], ctx)[rule.part])
        for layer, name in layer_names(rule.name, mc["num_layers"]):
            edge = Edge(name, ms_shape, tuple(layer_name(s.name, layer) for s in specs), hf_shapes, rule.op,
                        rule.dtype, layer, rule.part, rule.split, rule.stage)
            keyed.append((-1 if layer is None else layer, order, edge))
    edges = Edges([e for *_, e in sorted(keyed, key=lambda k: k[:2])], fl, dm)
    _refuse_unused(table, edges)
    _refuse_missing_parts(table, edges)
    return edges


def _refuse_missing_parts(table: Table, edges: Edges) -> None:
    """A packed HF tensor taken apart must be taken apart whole, or the way back could not pack it."""
    parts: dict[tuple[str, str], set[int]] = {}
    for e in edges.edges:
        if e.part is not None:
            parts.setdefault((e.hf[0], e.op), set()).add(e.part)
    for (name, op), got in parts.items():
        if got != set(range(ops.get(op).parts)):
            raise ConvertError(table.path, f"ms_tensors take {name} apart by {op} into parts {sorted(got)}, "
                               f"not all {ops.get(op).parts}", "give a rule for every part, under the same when:")


def _refuse_unused(table: Table, edges: Edges) -> None:
    """An HF tensor the table expects but no MindFormers rule consumes would be dropped silently."""
    used = {k for r in table.ms_tensors if holds(r.when, edges.flags) for k in r.sources}
    for key, tensor in table.hf_tensors.items():
        if holds(tensor.when, edges.flags) and key not in used:
            raise ConvertError(table.path, f"hf_tensors.{key} exists for this model but no ms_tensors rule uses it",
                               "add a rule for it, or a `when:` that excludes it")


@dataclass
class Accounting:
    """Where every tensor of a checkpoint went: expected, skipped (with the reason), or a dropped twin."""
    skipped: list[dict] = field(default_factory=list)       # {"name", "reason"}
    twins: list[tuple[str, str]] = field(default_factory=list)  # (dropped, must equal this)


def account(table: Table, side: str, expected: dict[str, Shape], tensors: dict[str, TensorRef],
            non_tensors: list[str], where: Path, config_name: str) -> Accounting:
    """Check a checkpoint of `side` against what its edges expect; ConvertError saying everything wrong.

    A tensor the edges do not expect is skipped when the table's skip patterns name it, dropped when it
    is a tied twin (checked equal before anything is written), and otherwise refused: a tensor nobody
    maps would silently vanish from the output.
    """
    result = Accounting([{"name": n, "reason": "not a tensor"} for n in non_tensors])
    skip = [(re.compile(pattern_regex(p)), reason) for p, reason in table.skip.patterns(side).items()]
    twins = {}
    if side == "hf":
        twins = {table.hf_tensors[a].name: table.hf_tensors[b].name for a, b in table.tied_twins.items()}
    unknown, wrong = [], []
    for name, ref in tensors.items():
        if name in expected:
            if ref.shape != expected[name]:
                wrong.append(f"{name} is {list(ref.shape)} in {ref.file.name}, {config_name} implies {list(expected[name])}")
            elif ref.dtype not in FLOATS:
                wrong.append(f"{name} has dtype {ref.dtype}; only bfloat16, float16 and float32 weights convert")
            continue
        reason = next((why for rx, why in skip if rx.match(name)), None)
        if reason:
            result.skipped.append({"name": name, "reason": reason})
        elif name in twins and twins[name] in expected:
            result.twins.append((name, twins[name]))
            result.skipped.append({"name": name, "reason": f"tied to {twins[name]} (tie_word_embeddings is true); "
                                                           f"checked equal before writing"})
        else:
            unknown.append(name)
    missing = [n for n in expected if n not in tensors]
    why = (f"the table {table.path.name} has no rule for them" if side == "hf"
           else "neither model weights nor known training state")
    refuse_mismatch(where, missing, unknown, why, wrong, config_name)
    return result


def refuse_mismatch(where, missing: list[str], unknown: list[str], unknown_why: str, wrong: list[str],
                    config_name: str) -> None:
    """One line that says everything wrong between a checkpoint and its config, or nothing."""
    problems = []
    if missing:
        problems.append(f"{len(missing)} tensors missing ({few(missing)})")
    if unknown:
        problems.append(f"{len(unknown)} unknown tensors ({few(unknown)}); {unknown_why}")
    if wrong:
        problems.append(f"shape/dtype disagrees with {config_name}: {few(wrong, 3)}")
    if problems:
        raise ConvertError(where, "; ".join(problems))


def few(items: list[str], n: int = 4) -> str:
    shown = ", ".join(items[:n])
    return shown + (f", ... {len(items) - n} more" if len(items) > n else "")
