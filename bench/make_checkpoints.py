"""Seeded synthetic HF checkpoints with real model shapes, for the benchmarks.

    .venv/bin/python bench/make_checkpoints.py [--cache bench/cache] [--models llama-3.2-1b llama-3.2-3b]

Values are random (seeded), shapes and file layout are those of the real models: Llama-3.2-1B is
bf16, tied, in 3 safetensors shards (2.3 GiB); Llama-3.2-3B is bf16, tied; Llama-3.1-8B (only when
asked for: 15 GiB) is bf16, untied, in 4 shards. NAME-x16 is NAME with a trained model's logits (see
TRAINED_LOGITS). A model already in the cache is left alone.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file

LLAMA3_ROPE = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192}
COMMON = dict(architectures=["LlamaForCausalLM"], model_type="llama", hidden_act="silu", attention_bias=False,
              mlp_bias=False, bos_token_id=128000, eos_token_id=128001, initializer_range=0.02,
              max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=500000.0, rope_scaling=LLAMA3_ROPE,
              tie_word_embeddings=True, torch_dtype="bfloat16", use_cache=True, vocab_size=128256,
              transformers_version="4.57.1")
MODELS = {
    "llama-3.2-1b": dict(COMMON, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=64, shards=3),
    "llama-3.2-3b": dict(COMMON, hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
                         num_attention_heads=24, num_key_value_heads=8, head_dim=128, shards=4),
    # The size most users convert; for verify --stream's memory bound. Not in the default list: 15 GiB.
    "llama-3.1-8b": dict(COMMON, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=128, tie_word_embeddings=False,
                         rope_scaling=dict(LLAMA3_ROPE, factor=8.0), eos_token_id=[128001, 128008, 128009],
                         shards=4),
}
DEFAULT_MODELS = ["llama-3.2-1b", "llama-3.2-3b"]


def tensor_shapes(c: dict) -> list[tuple[str, tuple[int, ...]]]:
    h, f, d = c["hidden_size"], c["intermediate_size"], c["head_dim"]
    q, kv = c["num_attention_heads"] * d, c["num_key_value_heads"] * d
    out = [("model.embed_tokens.weight", (c["vocab_size"], h))]
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out += [(p + "input_layernorm.weight", (h,)), (p + "self_attn.q_proj.weight", (q, h)),
                (p + "self_attn.k_proj.weight", (kv, h)), (p + "self_attn.v_proj.weight", (kv, h)),
                (p + "self_attn.o_proj.weight", (h, q)), (p + "post_attention_layernorm.weight", (h,)),
                (p + "mlp.gate_proj.weight", (f, h)), (p + "mlp.up_proj.weight", (f, h)),
                (p + "mlp.down_proj.weight", (h, f))]
    out.append(("model.norm.weight", (h,)))
    return out if c["tie_word_embeddings"] else out + [("lm_head.weight", (c["vocab_size"], h))]


# NAME-x16: the same seeded values with the embedding and the lm_head scaled by 16, so that logits have
# a trained model's size (std ~14 on the 1B shape, ~1 without) and verify's tolerance is tested where
# a fixed one cried wolf.
TRAINED_LOGITS = "-x16"
ALL_NAMES = list(MODELS) + [n + TRAINED_LOGITS for n in MODELS]


def make(name: str, cache: Path) -> Path:
    out = cache / name
    if (out / "config.json").exists():
        return out
    spec = dict(MODELS[name.removesuffix(TRAINED_LOGITS)])
    shards = spec.pop("shards")
    return write_checkpoint(out, spec, shards, 16.0 if name.endswith(TRAINED_LOGITS) else 1.0)


def write_checkpoint(out: Path, spec: dict, shards: int, logits_scale: float = 1.0, seed: int = 0) -> Path:
    """A seeded bf16 checkpoint of config `spec` in `shards` safetensors files, the embedding and
    lm_head scaled by logits_scale."""
    out.mkdir(parents=True, exist_ok=True)
    shapes = tensor_shapes(spec)
    total = sum(math.prod(s) * 2 for _, s in shapes)
    per_shard, gen = total / shards, torch.Generator().manual_seed(seed)
    weight_map, shard, batch, used = {}, 1, {}, 0
    names = [f"model-{k:05d}-of-{shards:05d}.safetensors" for k in range(1, shards + 1)]
    for i, (tname, shape) in enumerate(shapes):
        t = torch.randn(shape, generator=gen, dtype=torch.float32)
        t = 1.0 + 0.1 * t if tname.endswith("norm.weight") else 0.02 * t
        if tname in ("model.embed_tokens.weight", "lm_head.weight"):
            t = t * logits_scale
        batch[tname] = t.to(torch.bfloat16)
        used += t.numel() * 2
        weight_map[tname] = names[shard - 1]
        last = i == len(shapes) - 1
        if last or (used >= per_shard * shard and shard < shards):
            save_file(batch, out / names[shard - 1], metadata={"format": "pt"})
            batch, shard = {}, shard + 1
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    (out / "config.json").write_text(json.dumps(spec, indent=2))
    (out / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": spec["bos_token_id"], "eos_token_id": spec["eos_token_id"], "do_sample": True,
         "temperature": 0.6, "top_p": 0.9}))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, default=Path(__file__).resolve().parent / "cache")
    ap.add_argument("--models", nargs="+", default=DEFAULT_MODELS, choices=ALL_NAMES)
    args = ap.parse_args()
    for name in args.models:
        path = make(name, args.cache)
        size = sum(p.stat().st_size for p in path.glob("*.safetensors"))
        print(f"{path}: {size / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
