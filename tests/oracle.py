"""Independent expectations for converted checkpoints.

Written out by hand from MindFormers' documented layout and its own qkv_concat_hf2mg /
ffn_concat_hf2mg; it shares no code with the converter's mapping table or ops.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import yaml


def hf_state(hf_dir: Path) -> dict[str, np.ndarray]:
    """Every HF tensor as float32 numpy, read with the reference libraries."""
    from safetensors.torch import load_file
    hf_dir = Path(hf_dir)
    files = sorted(hf_dir.glob("*.safetensors")) or sorted(hf_dir.glob("pytorch_model*.bin"))
    state = {}
    for f in files:
        part = load_file(f) if f.suffix == ".safetensors" else torch.load(f, weights_only=True)
        state.update(part)
    return {k: v.float().numpy() for k, v in state.items()}


def model_config(out_dir: Path) -> dict:
    cfg = yaml.safe_load((Path(out_dir) / "llama_config.yaml").read_text())["model"]["model_config"]
    cfg = dict(cfg)
    cfg.pop("type")
    return cfg


def expected_ms(hf_dir: Path, cfg: dict) -> dict[str, np.ndarray]:
    from mindformers.utils.convert_utils import ffn_concat_hf2mg, qkv_concat_hf2mg
    sd = hf_state(hf_dir)
    hf_cfg = json.loads((Path(hf_dir) / "config.json").read_text())
    heads, kv, hidden = cfg["num_heads"], cfg["n_kv_heads"], cfg["hidden_size"]
    out = {"model.tok_embeddings.embedding_weight": sd["model.embed_tokens.weight"],
           "model.norm_out.weight": sd["model.norm.weight"]}
    if not cfg["tie_word_embeddings"]:
        src_tied = hf_cfg.get("tie_word_embeddings", False)
        out["lm_head.weight"] = sd["model.embed_tokens.weight"] if src_tied else sd["lm_head.weight"]
    for i in range(cfg["num_layers"]):
        hf = lambda n: sd[f"model.layers.{i}.{n}"]  # noqa: E731
        ms = f"model.layers.{i}."
        out[ms + "attention_norm.weight"] = hf("input_layernorm.weight")
        out[ms + "ffn_norm.weight"] = hf("post_attention_layernorm.weight")
        out[ms + "attention.wo.weight"] = hf("self_attn.o_proj.weight")
        out[ms + "feed_forward.w2.weight"] = hf("mlp.down_proj.weight")
        kinds = ["weight"] + (["bias"] if cfg["qkv_has_bias"] else [])
        if cfg["attn_proj_has_bias"]:
            out[ms + "attention.wo.bias"] = hf("self_attn.o_proj.bias")
        # Phi-3 keeps [q; k; v] and [gate; up] in one tensor each: the concatenation MindFormers' own
        # converters start from
        fused = f"model.layers.{i}.self_attn.qkv_proj.weight" in sd
        qkv_of = lambda kind: (hf(f"self_attn.qkv_proj.{kind}") if fused else  # noqa: E731
                               np.concatenate([hf(f"self_attn.{p}_proj.{kind}") for p in "qkv"]))
        gate_up = (hf("mlp.gate_up_proj.weight") if fused else
                   np.concatenate([hf("mlp.gate_proj.weight"), hf("mlp.up_proj.weight")]))
        q_rows = hidden
        if cfg["qkv_concat"]:
            for kind in kinds:
                out[ms + f"attention.w_qkv.{kind}"] = qkv_concat_hf2mg(qkv_of(kind), heads, kv, hidden)
            out[ms + "feed_forward.w_gate_hidden.weight"] = ffn_concat_hf2mg(gate_up, cfg["intermediate_size"])
        else:
            for kind in kinds:
                q, k, v = np.split(qkv_of(kind), [q_rows, q_rows + kv * (hidden // heads)])
                out.update({ms + f"attention.wq.{kind}": q, ms + f"attention.wk.{kind}": k,
                            ms + f"attention.wv.{kind}": v})
            out[ms + "feed_forward.w1.weight"], out[ms + "feed_forward.w3.weight"] = np.split(gate_up, 2)
    return out


def load_ms_checkpoint(ms, out_dir: Path) -> dict:
    """Parameters of a converted directory, loaded by mindspore itself."""
    out_dir = Path(out_dir)
    if (out_dir / "model.ckpt").exists():
        return ms.load_checkpoint(str(out_dir / "model.ckpt"))
    params = {}
    for f in sorted(out_dir.glob("*.safetensors")):
        params.update(ms.load_checkpoint(str(f), format="safetensors"))
    return params


def as_float32(param) -> np.ndarray:
    import mindspore
    return param.astype(mindspore.float32).asnumpy()


def kv_cache_parameters(cfg: dict) -> list[str]:
    """The parameters of MindFormers' Llama that are not weights: with use_past (the Ascend YAML), each
    layer's paged-attention KV cache, which MindFormers fills as it generates and no checkpoint holds."""
    if not cfg.get("use_past"):
        return []
    return sorted(f"model.layers.{i}.attention.infer_attention.paged_attention_mgr.{kind}_cache"
                  for i in range(cfg["num_layers"]) for kind in ("key", "value"))


def build_net(cfg: dict):
    from mindformers.models import LlamaConfig, LlamaForCausalLM
    return LlamaForCausalLM(LlamaConfig(**cfg))
