"""From headers to a plan of every output tensor, checked before anything is written.

A plan says, for each output tensor, its name, shape, dtype, the source tensors it is made of and the
op that makes it, and which output file it goes to. Both directions plan from the same edges
(table/edges.py): hf2ms reads them forward, ms2hf backward. A dry run shows the plan; output/ carries
it out tensor by tensor and writes the files beside the weights (output/run_yaml.py).
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable


from ..table import ops
from .parallel import ParallelPlan, plan_parallel, rank_file
from . import lora
from ..formats.tensor import TensorRef
from ..sources.adapter import open_adapter_dir
from ..sources.checkpoint import Checkpoint
from ..table.config_rules import Translation, check_model_config, translate, translate_back
from ..core.dtypes import dtype as _dtype
from ..table.edges import account, expand
from ..core.errors import ConvertError
from ..table.loader import select_for_hf, select_for_ms
from ..table.schema import Table, describe_layers, layer_names, layers_present
from ..core.options import HF2MSOptions, MS2HFOptions, Parallel
from ..formats.safetensors import shard_names


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
    options: HF2MSOptions | MS2HFOptions
    translation: Translation
    tensors: list[PlannedTensor]
    skipped: list[dict] = field(default_factory=list)      # {"name", "reason"}
    twins: list[tuple[str, str]] = field(default_factory=list)  # (dropped, must equal this)
    weight_files: list[str] = field(default_factory=list)  # output weight file names, by shard index
    direction: str = "hf2ms"
    weight_metadata: dict[str, str] = field(default_factory=lambda: {"format": "ms"})
    # ms2hf: config.json and generation_config.json as data; output/run_yaml.py writes them (or the YAML)
    hf_config: dict | None = None
    generation_config: dict | None = None
    widened_from: str | None = None   # hf2ms --device CPU: the half-precision dtype the weights were widened from
    parallel: ParallelPlan | None = None   # hf2ms --parallel: which rank holds which part of each tensor
    # A LoRA adapter (plan/lora.py): hf2ms writes its factors among `tensors`; ms2hf into OUT/adapter/
    # (`adapter_tensors`); either may merge it into the weights instead.
    lora: lora.LoraPlan | None = None
    adapter_tensors: list[PlannedTensor] = field(default_factory=list)

    def ref(self, name: str) -> TensorRef:
        """A source tensor by name: the model's, or a LoRA factor's."""
        found = self.source.tensors.get(name)
        return found if found is not None or self.lora is None else self.lora.refs[name]

    @property
    def merges(self) -> dict[str, lora.Merge]:
        return self.lora.merges if self.lora is not None else {}

    @property
    def model_config(self) -> dict:
        return self.translation.model_config

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    def op_context(self) -> ops.OpContext:
        return ops.OpContext(self.model_config["num_heads"],
                             self.model_config.get("n_kv_heads") or self.model_config["num_heads"])


def weights_dtype(tensors: Iterable) -> str:
    """The dtype most of the weight bytes are in (configs sometimes say otherwise). `tensors`: anything
    with dtype and nbytes, source tensors or planned ones."""
    by_bytes: Counter = Counter()
    for t in tensors:
        by_bytes[t.dtype] += t.nbytes
    return by_bytes.most_common(1)[0][0] if by_bytes else "none"


def build_plan(source: Checkpoint, options: HF2MSOptions, table: Table | None = None) -> Plan:
    """hf2ms: the edges read forward, one MindFormers tensor from its HF sources."""
    if not isinstance(options, HF2MSOptions):
        raise TypeError(f"hf2ms takes HF2MSOptions, not {type(options).__name__}")
    table = table or select_for_hf(source.config, source.config_file, options.table)
    if not source.tensors:
        raise ConvertError(source.weight_files[0], "holds no tensors")
    gen_path = source.root / "generation_config.json"
    translation = translate(table, source.config, source.generation_config, options, weights_dtype(source.tensors.values()),
                            source.config_file, gen_path)
    mc = translation.model_config
    if options.device == "CPU":
        cpu_settings(options, mc, weights_dtype(source.tensors.values()), translation.notes)
    refuse_layer_count(source, [t.name for t in table.hf_tensors.values()], mc["num_layers"],
                       "num_hidden_layers")
    edges = expand(table, mc, source.config)
    seen = account(table, "hf", edges.expected("hf"), source.tensors, [], _where(source), "config.json")
    dtype_of = {"param": mc["param_init_type"], "norm": mc["layernorm_compute_type"]}
    tensors = [PlannedTensor(e.ms, e.ms_shape, dtype_of[e.dtype], e.hf,
                             tuple(source.tensors[s].dtype for s in e.hf), e.op, part=e.part) for e in edges.edges]
    translation.notes += lossy_notes(edges.edges, "ms")
    plan = Plan(source, table, options, translation, tensors, seen.skipped, seen.twins)
    if options.device == "CPU" and weights_dtype(source.tensors.values()) != mc["param_init_type"]:
        plan.widened_from = weights_dtype(source.tensors.values())
    if options.parallel:
        if options.max_shard_size:
            raise ConvertError(f"--parallel {options.parallel}", "--max-shard-size cannot be combined with it: "
                               "MindFormers loads one weight file per rank_K directory",
                               "leave --max-shard-size out; each rank's file is already 1/M of the model")
        plan.parallel = plan_parallel(Parallel.parse(options.parallel), edges.edges, mc, table.path,
                                      source.config_file)
    if options.merge_adapter and not options.adapter:
        raise ConvertError("--merge-adapter", "has no adapter to merge", "give --adapter ADAPTER_DIR too")
    if options.adapter:
        source.adapter = source.adapter or open_adapter_dir(Path(options.adapter))
        plan.lora = lora.hf2ms(source.adapter, edges, mc["num_layers"], options.dtype, options.device,
                               options.merge_adapter)
        plan.tensors += [_factor(f) for f in plan.lora.factors]
        for f in plan.lora.factors:  # each factor in the shard of the weight it adapts
            source.shard_of.setdefault(f.source.name, source.shard_of.get(f.weight, 0))
        if plan.lora.pet_config is not None:
            plan.lora.pet_config = lora.with_param_type(plan.lora.pet_config, plan.lora.factors[0].dtype,
                                                        mc["param_init_type"])
    assign_shards(plan)
    return plan


def _factor(f: lora.Factor) -> PlannedTensor:
    return PlannedTensor(f.name, f.shape, f.dtype, (f.source.name,), (f.source.dtype,), "copy")


def build_ms2hf_plan(source: Checkpoint, options: MS2HFOptions, table: Table | None = None) -> Plan:
    """ms2hf: the same edges read backward, each MindFormers tensor split into its HF parts."""
    if not isinstance(options, MS2HFOptions):
        raise TypeError(f"ms2hf takes MS2HFOptions, not {type(options).__name__}: the way back writes HF "
                        f"safetensors only")
    table = table or select_for_ms(source.recorded_table, options.table)
    mc = dict(source.config)
    check_model_config(table, mc, source.config_file)
    refuse_layer_count(source, [r.name for r in table.ms_tensors], mc["num_layers"], "model_config.num_layers")
    notes = []
    if options.dtype != "keep":
        hf_dtype = options.dtype
    elif source.widened_from:
        # --device CPU widened a half-precision source to float32; narrowing those values back is exact
        hf_dtype = source.widened_from
        notes.append(f"narrowed back to {hf_dtype}, the source dtype that conversion.json records these weights "
                     f"were widened from (--device CPU); exact for the weights as converted; --dtype overrides")
    else:
        hf_dtype = str(mc.get("param_init_type", "float32"))
    hf_config, gen = translate_back(table, mc, source.config_file, None if hf_dtype == mc.get("param_init_type") else hf_dtype)
    edges = expand(table, mc, hf_config)
    seen = account(table, "ms", edges.expected("ms"), source.tensors, source.non_tensors, _where(source),
                   source.config_file.name)
    tensors, written = [], set()
    packed = _packed_parts(edges.edges)
    for e in edges.edges:
        if e.part is not None:  # one part of a packed HF tensor: the tensor is packed from all its parts at once
            name = e.hf[0]
            if name not in written:
                written.add(name)
                parts = packed[name]
                tensors.append(PlannedTensor(name, e.hf_shapes[0], hf_dtype, parts,
                                             tuple(source.tensors[p].dtype for p in parts), e.op))
            continue
        src_dtype = (source.tensors[e.ms].dtype,)
        for part, (name, shape) in enumerate(zip(e.hf, e.hf_shapes)):
            if name not in written:  # one HF tensor may feed two MindFormers ones (--untie): write it once
                written.add(name)
                tensors.append(PlannedTensor(name, shape, hf_dtype, (e.ms,), src_dtype, e.op,
                                             part=None if e.op == "copy" else part))
    notes += lossy_notes(edges.edges, "hf")
    tensors = hf_order(table, tensors, mc["num_layers"])
    plan = Plan(source, table, options, Translation(mc, notes=notes), tensors, seen.skipped, [], direction="ms2hf",
                weight_metadata={"format": "pt"})
    if source.lora:
        plan.lora = lora.ms2hf(source.lora, source.pet_config, source.adapter_record, edges, mc["num_layers"],
                               options.dtype, options.merge_adapter, source.config_file)
        plan.adapter_tensors = [_factor(f) for f in plan.lora.factors]
    elif options.merge_adapter:
        raise ConvertError(source.config_file, "--merge-adapter: the checkpoint holds no LoRA factors "
                           "(mindpet_delta_lora_a/b) to merge", "leave --merge-adapter out")
    assign_shards(plan)
    plan.hf_config, plan.generation_config = hf_config, gen
    return plan


def hf_order(table: Table, tensors: list[PlannedTensor], num_layers: int) -> list[PlannedTensor]:
    """The way back's tensors in a HF checkpoint's module order: the embedding, each decoder layer in turn
    (its tensors in table order), the other whole-model tensors (the final norm), the lm_head. Shards
    are cut and files written in this order, never the source's, so one model gives the same files
    from any checkpoint of it: one card, a training run's ranks, MindSpore's merge of them."""
    rank: dict[str, tuple[int, int, int]] = {}
    for k, (key, spec) in enumerate(table.hf_tensors.items()):
        for layer, name in layer_names(spec.name, num_layers):
            group = {"embed": 0, "lm_head": 3}.get(key, 2 if layer is None else 1)
            rank[name] = (group, layer or 0, k)
    # by name last: a tensor the table does not place must not fall back on the source's order
    return sorted(tensors, key=lambda t: (*rank.get(t.name, (4, 0, 0)), t.name))


def lossy_notes(edges, side: str) -> list[str]:
    """One note per op that changes values (ops.Op.lossy), naming the tensors of `side` it writes."""
    written: dict[str, list[str]] = {}
    for e in edges:
        if ops.get(e.op).lossy:
            written.setdefault(e.op, []).extend([e.ms] if side == "ms" else list(e.hf))
    return [f"{', '.join(names[:2])}{' ...' if len(names) > 2 else ''}: {ops.get(op).doc}; {ops.get(op).lossy}"
            for op, names in written.items()]


def _packed_parts(edges) -> dict[str, tuple[str, ...]]:
    """HF tensor -> the MindFormers tensors it is packed from, in the op's order (tables that take a
    packed HF tensor apart, part by part)."""
    parts: dict[str, dict[int, str]] = {}
    for e in edges:
        if e.part is not None:
            parts.setdefault(e.hf[0], {})[e.part] = e.ms
    return {name: tuple(by_part[k] for k in sorted(by_part)) for name, by_part in parts.items()}


# MindSpore's CPU build has no ArgMax/TopK kernels for generation (ArgMaxExt, TopkExt "unregistered"):
# greedy decoding is written as sampling from the top-1 token, which MindFormers post-processes in
# numpy (postprocess_use_numpy) and which picks exactly the greedy token.
CPU_GREEDY = {"do_sample": True, "top_k": 1, "top_p": 1.0}


def cpu_settings(options: HF2MSOptions, mc: dict, source_dtype: str, notes: list[str]) -> None:
    """--device CPU: float32 weights (the table's CPU settings say so) and generation CPU kernels can run."""
    if options.dtype not in ("keep", "float32"):
        raise ConvertError(f"--dtype {options.dtype}", "MindSpore's CPU kernels have no half-precision "
                           "matmul or gather, so a --device CPU model cannot run in it",
                           "leave --dtype out (CPU weights are float32), or convert for --device Ascend")
    if source_dtype != mc["param_init_type"]:
        notes.append(f"--device CPU: weights widened from {source_dtype} to {mc['param_init_type']} (lossless): "
                     f"MindSpore's CPU kernels have no {source_dtype}")
    if not mc.get("do_sample"):
        mc.update(CPU_GREEDY)
        notes.append("--device CPU: greedy decoding written as do_sample: true, top_k: 1 (the same tokens): "
                     "MindSpore's CPU build has no ArgMax kernel for generation")


def _where(source: Checkpoint):
    """What to name in a message about the checkpoint as a whole: its one file, else its index or directory."""
    if len(source.weight_files) == 1:
        return source.weight_files[0]
    return source.index_file or source.root


def refuse_layer_count(source: Checkpoint, patterns: list[str], num_layers: int, key: str) -> None:
    """The config's layer count against the layers the checkpoint holds, before any name is expanded.

    A 1 KB config may claim 10**8 layers; expanding that many tensor names would exhaust memory
    before the missing tensors could be reported.
    """
    present = layers_present(patterns, source.tensors)
    if num_layers != (present[-1] + 1 if present else 0):
        raise ConvertError(source.config_file, f"{key} is {num_layers} but the checkpoint holds {describe_layers(present)}",
                           "the config and the weights do not belong together")


def assign_shards(plan: Plan) -> None:
    opts = plan.options
    if plan.parallel is not None:
        plan.weight_files = [rank_file(k, opts.format) for k in range(plan.parallel.ranks)]
        return
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
    plan.weight_files = shard_names(n, mindspore=plan.direction == "hf2ms")
