"""Room two and three: from headers to a plan of every output tensor, validated before any write.

A plan says, for each output tensor, its name, shape, dtype, the source tensors it is made of and
the op that makes it. A dry run prints it; execution follows it tensor by tensor.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable

import yaml

from . import ops
from .checkpoint import Checkpoint
from .config_rules import Translation, translate
from .dtypes import FLOATS, dtype as _dtype
from .errors import ConvertError
from .mapping import Table, describe_layers, eval_dim, holds, layer_name, layer_names, layers_present, load_table, pattern_regex
from .options import Options
from .version import __version__


@dataclass(frozen=True)
class PlannedTensor:
    name: str
    shape: tuple[int, ...]
    dtype: str
    sources: tuple[str, ...]
    source_dtypes: tuple[str, ...]
    op: str
    shard: int = 0
    part: int | None = None   # set on the way back: which output of the op's inverse this tensor is

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * _dtype(self.dtype).itemsize

    @property
    def cast(self) -> str | None:
        changed = sorted({d for d in self.source_dtypes if d != self.dtype})
        return f"{'/'.join(changed)}->{self.dtype}" if changed else None

    def as_dict(self) -> dict:
        op = self.op if self.part is None else f"{self.op}^-1[{self.part}]"
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype, "sources": list(self.sources),
                "op": op, "cast": self.cast, "bytes": self.nbytes}


@dataclass
class Plan:
    source: Checkpoint
    table: Table
    options: Options
    translation: Translation
    tensors: list[PlannedTensor]
    skipped: list[dict] = field(default_factory=list)      # {"name", "reason"}
    twins: list[tuple[str, str]] = field(default_factory=list)  # (dropped, must equal this)
    weight_files: list[str] = field(default_factory=list)  # output weight file names, by shard index
    direction: str = "hf2ms"
    extra_files: dict[str, str] = field(default_factory=dict)  # name -> text (YAML or config.json ...)
    weight_metadata: dict[str, str] = field(default_factory=lambda: {"format": "ms"})

    @property
    def model_config(self) -> dict:
        return self.translation.model_config

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    def model_yaml(self) -> dict:
        mf = self.table.data["mindformers"]
        return {"model": {"model_config": {"type": mf["config_class"], **self.model_config},
                          "arch": {"type": mf["model_class"]}}}

    def op_context(self) -> ops.OpContext:
        return ops.OpContext(self.model_config["num_heads"], self.model_config["n_kv_heads"])


def weights_dtype(tensors: Iterable) -> str:
    """The dtype most of the weight bytes are in (configs sometimes say otherwise). `tensors`: anything
    with dtype and nbytes, source tensors or planned ones."""
    by_bytes: Counter = Counter()
    for t in tensors:
        by_bytes[t.dtype] += t.nbytes
    return by_bytes.most_common(1)[0][0] if by_bytes else "none"


def build_plan(source: Checkpoint, options: Options, table: Table | None = None) -> Plan:
    table = table or load_table(options.table)
    if not source.tensors:
        raise ConvertError(source.weight_files[0], "holds no tensors")
    gen_path = source.root / "generation_config.json"
    translation = translate(table, source.config, source.generation_config, options, weights_dtype(source.tensors.values()),
                            source.config_file, gen_path)
    mc = translation.model_config
    refuse_layer_count(source, [spec["name"] for spec in table.hf_tensors.values()], mc["num_layers"],
                       "num_hidden_layers")
    dims = table_dims(table, mc)
    flags = {"qkv_concat": options.qkv_concat, "bias": mc["qkv_has_bias"], "tied": mc["tie_word_embeddings"],
             "source_untied": not source.config.get("tie_word_embeddings", False)}

    expected = _expected_hf(table, dims, flags, mc["num_layers"])
    skipped, twins = _check_sources(source, table, expected, flags)
    ctx = ops.OpContext(mc["num_heads"], mc["n_kv_heads"])
    dtype_of = {"param": mc["param_init_type"], "norm": mc["layernorm_compute_type"]}
    keyed = []  # (layer, rule order, tensor): whole-model tensors first, then layer by layer
    for order, rule in enumerate(table.ms_rules):
        if not holds(rule.when, flags):
            continue
        for i, name in layer_names(rule.name, mc["num_layers"]):
            srcs = tuple(layer_name(table.hf_tensors[key]["name"], i) for key in rule.sources)
            shapes = [source.tensors[s].shape for s in srcs]
            pt = PlannedTensor(name, tuple(ops.get(rule.op).out_shape(shapes, ctx)), dtype_of[rule.dtype], srcs,
                               tuple(source.tensors[s].dtype for s in srcs), rule.op)
            keyed.append((-1 if i is None else i, order, pt))
    tensors = [pt for *_, pt in sorted(keyed, key=lambda x: x[:2])]
    plan = Plan(source, table, options, translation, tensors, skipped, twins)
    assign_shards(plan)
    plan.extra_files = {"llama_config.yaml": yaml_text(plan)}
    return plan


def refuse_layer_count(source: Checkpoint, patterns: list[str], num_layers: int, key: str) -> None:
    """The config's layer count against the layers the checkpoint holds, before any name is expanded.

    A 1 KB config may claim 10**8 layers; expanding that many tensor names would exhaust memory
    before the missing tensors could be reported.
    """
    present = layers_present(patterns, source.tensors)
    if num_layers != (present[-1] + 1 if present else 0):
        raise ConvertError(source.config_file, f"{key} is {num_layers} but the checkpoint holds {describe_layers(present)}",
                           "the config and the weights do not belong together")


def table_dims(table: Table, mc: dict) -> dict[str, int]:
    """The table's shape symbols for a (validated) model_config."""
    try:
        return {k: eval_dim(v, mc) for k, v in table.data["dims"].items()}
    except ValueError as e:
        raise ConvertError(table.path, f"dims: {e}") from None


def yaml_text(plan: Plan) -> str:
    head = (f"# MindFormers model config written by llama-convert {__version__}\n"
            f"# from {plan.source.root.resolve()} with mapping table {plan.table.name}\n")
    return head + yaml.safe_dump(plan.model_yaml(), sort_keys=False, default_flow_style=False)


def _expected_hf(table: Table, dims: dict, flags: dict, num_layers: int) -> dict[str, tuple[int, ...]]:
    expected = {}
    for spec in table.hf_tensors.values():
        if holds(spec.get("when", ()), flags):
            shape = tuple(dims[d] if isinstance(d, str) else int(d) for d in spec["shape"])
            for _, name in layer_names(spec["name"], num_layers):
                expected[name] = shape
    return expected


def _check_sources(source: Checkpoint, table: Table, expected: dict, flags: dict):
    """Every source tensor accounted for, every expected one present with the shape the config implies."""
    where = source.weight_files[0] if len(source.weight_files) == 1 else source.index_file
    missing = [n for n in expected if n not in source.tensors]
    wrong = []
    for name, shape in expected.items():
        ref = source.tensors.get(name)
        if ref is not None and ref.shape != shape:
            wrong.append(f"{name} is {list(ref.shape)} in {ref.file.name}, config.json implies {list(shape)}")
        if ref is not None and ref.dtype not in FLOATS:
            wrong.append(f"{name} has dtype {ref.dtype}; only bfloat16, float16 and float32 weights convert")
    skipped, twins, unknown = [], [], []
    skip_res = [(re.compile(pattern_regex(p)), reason) for p, reason in table.skip.items()]
    twin_names = {table.hf_tensors[a]["name"]: table.hf_tensors[b]["name"] for a, b in table.tied_twins.items()}
    for name in source.tensors:
        if name in expected:
            continue
        reason = next((r for rx, r in skip_res if rx.match(name)), None)
        if reason:
            skipped.append({"name": name, "reason": reason})
        elif name in twin_names and not flags["source_untied"]:
            twins.append((name, twin_names[name]))
            skipped.append({"name": name, "reason": f"tied to {twin_names[name]} (tie_word_embeddings is true); "
                                                    f"checked equal before writing"})
        else:
            unknown.append(name)
    refuse_mismatch(where, missing, unknown, f"the table {table.path.name} has no rule for them",
                    wrong, "config.json")
    return skipped, twins


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


def assign_shards(plan: Plan) -> None:
    opts = plan.options
    if opts.format == "ckpt":
        plan.weight_files = ["model.ckpt"]
        return
    if opts.max_shard_size:
        shard_ids, shard, used = [], 0, 0
        for t in plan.tensors:
            if used and used + t.nbytes > opts.max_shard_size:
                shard, used = shard + 1, 0
            shard_ids.append(shard)
            used += t.nbytes
    elif plan.source.sharded:
        shard_ids = [plan.source.shard_of[t.sources[0]] for t in plan.tensors]
    else:
        shard_ids = [0] * len(plan.tensors)
    renumber = {s: k for k, s in enumerate(sorted(set(shard_ids)))}
    n = len(renumber)
    plan.tensors = [PlannedTensor(**{**t.__dict__, "shard": renumber[s]}) for t, s in zip(plan.tensors, shard_ids)]
    plan.weight_files = (["model.safetensors"] if n == 1 else
                         [f"model-{k + 1:05d}-of-{n:05d}.safetensors" for k in range(n)])
