"""The way back: a MindSpore checkpoint plus its MindFormers YAML (read by ms_source) -> a plan of HF tensors.

Driven by the same table as hf2ms: every ms_tensors rule is read backwards, fused tensors are
split by their op's inverse, and the HF config.json is written by the inverse config rules.
"""
from __future__ import annotations

import json
import re

from . import ops
from .checkpoint import Checkpoint
from .config_rules import Translation, check_model_config, translate_back
from .dtypes import FLOATS
from .mapping import Table, holds, layer_name, layer_names, load_table
from .options import Options
from .plan import Plan, PlannedTensor, assign_shards, refuse_layer_count, refuse_mismatch, table_dims

DEFAULT_SHARD = 5 * 10**9


def build_ms2hf_plan(source: Checkpoint, options: Options, table: Table | None = None) -> Plan:
    table = table or load_table(options.table)
    mc = source.config
    check_model_config(table, mc, source.config_file)
    refuse_layer_count(source, [r.name for r in table.ms_rules], mc["num_layers"], "model_config.num_layers")
    flags = {"qkv_concat": bool(mc.get("qkv_concat", False)), "bias": bool(mc.get("qkv_has_bias", False)),
             "tied": bool(mc.get("tie_word_embeddings", False))}
    flags["source_untied"] = not flags["tied"]
    dims = table_dims(table, mc)
    ctx = ops.OpContext(mc["num_heads"], mc.get("n_kv_heads") or mc["num_heads"])
    hf_dtype = options.dtype if options.dtype != "keep" else str(mc.get("param_init_type", "float32"))

    planned, expected_ms = [], {}
    for rule in table.ms_rules:
        if not holds(rule.when, flags):
            continue
        op = ops.get(rule.op)
        for layer, ms_name in layer_names(rule.name, mc["num_layers"]):
            hf_specs = [table.hf_tensors[k] for k in rule.sources]
            hf_shapes = [tuple(dims[d] for d in spec["shape"]) for spec in hf_specs]
            expected_ms[ms_name] = tuple(op.out_shape(hf_shapes, ctx))
            for part, (spec, shape) in enumerate(zip(hf_specs, hf_shapes)):
                hf_name = layer_name(spec["name"], layer)
                planned.append((layer if layer is not None else -1, len(planned), PlannedTensor(
                    hf_name, shape, hf_dtype, (ms_name,), (), rule.op, part=None if rule.op == "copy" else part)))
    skipped = _check(source, table, expected_ms)
    tensors = [PlannedTensor(**{**pt.__dict__, "source_dtypes": (source.tensors[pt.sources[0]].dtype,)})
               for *_, pt in sorted(planned, key=lambda x: x[:2])]
    hf_config, gen = translate_back(table, mc, source.config_file, None if options.dtype == "keep" else hf_dtype)
    translation = Translation(mc)
    plan = Plan(source, table, options, translation, tensors, skipped, [], direction="ms2hf",
                weight_metadata={"format": "pt"})
    assign_shards(plan)
    plan.extra_files = {"config.json": json.dumps(hf_config, indent=2) + "\n",
                        "generation_config.json": json.dumps(gen, indent=2) + "\n"}
    return plan


def _check(source: Checkpoint, table: Table, expected: dict[str, tuple[int, ...]]) -> list[dict]:
    where = source.weight_files[0] if len(source.weight_files) == 1 else source.root
    skip_res = [(re.compile(rx), why) for rx, why in table.data.get("ms_skip", {}).items()]
    skipped = [{"name": n, "reason": "not a tensor"} for n in source.non_tensors]
    unknown, wrong = [], []
    for name, ref in source.tensors.items():
        if name in expected:
            if ref.shape != expected[name]:
                wrong.append(f"{name} is {list(ref.shape)}, {source.config_file.name} implies {list(expected[name])}")
            elif ref.dtype not in FLOATS:
                wrong.append(f"{name} has dtype {ref.dtype}")
            continue
        reason = next((why for rx, why in skip_res if rx.search(name)), None)
        if reason:
            skipped.append({"name": name, "reason": reason})
        else:
            unknown.append(name)
    missing = [n for n in expected if n not in source.tensors]
    refuse_mismatch(where, missing, unknown, "neither model weights nor known training state", wrong,
                    source.config_file.name)
    return skipped
