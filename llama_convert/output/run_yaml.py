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
    model_config = {"type": mf.config_class, **plan.model_config}
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
    run["llama_convert"] = {"table": plan.table.name, "version": __version__, **run.pop("llama_convert", {})}
    return run


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
    return head + text
