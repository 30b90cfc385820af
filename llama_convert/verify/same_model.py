"""Whether MS_DIR can be a conversion of HF_DIR at all, decided from configs and headers alone."""
from __future__ import annotations

from pathlib import Path

from ..core.errors import ConvertError


def refuse_different_models(hf_dir: Path, ms_dir: Path, adapter: bool = False):
    """ConvertError unless MS_DIR can be a conversion of HF_DIR, decided from configs and headers alone.

    Both sides are planned as the converter would (HF config through the table, MindSpore checkpoint
    through the table backwards), which also checks each checkpoint against its own config; then the
    structural keys and the shapes of the tensors both sides name are compared. Loading two models
    only to report garbage logits (or to crash building one) is worse than saying so up front.
    Returns (hf2ms plan of HF_DIR, ms2hf plan of MS_DIR): their tables and checked model_configs.
    """
    from ..table.edges import few
    from ..sources.hf import open_hf_dir
    from ..table.loader import select_for_hf
    from ..sources.detect import open_mindspore
    from ..core.options import HF2MSOptions, MS2HFOptions
    from ..plan.plan import build_ms2hf_plan, build_plan
    from ..table.value_types import show

    hf_source, ms_source = open_hf_dir(hf_dir), open_mindspore(ms_dir)
    if ms_source.lora and not adapter:  # HF_DIR alone is not the model MS_DIR's LoRA layers compute
        raise ConvertError(ms_dir, "holds LoRA factors (mindpet_delta_lora_a/b) under a pet_config",
                           "verify it with --adapter ADAPTER_DIR, the PEFT adapter it was converted from")
    hf_table = select_for_hf(hf_source.config, hf_source.config_file)
    # A YAML that records no table (written by other tools) is read with HF_DIR's; HF_DIR is planned for
    # the seq_length MS_DIR was converted for, which a table's checks may depend on (a Mistral window).
    ms_plan = build_ms2hf_plan(ms_source, MS2HFOptions(), None if ms_source.recorded_table else hf_table)
    hf_plan = build_plan(hf_source, HF2MSOptions(seq_length=ms_plan.model_config.get("seq_length")), hf_table)
    hf_mc, ms_mc = hf_plan.model_config, ms_plan.model_config
    differ = []
    if hf_plan.table.name != ms_plan.table.name:
        differ.append(f"table {ms_plan.table.name} vs {hf_plan.table.name} for config.json")
    for key in hf_plan.table.verify.structural:   # the keys that make two checkpoints different models
        a, b = hf_mc.get(key), ms_mc.get(key)
        if key == "n_kv_heads":
            a, b = a or hf_mc["num_heads"], b or ms_mc["num_heads"]
        elif isinstance(a, bool) or isinstance(b, bool):
            a, b = bool(a), bool(b)
        if key == "tie_word_embeddings" and a and not b:
            continue  # hf2ms --untie: the tied embedding was copied into lm_head; the same model
        if a != b:
            differ.append(f"model_config.{key} {show(b)} vs {show(a)} from config.json")
    hf_shapes = {n: r.shape for n, r in hf_plan.source.tensors.items()}
    shapes = [f"{t.name} {list(t.shape)} vs {list(hf_shapes[t.name])}" for t in ms_plan.tensors
              if t.name in hf_shapes and hf_shapes[t.name] != t.shape]
    if shapes:  # a differing key explains its shapes: count them; alone, the shapes are the evidence
        differ += [f"{len(shapes)} tensor shapes"] if differ else [few(shapes, 3)]
    if differ:
        raise ConvertError(ms_plan.source.config_file, f"describes a different model than {hf_plan.source.config_file}: "
                           f"{', '.join(differ)}", "MS_DIR is not a conversion of HF_DIR; verify compares a model "
                           "with its own conversion")
    return hf_plan, ms_plan
