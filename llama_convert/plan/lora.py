"""A LoRA adapter planned beside its model, both directions: written as mindpet's factors under a pet_config
(hf2ms), as a PEFT adapter directory OUT/adapter/ (ms2hf), or merged into the weights (--merge-adapter).

The factors are copied as they are (cast only where the weights are: --dtype, or --device CPU), so an
adapter that goes to MindFormers and back keeps its bytes. A merge is W + (alpha/r) * B @ A, computed in
float32 from the exactly widened inputs and rounded once to the weight's output dtype.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..core.dtypes import cast, to_float32
from ..core.errors import ConvertError
from ..formats.tensor import TensorRef
from ..sources.adapter import (MINDPET_A, MINDPET_B, PEFT_PREFIX, Adapter, check_factors,
                               mindpet_modules, pet_settings)
from ..table.edges import Edge, Edges

if TYPE_CHECKING:
    import numpy as np

PEFT_FILE = "adapter/adapter_model.safetensors"
PEFT_CONFIG = "adapter/adapter_config.json"


@dataclass(frozen=True)
class Merge:
    a: TensorRef
    b: TensorRef
    scale: float


@dataclass(frozen=True)
class Factor:
    """One LoRA factor to write: its output name, shape and dtype, from which source tensor, and the
    source name of the weight it adapts."""
    name: str
    shape: tuple[int, ...]
    dtype: str
    source: TensorRef
    weight: str


@dataclass
class LoraPlan:
    factors: list[Factor] = field(default_factory=list)
    merges: dict[str, Merge] = field(default_factory=dict)   # source weight name -> the delta added to it
    pet_config: dict | None = None       # hf2ms, unmerged: model_config.pet_config
    adapter_config: dict | None = None   # ms2hf, unmerged: OUT/adapter/adapter_config.json
    yaml_record: dict | None = None      # hf2ms, unmerged: the YAML's llama_convert.adapter
    record: dict = field(default_factory=dict)  # conversion.json's "adapter"

    @property
    def refs(self) -> dict[str, TensorRef]:
        """The factors' source tensors by name (kept apart from the model's)."""
        return {f.source.name: f.source for f in self.factors}


def _majority_dtype(refs: list[TensorRef]) -> str:
    by_bytes: Counter = Counter()
    for r in refs:
        by_bytes[r.dtype] += r.nbytes
    return by_bytes.most_common(1)[0][0]


def factor_dtype(refs: list[TensorRef], asked: str, device: str | None) -> str:
    """The factors keep their dtype, unless --dtype asks for another or MindSpore's CPU build needs float32."""
    if asked != "keep":
        return asked
    return "float32" if device == "CPU" else _majority_dtype(refs)


def _layers_alike(per_layer: dict[int, set[str]], num_layers: int, where, names: str) -> None:
    """MindFormers' target_modules picks cells by name in every decoder layer alike."""
    kinds = set().union(*per_layer.values())
    partial = sorted(k for k in kinds if sum(k in v for v in per_layer.values()) != num_layers)
    if partial:
        layers = sorted(i for i, v in per_layer.items() if partial[0] in v)
        raise ConvertError(where, f"adapts {partial[0]} in layers {_ranges(layers)} of {num_layers} only "
                           f"(layers_to_transform or a {names} that names layers); MindFormers' target_modules "
                           "adapts a module in every layer alike", "pass --merge-adapter to merge it into the weights")


def _ranges(ids: list[int]) -> str:
    return ", ".join(str(i) for i in ids[:6]) + (", ..." if len(ids) > 6 else "")


def _local(module: str) -> str:
    return module.rsplit(".", 1)[-1]


def _edge_for(edges_by: dict[str, Edge], weight: str, where, side: str) -> Edge:
    edge = edges_by.get(weight)
    if edge is None:
        raise ConvertError(where, f"adapts {weight.removesuffix('.weight')}, which the base model does not have "
                           f"({side})", "the adapter was trained on another model")
    if edge.layer is None:
        raise ConvertError(where, f"adapts {weight.removesuffix('.weight')}: MindFormers' LoRA adapts the linear "
                           "layers of the decoder layers only, not the embedding or lm_head",
                           "merge it with PEFT's merge_and_unload() and convert the merged model")
    return edge


def _check_shapes(a: TensorRef, b: TensorRef, w_shape: tuple[int, ...], module: str, where) -> None:
    if len(w_shape) != 2 or a.shape[1] != w_shape[1] or b.shape[0] != w_shape[0]:
        raise ConvertError(where, f"{module}: A is {list(a.shape)} and B is {list(b.shape)}, which do not fit its "
                           f"weight {list(w_shape)}", "the adapter was trained on another model")


def hf2ms(adapter: Adapter, edges: Edges, num_layers: int, dtype: str, device: str, merge: bool) -> LoraPlan:
    """A PEFT adapter onto a hf2ms plan's edges: mindpet factors and a pet_config, or merges."""
    where = adapter.files[-1]
    if not merge:
        adapter.statable()
    by_hf = {name: e for e in edges.edges for name in e.hf}
    rank_of = {e.ms: k for k, e in enumerate(edges.edges)}
    lp = LoraPlan()
    per_layer: dict[int, set[str]] = {i: set() for i in range(num_layers)}
    out_dtype = factor_dtype([adapter.tensors[n] for m in adapter.modules for n in (m.a, m.b)], dtype, device)
    locals_in_order: dict[str, int] = {}
    for m in adapter.modules:
        edge = _edge_for(by_hf, m.weight, where, "no such weight")
        a, b = adapter.tensors[m.a], adapter.tensors[m.b]
        _check_shapes(a, b, edge.hf_shapes[edge.hf.index(m.weight)], m.module, where)
        per_layer.setdefault(edge.layer, set()).add(_local(m.module))
        if merge:
            lp.merges[m.weight] = Merge(a, b, adapter.scales[m.module])
            continue
        if edge.op != "copy":
            raise ConvertError("--qkv-concat", f"{m.module} is adapted, and MindFormers' fused "
                               f"{_local(edge.ms.removesuffix('.weight'))} "
                               "would need one block-diagonal adapter for the modules it fuses, which mindpet's LoRA "
                               "cannot hold", "pass --merge-adapter too, or convert without --qkv-concat")
        cell = edge.ms.removesuffix(".weight")
        locals_in_order[_local(cell)] = min(locals_in_order.get(_local(cell), rank_of[edge.ms]), rank_of[edge.ms])
        lp.factors += [Factor(f"{cell}.{MINDPET_A}", a.shape, out_dtype, a, m.weight),
                       Factor(f"{cell}.{MINDPET_B}", b.shape, out_dtype, b, m.weight)]
    if not merge:  # a merge changes the weights it adapts, whichever layers they are in
        _layers_alike(per_layer, num_layers, where, "target_modules regex")
    scales = sorted(set(adapter.scales.values()))
    lp.record = {"dir": str(adapter.root), "peft_type": "LORA", "rank": adapter.rank, "alpha": adapter.alpha,
                 "scale": scales[0] if len(scales) == 1 else scales, "modules": len(adapter.modules), "merged": merge,
                 "notes": adapter.notes}
    if merge:
        return lp
    by_order = sorted(locals_in_order, key=locals_in_order.get)
    lp.pet_config = {"pet_type": "lora", "lora_rank": adapter.rank, "lora_alpha": adapter.alpha,
                     "lora_dropout": adapter.dropout, "target_modules": "|".join(f".*{c}" for c in by_order)}
    lp.record["target_modules"] = lp.pet_config["target_modules"]
    lp.yaml_record = {"config": adapter.config, "pet_config": dict(lp.pet_config)}
    return lp


def with_param_type(pet_config: dict, factor_dtype_: str, param_init_type: str) -> dict:
    """mindpet creates the factors in the adapted layer's param_init_type unless pet_config names another:
    factors stored in another dtype then load as they are instead of being refused by a strict load."""
    return pet_config if factor_dtype_ == param_init_type else {**pet_config, "param_init_type": factor_dtype_}


def ms2hf(lora: dict[str, TensorRef], pet: dict | None, record: dict | None, edges: Edges, num_layers: int,
          dtype: str, merge: bool, where) -> LoraPlan:
    """mindpet factors onto a ms2hf plan's edges: a PEFT adapter for OUT/adapter/, or merges."""
    rank, alpha, dropout, target = pet_settings(pet, where)
    by_ms = {e.ms: e for e in edges.edges}
    lp = LoraPlan()
    # In the model's order (layer by layer), not the source's: the adapter's files then depend on the
    # factors alone, not on how a checkpoint (one card, a training run's ranks) stored them.
    position = {e.ms: k for k, e in enumerate(edges.edges)}
    modules = sorted(mindpet_modules(lora, where), key=lambda m: position.get(m.weight, len(position)))
    per_layer: dict[int, set[str]] = {i: set() for i in range(num_layers)}
    hf_modules: dict[str, int] = {}
    out_dtype = factor_dtype(list(lora.values()), dtype, None)
    for m in modules:
        edge = _edge_for(by_ms, m.weight, where, "no such MindFormers weight")
        a, b = lora[m.a], lora[m.b]
        if check_factors(lora, m, where) != rank:
            raise ConvertError(where, f"{m.module}'s factors have rank {a.shape[0]}, but pet_config.lora_rank is {rank}")
        _check_shapes(a, b, edge.ms_shape, m.module, where)
        per_layer.setdefault(edge.layer, set()).add(_local(m.module))
        if merge:
            lp.merges[m.weight] = Merge(a, b, alpha / rank)
            continue
        if edge.op != "copy":
            raise ConvertError(where, f"{m.module} is LoRA on a fused weight ({edge.op}): PEFT adapts "
                               f"{', '.join(_local(h.removesuffix('.weight')) for h in edge.hf)} each with its own A, so no PEFT "
                               "adapter states it", "pass --merge-adapter to write merged weights")
        hf_module = edge.hf[0].removesuffix(".weight")
        hf_modules.setdefault(_local(hf_module), len(hf_modules))
        lp.factors += [Factor(f"{PEFT_PREFIX}{hf_module}.lora_A.weight", a.shape, out_dtype, a, m.weight),
                       Factor(f"{PEFT_PREFIX}{hf_module}.lora_B.weight", b.shape, out_dtype, b, m.weight)]
    if not merge:
        _layers_alike(per_layer, num_layers, where, "target_modules regex")
    lp.record = {"rank": rank, "alpha": alpha, "scale": alpha / rank, "modules": len(modules), "merged": merge,
                 "target_modules": target}
    if not merge:
        lp.adapter_config = peft_config(rank, alpha, dropout, target, sorted(hf_modules, key=hf_modules.get), record)
    return lp


def peft_config(rank: int, alpha: float, dropout: float, target: str, targets: list[str],
                record: dict | None) -> dict:
    """adapter_config.json for the factors: the one the adapter came with when the YAML recorded it and the
    pet_config still says what it was made from; else a plain LoRA config that states them."""
    if isinstance(record, dict) and isinstance(record.get("config"), dict):
        made = record.get("pet_config") or {}
        if (made.get("lora_rank"), made.get("lora_alpha"), made.get("target_modules")) == (rank, alpha, target):
            return record["config"]
    return {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": None, "r": rank,
            "lora_alpha": alpha, "lora_dropout": dropout, "target_modules": targets, "bias": "none",
            "fan_in_fan_out": False, "use_rslora": False, "use_dora": False, "modules_to_save": None,
            "layers_to_transform": None, "layers_pattern": None, "rank_pattern": {}, "alpha_pattern": {},
            "init_lora_weights": True, "inference_mode": True}


def merged(weight: np.ndarray, weight_dtype: str, merge: Merge, out_dtype: str) -> np.ndarray:
    """W + scale * B @ A in float32 from exactly widened inputs, rounded once to out_dtype."""
    import numpy as np
    if not math.isfinite(merge.scale):
        raise ConvertError(merge.a.file, f"the LoRA scale is {merge.scale}")
    w = to_float32(weight, weight_dtype).astype(np.float32, copy=True)
    a = to_float32(merge.a.read(), merge.a.dtype)
    b = to_float32(merge.b.read(), merge.b.dtype)
    w += (b @ a) * np.float32(merge.scale)   # PEFT's order: the delta, scaled, then the sum
    return cast(w.reshape(weight.shape), "float32", out_dtype)
