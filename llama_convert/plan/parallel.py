"""--parallel: which card holds which part of every tensor, as MindFormers' legacy Llama cuts it.

The table says how each tensor is split (TensorRule.split) and which pipeline stage holds a
whole-model tensor (TensorRule.stage); this module turns that into a layout per tensor and a file per
rank. Ranks are numbered as MindSpore numbers them under semi-auto parallel: stage by stage, and
within a stage row-major over the device matrix (data_parallel, model_parallel), so the model-parallel
group of a stage is consecutive ranks. A stage holds its layers as MindFormers' LayerSetting assigns
them: num_layers // pp each, and the remainder as `offset`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import ConvertError
from ..core.options import Parallel
from ..formats.strategy import Layout, OperatorStrategy, StrategyMap
from ..table.edges import Edge

# MindFormers refuses a model_parallel that does not divide these (MultiHeadAttention and FeedForward's
# checks in llama_transformer.py / llama_layer.py): (model_config key, what it is called in HF's config).
_MUST_DIVIDE = (("num_heads", "num_attention_heads"), ("n_kv_heads", "num_key_value_heads"),
                ("intermediate_size", "intermediate_size"), ("hidden_size", "hidden_size"))


@dataclass(frozen=True)
class ParallelPlan:
    spec: Parallel
    offset: tuple[int, ...]              # MindFormers' parallel_config offset: extra layers per stage
    stages: dict[str, tuple[int, ...]]   # tensor name -> the pipeline stages that hold it
    layouts: dict[str, Layout]           # tensor name -> how a stage's devices cut it

    @property
    def ranks(self) -> int:
        return self.spec.ranks

    @property
    def per_stage(self) -> int:
        return self.spec.dp * self.spec.mp

    def stage_of_rank(self, rank: int) -> int:
        return rank // self.per_stage

    def stage_ranks(self, stage: int) -> range:
        return range(stage * self.per_stage, (stage + 1) * self.per_stage)

    def holds(self, rank: int, name: str) -> bool:
        return self.stage_of_rank(rank) in self.stages[name]

    def block(self, rank: int, name: str, shape: tuple[int, ...]) -> tuple[slice, ...]:
        """The part of tensor `name` (of full `shape`) that `rank` holds."""
        return self.layouts[name].block(rank % self.per_stage, shape)

    def strategy(self, stage: int) -> StrategyMap:
        """The strategy file MindSpore would save for a rank of `stage`: that stage's parameters. One
        operator item carries the stage, which merge_pipeline_strategys reads from the first item."""
        dp, mp = self.spec.dp, self.spec.mp
        op = OperatorStrategy(f"Default/network-LlamaForCausalLM/stage-{stage}/MatMul-op0", stage,
                              ((dp, 1), (mp, 1)))
        return StrategyMap(1, {n: lay for n, lay in self.layouts.items() if stage in self.stages[n]}, (op,))


def strategy_file(stage_first_rank: int) -> str:
    """MindSpore's name for a rank's saved strategy (strategy_ckpt_save_file in MindFormers)."""
    return f"ckpt_strategy_rank_{stage_first_rank}.ckpt"


def rank_file(rank: int, fmt: str) -> str:
    """A rank's weight file, as transform_checkpoints names its output; rank_K/ holds only it."""
    return f"rank_{rank}/checkpoint_{rank}.{fmt}"


def stage_layers(num_layers: int, pp: int) -> tuple[tuple[int, ...], list[int]]:
    """(offset, stage of each layer): num_layers // pp per stage and the remainder spread by offset,
    middle stages first, then the first stage (its embedding is a lookup), the last (it also computes
    the logits) last. The stage of layer i is LayerSetting's: the first stage whose running total
    exceeds i."""
    base, extra = divmod(num_layers, pp)
    order = [*range(1, pp - 1), 0, pp - 1] if pp > 1 else [0]
    offset = [0] * pp
    for s in order[:extra]:
        offset[s] += 1
    stages = []
    for s in range(pp):
        stages += [s] * (base + offset[s])
    return tuple(offset), stages


def refuse(spec: Parallel, mc: dict, config_file: Path) -> None:
    """Layouts MindFormers itself refuses, said before anything is read: which dimension, and which M work."""
    sizes = {key: mc.get(key) or (mc["num_heads"] if key == "n_kv_heads" else None) for key, _ in _MUST_DIVIDE}
    works = [m for m in range(1, math.gcd(*sizes.values()) + 1) if math.gcd(*sizes.values()) % m == 0]
    for key, hf_key in _MUST_DIVIDE:
        if sizes[key] % spec.mp:
            raise ConvertError(config_file, f"--parallel mp={spec.mp}: {hf_key} is {sizes[key]}, which "
                               f"model_parallel {spec.mp} does not divide (MindFormers' Llama gives every card "
                               f"an equal share of it)", f"use mp = {', '.join(map(str, works))}")
    if spec.pp > mc["num_layers"]:
        raise ConvertError(config_file, f"--parallel pp={spec.pp}: the model has {mc['num_layers']} layers, "
                           f"fewer than the pipeline stages", f"use pp <= {mc['num_layers']}")


def plan_parallel(spec: Parallel, edges: list[Edge], mc: dict, table_path: Path, config_file: Path) -> ParallelPlan:
    refuse(spec, mc, config_file)
    offset, layer_stage = stage_layers(mc["num_layers"], spec.pp)
    dev = (spec.dp, spec.mp)
    vocab_split = not spec.vocab_emb_dp and mc["vocab_size"] % spec.mp == 0
    last = spec.pp - 1
    stages, layouts = {}, {}
    for e in edges:
        if e.split is None or (e.layer is None and e.stage is None):
            word = "split" if e.split is None else "stage"
            raise ConvertError(table_path, f"ms_tensors: the rule for {e.ms} has no `{word}:`, so --parallel "
                               f"cannot tell how MindFormers cuts it", "add split: rows|columns|vocab|none (and "
                               "stage: first|last for a whole-model tensor) to the rule, or convert without --parallel")
        axis = {"rows": 0, "columns": 1, "vocab": 0 if vocab_split else None, "none": None}[e.split]
        tensor_map = [-1] * len(e.ms_shape)
        if axis is not None and axis < len(tensor_map):
            tensor_map[axis] = 0  # device axis 0 from the right of (dp, mp): model_parallel
        layouts[e.ms] = Layout(dev, tuple(tensor_map))
        if e.layer is not None:
            stages[e.ms] = (layer_stage[e.layer],)
        elif e.stage == "first":
            # MindFormers ties lm_head to the embedding's parameter: the last stage computes logits with it
            stages[e.ms] = (0, last) if mc.get("tie_word_embeddings") and last else (0,)
        else:
            stages[e.ms] = (last,)
    return ParallelPlan(spec, offset, stages, layouts)
