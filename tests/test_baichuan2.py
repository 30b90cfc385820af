"""Baichuan2-7B: W_pack taken apart or regrouped, the NormHead written normalised, RoPE base 10000,
and Baichuan2-13B (ALiBi) refused. transformers has no Baichuan class (remote code), so the model is
checked against a numpy forward pass written here from Baichuan2-7B's modeling_baichuan.py
(baichuan-inc/Baichuan2-7B-Base: RMSNorm, BaichuanAttention with W_pack and RotaryEmbedding(base=10000),
MLP, NormHead)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import REAL_CONFIGS, assert_rejected, run_cli
from llama_convert import HF2MSOptions, convert_hf2ms, plan_ms2hf
from llama_convert.formats import safetensors as st
from llama_convert.verify import MSSide

SHRUNK = REAL_CONFIGS / "family/Baichuan2__cpu-debug-shrunk-hidden8.json"   # a real Baichuan2-7B config, shrunk
SIZES = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4, vocab_size=64,
             max_position_embeddings=64, model_max_length=64, torch_dtype="float32")


def config() -> dict:
    if not SHRUNK.exists():
        pytest.skip("../shared/real-configs/family is not beside the checkout")
    return {**json.loads(SHRUNK.read_text()), **SIZES}


def weights(cfg: dict) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(22)
    h, f, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    w = {"model.embed_tokens.weight": rng.standard_normal((v, h)), "model.norm.weight": 1 + 0.2 * rng.standard_normal(h),
         # rows of very different norms: NormHead's normalisation changes the logits a great deal
         "lm_head.weight": rng.standard_normal((v, h)) * rng.uniform(0.1, 5.0, (v, 1))}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        w.update({p + "self_attn.W_pack.weight": 0.3 * rng.standard_normal((3 * h, h)),
                  p + "self_attn.o_proj.weight": 0.3 * rng.standard_normal((h, h)),
                  p + "mlp.gate_proj.weight": 0.3 * rng.standard_normal((f, h)),
                  p + "mlp.up_proj.weight": 0.3 * rng.standard_normal((f, h)),
                  p + "mlp.down_proj.weight": 0.3 * rng.standard_normal((h, f)),
                  p + "input_layernorm.weight": 1 + 0.2 * rng.standard_normal(h),
                  p + "post_attention_layernorm.weight": 1 + 0.2 * rng.standard_normal(h)})
    return {k: a.astype(np.float32) for k, a in w.items()}


def reference_logits(cfg: dict, w: dict[str, np.ndarray], ids: np.ndarray, norm_head: bool = True) -> np.ndarray:
    """modeling_baichuan.py's forward in float64, for a batch of token ids (no padding, no cache)."""
    w = {k: a.astype(np.float64) for k, a in w.items()}
    h, heads, eps = cfg["hidden_size"], cfg["num_attention_heads"], cfg["rms_norm_eps"]
    d, n = h // heads, ids.shape[1]

    def rms_norm(x, weight):  # RMSNorm: x * rsqrt(mean(x^2) + eps) * weight
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * weight

    inv_freq = 1.0 / 10000 ** (np.arange(0, d, 2) / d)       # RotaryEmbedding(base=10000)
    freqs = np.outer(np.arange(n), inv_freq)
    emb = np.concatenate([freqs, freqs], -1)
    cos, sin = np.cos(emb), np.sin(emb)

    def rope(x):  # apply_rotary_pos_emb with rotate_half
        half = x.shape[-1] // 2
        rotated = np.concatenate([-x[..., half:], x[..., :half]], -1)
        return x * cos + rotated * sin

    x = w["model.embed_tokens.weight"][ids]
    causal = np.triu(np.full((n, n), -np.inf), 1)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        y = rms_norm(x, w[p + "input_layernorm.weight"])
        proj = y @ w[p + "self_attn.W_pack.weight"].T                # W_pack: [Q; K; V]
        q, k, v = (t.reshape(*t.shape[:2], heads, d).transpose(0, 2, 1, 3) for t in np.split(proj, 3, -1))
        scores = rope(q) @ rope(k).transpose(0, 1, 3, 2) / np.sqrt(d) + causal
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        attn = (probs @ v).transpose(0, 2, 1, 3).reshape(*x.shape)
        x = x + attn @ w[p + "self_attn.o_proj.weight"].T
        y = rms_norm(x, w[p + "post_attention_layernorm.weight"])
        gate, up = y @ w[p + "mlp.gate_proj.weight"].T, y @ w[p + "mlp.up_proj.weight"].T
        x = x + (gate / (1 + np.exp(-gate)) * up) @ w[p + "mlp.down_proj.weight"].T
    x = rms_norm(x, w["model.norm.weight"])
    head = w["lm_head.weight"]
    if norm_head:   # NormHead: F.normalize(weight), eps 1e-12
        head = head / np.maximum(np.linalg.norm(head, axis=1, keepdims=True), 1e-12)
    return x @ head.T


@pytest.fixture(scope="module")
def baichuan(tmp_path_factory) -> Path:
    from safetensors.numpy import save_file
    src = tmp_path_factory.mktemp("baichuan2") / "Baichuan2-7B-tiny"
    src.mkdir()
    cfg = config()
    (src / "config.json").write_text(json.dumps(cfg, indent=2))
    save_file(weights(cfg), str(src / "model.safetensors"), metadata={"format": "pt"})
    return src


@pytest.fixture(scope="module", params=[("ckpt", False), ("safetensors", True)], ids=["split", "qkv-concat"])
def converted(request, baichuan, tmp_path_factory) -> Path:
    fmt, qkv = request.param
    out = tmp_path_factory.mktemp("baichuan2-ms") / "out"
    convert_hf2ms(baichuan, out, HF2MSOptions(format=fmt, qkv_concat=qkv))
    return out


def test_the_fixture_tells_a_normhead_from_a_plain_lm_head():
    cfg, w = config(), weights(config())
    ids = np.arange(1, 9)[None]
    assert np.abs(reference_logits(cfg, w, ids) - reference_logits(cfg, w, ids, norm_head=False)).max() > 1.0


def test_mindformers_computes_baichuan2_7b_as_its_modeling_code_does(ms, baichuan, converted):
    cfg = config()
    ids = np.random.default_rng(0).integers(1, cfg["vocab_size"], (2, 24))   # never the pad id 0
    plan = plan_ms2hf(converted)
    side = MSSide(converted, plan.model_config, plan.source.config_file, plan.table, "CPU", 2, 24)  # strict load
    got = side.logits(ids)
    np.testing.assert_allclose(got, reference_logits(cfg, weights(cfg), ids), atol=1e-4, rtol=0)


def test_the_way_back_writes_the_normhead_normalised_and_says_so(baichuan, converted, tmp_path):
    proc = run_cli("ms2hf", converted, tmp_path / "hf")
    assert proc.returncode == 0, proc.stderr
    assert "lm_head.weight: each row divided by its L2 norm" in proc.stdout and "written normalised" in proc.stdout
    back, src = st.read_header(tmp_path / "hf/model.safetensors")[0], st.read_header(baichuan / "model.safetensors")[0]
    assert sorted(back) == sorted(src)
    for name in src:
        if name != "lm_head.weight":
            assert back[name].read().tobytes() == src[name].read().tobytes(), name
    head = src["lm_head.weight"].read().astype(np.float64)
    np.testing.assert_allclose(back["lm_head.weight"].read(), head / np.linalg.norm(head, axis=1, keepdims=True),
                               rtol=2e-7, atol=0)
    assert json.loads((tmp_path / "hf/config.json").read_text())["architectures"] == ["BaichuanForCausalLM"]


def test_baichuan2_13b_is_refused_naming_what_tells_it_apart(baichuan, tmp_path):
    src = tmp_path / "Baichuan2-13B-tiny"
    src.mkdir()
    cfg = {k: v for k, v in config().items() if k != "max_position_embeddings"}   # as the 13B's config has it
    (src / "config.json").write_text(json.dumps(cfg))
    (src / "model.safetensors").symlink_to(baichuan / "model.safetensors")
    assert_rejected(tmp_path, src, "config.json: max_position_embeddings: absent: this is Baichuan(2)-13B",
                    "ALiBi")
