"""The way back: a MindSpore checkpoint plus its MindFormers YAML -> a plan of HF tensors.

Driven by the same table as hf2ms: every ms_tensors rule is read backwards, fused tensors are
split by their op's inverse, and the HF config.json is written by the inverse config rules.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from . import ops
from .config_rules import Translation, check_model_config, translate_back
from .dtypes import FLOATS
from .errors import ConvertError
from .formats import ckpt, safetensors as st
from .formats.files import check_regular, read_small
from .formats.tensor import TensorRef
from .mapping import Table, holds, layer_names, load_table, safe_yaml
from .options import Options
from .plan import Plan, PlannedTensor, assign_shards, refuse_layer_count, refuse_mismatch, table_dims
from .source import TOKENIZER_FILES, HFSource
from .value_types import kind

DEFAULT_SHARD = 5 * 10**9


def read_mindformers_yaml(path: Path, hint: str = "pass --config with the model's YAML",
                          table: Table | None = None) -> dict:
    """model.model_config of a MindFormers YAML, every value the table types checked (ConvertError if not)."""
    try:
        data = safe_yaml(read_small(path, "MindFormers YAML", hint))
    except yaml.YAMLError:
        raise ConvertError(path, "is not a MindFormers YAML with model.model_config") from None
    if not isinstance(data, dict) or "model" not in data:
        raise ConvertError(path, "is not a MindFormers YAML with model.model_config")
    if not isinstance(data["model"], dict) or "model_config" not in data["model"]:
        what = f"is {kind(data['model'])}" if not isinstance(data["model"], dict) else "has no model_config"
        raise ConvertError(path, f"model: {what}; expected a mapping holding model_config")
    if not isinstance(data["model"]["model_config"], dict):
        raise ConvertError(path, f"model.model_config: is {kind(data['model']['model_config'])}; "
                                 f"expected a mapping of LlamaConfig fields")
    mc = dict(data["model"]["model_config"])
    mc.pop("type", None)
    check_model_config(table or load_table(), mc, path)
    return mc


def ms_checkpoint_files(path: Path) -> list[Path]:
    """The weight files of a MindSpore checkpoint: a .ckpt or .safetensors file, or those in a directory."""
    path = Path(path)
    if not path.exists():
        raise ConvertError(path, "not found")
    files = [path] if not path.is_dir() else sorted(path.glob("*.ckpt")) or sorted(path.glob("*.safetensors"))
    if not files:
        raise ConvertError(path, "no .ckpt or .safetensors checkpoint found")
    for f in files:  # a FIFO or a directory named model.ckpt is refused by name, before any is read
        check_regular(f, "checkpoint file")
    return files


def read_ms_headers(files: list[Path]) -> tuple[dict[str, TensorRef], dict[str, int], list[str]]:
    """(tensors, file index of each tensor, non-tensor entries) from the headers of MindSpore files."""
    tensors, shard_of, others = {}, {}, []
    for i, f in enumerate(files):
        if f.suffix == ".ckpt":
            refs, non_tensor = ckpt.scan(f)
            others += non_tensor
        else:
            refs = list(st.read_header(f)[0].values())
        for ref in refs:
            if ref.name in tensors:  # which copy is the weight? Guessing could change the model
                raise ConvertError(f, f"tensor {ref.name!r} is also in {tensors[ref.name].file.name}",
                                   "a checkpoint holds each parameter once; remove the stray file")
            tensors[ref.name] = ref
            shard_of[ref.name] = i
    return tensors, shard_of, others


def open_ms_dir(path: Path, config: Path | None = None) -> HFSource:
    """A MindSpore checkpoint (a directory, a .ckpt or a .safetensors file) and its model_config."""
    files = ms_checkpoint_files(path)
    root = Path(path) if Path(path).is_dir() else Path(path).parent
    cfg_path = config or root / "llama_config.yaml"
    mc = read_mindformers_yaml(cfg_path)
    tensors, shard_of, others = read_ms_headers(files)
    index = root / "model.safetensors.index.json"
    tokenizer = [root / n for n in TOKENIZER_FILES if (root / n).is_file()]
    return HFSource(root, mc, None, tensors, files, index if index.exists() and len(files) > 1 else None,
                    shard_of, tokenizer, config_path=cfg_path, non_tensors=others)


def build_ms2hf_plan(source: HFSource, options: Options, table: Table | None = None) -> Plan:
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
                hf_name = spec["name"] if layer is None else spec["name"].replace("{i}", str(layer))
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


def _check(source: HFSource, table: Table, expected: dict[str, tuple[int, ...]]) -> list[dict]:
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
