"""Training-run directories built the way MindSpore slices a model: a single-card conversion plus
optimizer state, cut for each rank by `mindspore.transform_checkpoints` under a strategy written for the
test (formats/strategy.py), laid out as a MindFormers run saves them:

    run/checkpoint/rank_{k}/llama_rank_{k}-{epoch}_{step}.ckpt (or .safetensors)
    run/strategy/ckpt_strategy_rank_{k}.ckpt      (each holding its pipeline stage only)

and MindSpore's own merge of such a directory (the oracle): transform_checkpoints to one card for
.ckpt, `mindspore.parallel.unified_safetensors` for safetensors."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np

from llama_convert.formats import ckpt, strategy as st

ROWS = re.compile(r"\.(attention\.(wq|wk|wv|w_qkv)|feed_forward\.(w1|w3|w_gate_hidden))\.(weight|bias)$")
COLUMNS = re.compile(r"\.(attention\.wo|feed_forward\.w2)\.weight$")
# mindpet's LoRADense under MindFormers' Linear (transpose_b), as mindformers/pet/tuners/lora_adapter.py
# shards it from the weight's matmul strategy (out_split, in_split): lora_a [r, in] takes (1, in_split),
# lora_b [out, r] takes (out_split, 1). So B is cut by rows where the weight is, A by columns where it is.
LORA_ROWS = re.compile(r"\.(attention\.(wq|wk|wv)|feed_forward\.(w1|w3))\.mindpet_delta_lora_b$")
LORA_COLUMNS = re.compile(r"\.(attention\.wo|feed_forward\.w2)\.mindpet_delta_lora_a$")
LORA = "mindpet_delta_lora_"
LAYER = re.compile(r"model\.layers\.(\d+)\.")
PREFIX = "llama"


def layout_of(name: str, shape: tuple[int, ...], dp: int, mp: int, opt: bool) -> st.Layout:
    """MindFormers' legacy Llama rules: q/k/v and gate/up by output rows, wo/w2 by input columns, the
    lm_head by vocabulary rows, everything else whole; with `opt`, each block also cut over dp."""
    base = name.split(".", 1)[1] if name.startswith(("adam_m.", "adam_v.")) else name
    if ROWS.search(base) or LORA_ROWS.search(base):
        tmap = (0,) + (-1,) * (len(shape) - 1)
    elif COLUMNS.search(base) or LORA_COLUMNS.search(base):
        tmap = (-1, 0)
    elif base == "lm_head.weight":
        tmap = (0, -1)
    else:
        tmap = (-1,) * len(shape)
    # The devices sharing a block are mp apart for a split tensor; a whole one repeats over every axis,
    # and MindSpore's own slicing then shards over the rightmost axes (step 1).
    step = mp if any(m >= 0 for m in tmap) else 1
    shard = dict(opt_weight_shard_step=step, opt_weight_shard_size=dp) if opt else {}
    return st.Layout((dp, mp), tmap, **shard)


def stage_of(name: str, layers: int, pp: int, tied: bool) -> list[int]:
    """The pipeline stages holding a tensor: layers in equal runs, the embedding first (and last too when
    the lm_head shares it), the final norm and lm_head last."""
    base = name.split(".", 1)[1] if name.startswith(("adam_m.", "adam_v.")) else name
    m = LAYER.match(base)
    if m:
        return [int(m.group(1)) * pp // layers]
    if "tok_embeddings" in base:
        return sorted({0, pp - 1}) if tied else [0]
    return [pp - 1]


def training_checkpoint(ms, single_ckpt: Path, out: Path, seed: int = 0) -> list[str]:
    """The single-card model plus what a training run saves beside it: Adam moments per trained weight
    (a LoRA run trains the mindpet factors only) and bookkeeping scalars. Returns the names of the weights."""
    params = ms.load_checkpoint(str(single_ckpt))
    rng = np.random.default_rng(seed)
    weights = list(params)
    out_list = [{"name": n, "data": params[n]} for n in weights]
    for n in [n for n in weights if LORA in n] or weights:
        for kind in ("adam_m", "adam_v"):
            data = rng.standard_normal(params[n].shape).astype(np.float32)
            out_list.append({"name": f"{kind}.{n}", "data": ms.Tensor(data)})
    for n, v in (("learning_rate", ms.Tensor(np.float32(1e-5))), ("scale_sense", ms.Tensor(np.float32(1024.0))),
                 ("global_step", ms.Tensor(np.array([8], np.int32))),
                 ("current_iterator_step", ms.Tensor(np.int32(8))),
                 ("last_overflow_iterator_step", ms.Tensor(np.int32(0)))):
        out_list.append({"name": n, "data": v})
    ms.save_checkpoint(out_list, str(out), append_dict={"epoch_num": 1, "step_num": 8, "loss_scale": 1024.0,
                                                        "global_batch_size": 8})
    return weights


def stage_maps(names: dict[str, tuple[int, ...]], layers: int, tied: bool, dp: int, mp: int, pp: int,
               opt: bool) -> dict[int, dict[str, st.Layout]]:
    stages: dict[int, dict[str, st.Layout]] = {s: {} for s in range(pp)}
    for name, shape in names.items():
        for s in stage_of(name, layers, pp, tied):
            stages[s][name] = layout_of(name, shape, dp, mp, opt)
    return stages


def _ops(stage: int) -> tuple[st.OperatorStrategy, ...]:
    return (st.OperatorStrategy(f"Default/network-stage{stage}/MatMul-op0", stage, ((1, 1),)),)


def build_run(ms, single_dir: Path, run: Path, *, mp: int, pp: int = 1, dp: int = 1, opt: bool = False,
              fmt: str = "ckpt", layers: int = 2, tied: bool = False, saves: tuple[tuple[int, int], ...] = ((1, 8),),
              work: Path | None = None) -> Path:
    """A run directory holding `saves` ((epoch, step) each) of every rank, sliced by MindSpore."""
    work = work or run.parent / f"{run.name}-work"
    full = work / "full" / "rank_0"
    full.mkdir(parents=True)
    training_checkpoint(ms, single_dir / "model.ckpt", full / "train.ckpt")
    refs, _ = ckpt.scan(full / "train.ckpt")
    shapes = {r.name: r.shape for r in refs if r.name.startswith(("adam_m.", "adam_v.")) or r.name in
              {x.name for x in ckpt.scan(single_dir / "model.ckpt")[0]}}
    stages = stage_maps(shapes, layers, tied, dp, mp, pp, opt)
    devices = dp * mp
    merged = work / "merged_strategy.ckpt"
    st.write(merged, st.StrategyMap(1, {f"{s}-{n}": lay for s in stages for n, lay in stages[s].items()},
                                    tuple(op for s in stages for op in _ops(s))))
    sliced = work / "sliced"
    ms.transform_checkpoints(str(work / "full"), str(sliced), "slice", None, str(merged))
    (run / "strategy").mkdir(parents=True)
    for k in range(devices * pp):
        stage = k // devices
        st.write(run / "strategy" / f"ckpt_strategy_rank_{k}.ckpt", st.StrategyMap(1, stages[stage], _ops(stage)))
        rank_dir = run / "checkpoint" / f"rank_{k}"
        rank_dir.mkdir(parents=True)
        src = sliced / f"rank_{k}" / f"slice{k}.ckpt"
        for epoch, step in saves:
            dst = rank_dir / f"{PREFIX}_rank_{k}-{epoch}_{step}.{fmt}"
            if fmt == "ckpt":
                shutil.copyfile(src, dst)
            else:
                params = ms.load_checkpoint(str(src))
                ms.save_checkpoint([{"name": n, "data": p} for n, p in params.items()], str(dst),
                                   format="safetensors")
    return merged


def oracle_merge(ms, run: Path, merged_strategy: Path, dst: Path, fmt: str = "ckpt") -> Path:
    """MindSpore's own merge of the run's checkpoints into one file."""
    if fmt == "ckpt":
        ms.transform_checkpoints(str(run / "checkpoint"), str(dst), "merged", str(merged_strategy), None)
        return dst / "rank_0" / "merged0.ckpt"
    from mindspore.parallel import unified_safetensors
    unified_safetensors(str(run / "checkpoint"), str(merged_strategy), str(dst), max_process_num=1)
    return dst
