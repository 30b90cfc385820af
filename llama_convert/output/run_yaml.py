"""The small files beside the weights: MindFormers' run YAML for hf2ms (a run configuration for
`run_mode: predict` around the model_config the plan translated), config.json and generation_config.json
for ms2hf."""
from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

from ..core.errors import ConvertError, printable
from ..core.paths import resolved
from ..core.version import __version__
from ..formats.files import read_small
from ..plan.lora import PEFT_CONFIG
from ..plan.plan import Plan
from ..table.schema import Tokenizers


def side_files(plan: Plan, out_dir: Path | None = None) -> dict[str, str]:
    """name -> text of the files written beside the weights. Without `out_dir` (a plan shown, a size
    estimated) the YAML names OUT_DIR by the placeholder <OUT_DIR>."""
    if plan.direction == "hf2ms":
        return {plan.table.mindformers.yaml: yaml_text(plan, out_dir)}
    files = {"config.json": json.dumps(plan.hf_config, indent=2) + "\n",
             "generation_config.json": json.dumps(plan.generation_config, indent=2) + "\n"}
    if plan.lora is not None and plan.lora.adapter_config is not None:
        files[PEFT_CONFIG] = json.dumps(plan.lora.adapter_config, indent=2) + "\n"
    return files


def model_yaml(plan: Plan, out_dir: Path | None = None) -> dict:
    """OUT_DIR's MindFormers YAML: a run configuration for `run_mode: predict` around the model.

    Paths to OUT_DIR's files are absolute, so the YAML runs from any working directory; without
    `out_dir` (a dry run) they are shown under the placeholder <OUT_DIR>. `llama_convert` records the
    table, so that the way back reads this YAML with it; MindFormers reads only the sections it knows.
    """
    mf = plan.table.mindformers
    device = plan.options.device
    out = str(Path(os.path.abspath(out_dir))) if out_dir is not None else "<OUT_DIR>"
    weights = f"{out}/{plan.weight_files[0]}" if plan.options.format == "ckpt" else out
    model_config = {"type": mf.config_class, **plan.model_config, **predict_settings(plan.model_config, device)}
    if plan.options.format == "ckpt":
        # What MindFormers' Trainer.predict() loads when it is given no checkpoint (it clears
        # load_checkpoint then), and what build_network and from_pretrained read; ckpt only, as
        # MindFormers reads this key with mindspore.load_checkpoint's default format.
        model_config["checkpoint_name_or_path"] = weights
    run: dict = {"run_mode": "predict", "seed": 0, "use_parallel": False,
                 "load_checkpoint": weights, "load_ckpt_format": plan.options.format}
    if plan.options.format == "safetensors":
        # Trainer.predict() without a checkpoint falls back to the safetensors in this directory.
        run["pretrained_model_dir"] = out
    if device == "CPU":
        run["postprocess_use_numpy"] = True
    run["context"] = dict(mf.context[device])
    run["trainer"] = {"type": mf.trainer.type, "model_name": mf.trainer.model_name}
    run["model"] = {"model_config": model_config, "arch": {"type": mf.model_class}}
    add_pet_config(plan, run)
    tokenizer = tokenizer_section(plan.source.tokenizer_files, mf.tokenizer, out)
    if tokenizer is not None:
        run["processor"] = {"return_tensors": "ms", "tokenizer": tokenizer, "type": mf.processor}
    if plan.parallel is not None:
        parallel_settings(plan, run, out)
    run["llama_convert"] = {"table": plan.table.name, "version": __version__, **run.pop("llama_convert", {})}
    return run


# Tokens per paged-attention block, as in MindFormers' own Ascend predict configs (LlamaConfig's default too).
BLOCK_SIZE = 16


def predict_settings(mc: dict, device: str) -> dict:
    """How MindFormers runs predict on `device`, as model_config keys.

    Ascend: as MindFormers' own Ascend predict configs (research/llama3_1/*/predict_llama3_1_*.yaml):
    incremental inference (`use_past`: the KV cache in paged attention) with dynamic shapes, which
    MindFormers requires of flash attention in predict mode. The cache is `num_blocks` blocks of
    `block_size` tokens, shared by the batch: batch_size x ceil(seq_length / block_size) blocks hold every
    sequence of a full batch at full length, the most one generate() call can use, and no more (device
    memory: 2 x num_layers x num_blocks x block_size x n_kv_heads x head_dim values). CPU: one full
    forward pass per token; MindSpore's CPU build has no paged-attention kernels.
    """
    if device == "CPU":
        return {"use_past": False}
    blocks_per_sequence = -(-mc["seq_length"] // BLOCK_SIZE)
    return {"use_past": True, "is_dynamic": True, "block_size": BLOCK_SIZE,
            "num_blocks": mc["batch_size"] * blocks_per_sequence}


def parallel_settings(plan: Plan, run: dict, out: str) -> None:
    """--parallel: the run loads OUT_DIR's rank_K/ directories as they are, each card its own.

    MindFormers sees rank_* under load_checkpoint as a multi-rank checkpoint (_get_checkpoint_mode) and,
    with auto_trans_ckpt false, loads rank_{its rank}/ without re-slicing; src_strategy_path_or_dir
    names the strategy files a later transform (auto_trans_ckpt: true on another layout) reads.
    """
    par = plan.parallel
    run.update({"use_parallel": True, "load_checkpoint": out, "auto_trans_ckpt": False,
                "src_strategy_path_or_dir": f"{out}/strategy"})
    run.pop("pretrained_model_dir", None)       # a single-card fallback; here every card has its rank_K/
    model_config = run["model"]["model_config"]
    model_config.pop("checkpoint_name_or_path", None)  # build_network would load it whole on every card
    model_config["offset"] = list(par.offset) if par.spec.pp > 1 else 0
    run["context"].pop("device_id", None)       # msrun gives each process its card
    run["parallel"] = {"parallel_mode": 1, "gradients_mean": False, "enable_alltoall": False, "full_batch": True,
                       "search_mode": "sharding_propagation", "enable_parallel_optimizer": False,
                       "strategy_ckpt_config": {"save_file": "./ckpt_strategy.ckpt", "only_trainable_params": False}}
    run["parallel_config"] = {"data_parallel": par.spec.dp, "model_parallel": par.spec.mp,
                              "pipeline_stage": par.spec.pp, "micro_batch_num": par.spec.pp,
                              "vocab_emb_dp": par.spec.vocab_emb_dp, "use_seq_parallel": False,
                              "gradient_aggregation_group": 4}
    run["micro_batch_interleave_num"] = 1


def add_pet_config(plan: Plan, run: dict) -> None:
    """An unmerged --adapter: MindFormers' pet_config in model_config (build_network wraps the model in
    mindpet's LoRA layers by it), and the PEFT config it came from, for the way back."""
    if plan.lora is None or plan.lora.pet_config is None:
        return
    run["model"]["model_config"]["pet_config"] = dict(plan.lora.pet_config)
    run["llama_convert"] = {"adapter": plan.lora.yaml_record}


def tokenizer_section(files: list[Path], classes: Tokenizers, out: str) -> dict | None:
    """MindFormers' tokenizer for the tokenizer files the source ships, or None when it ships none.

    A sentencepiece tokenizer.model is read by the slow class; a tokenizer.json alone by the fast one
    with `vocab_file: null`. The text-generation pipeline pads batches, so a pad token is always set:
    the source's, else its unk or eos token.
    """
    names = {p.name: p for p in files}
    if "tokenizer.model" in names:
        section = {"type": classes.model, "vocab_file": f"{out}/tokenizer.model"}
    elif "tokenizer.json" in names:
        section = {"type": classes.json, "vocab_file": None, "tokenizer_file": f"{out}/tokenizer.json"}
    else:
        return None
    special = {}
    for name in ("tokenizer_config.json", "special_tokens_map.json"):  # the second wins, as in transformers
        if name in names:
            try:
                data = json.loads(read_small(names[name], "tokenizer file"))
            except (ConvertError, ValueError):
                continue  # copied as it is; the tokenizer itself reports a broken file when it loads
            if isinstance(data, dict):
                special.update({k: _token(v) for k, v in data.items() if k.endswith("_token") and _token(v)})
    for key in ("bos_token", "eos_token", "unk_token"):
        if key in special:
            section[key] = special[key]
    section["pad_token"] = special.get("pad_token") or special.get("unk_token") or special.get("eos_token") or "<unk>"
    return section


def _token(value) -> str | None:
    """A special token as tokenizer files write it: a string, or {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def yaml_text(plan: Plan, out_dir: Path | None = None) -> str:
    head = (f"# MindFormers run configuration (run_mode: predict) written by llama-convert {__version__}\n"
            f"# from {printable(str(resolved(plan.source.root)))} with mapping table {plan.table.name}.\n"
            f"# Paths name this directory absolutely, so the YAML runs from any working directory; after\n"
            f"# moving the directory, convert again or edit load_checkpoint and the paths under it.\n")
    text = yaml.safe_dump(model_yaml(plan, out_dir), sort_keys=False, default_flow_style=False)
    if plan.options.device == "CPU":
        text = text.replace("\npostprocess_use_numpy:", "\n# MindSpore's CPU build has no ArgMax/TopK kernels for "
                            "generation: post-process in numpy.\n# Greedy decoding is therefore written as "
                            "do_sample: true, top_k: 1 (the same tokens).\npostprocess_use_numpy:", 1)
    if "\n    use_past: true\n" in text:
        text = text.replace("\n    use_past: true\n", "\n    # Incremental inference (KV cache in paged attention), as MindFormers' Ascend predict configs; "
                            "num_blocks =\n    # batch_size x ceil(seq_length / block_size): every sequence of a full batch "
                            "at full length.\n    use_past: true\n", 1)
    return head + text
