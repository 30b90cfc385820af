"""Real checkpoints of other Llama-family architectures: the converted MindFormers model computes the
logits transformers computed for them (reference_logits.json, float64), and what cannot convert as it
is says so. (They also run through every end-to-end test with the fixtures; see conftest.)"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import REAL_FAMILY, raw, refused, run_cli
from llama_convert import HF2MSOptions, convert_hf2ms, plan_ms2hf
from llama_convert.verify import MSSide

QWEN2 = REAL_FAMILY / "tiny-random-qwen2-qkvbias-neural-api"
MISTRAL_SWA4 = REAL_FAMILY / "tiny-random-mistral-swa4-neural-api"   # sliding_window 4, 16 positions
needs_family = pytest.mark.skipif(not REAL_FAMILY.exists(), reason="../shared/real-models-family is not beside the checkout")


def mindformers_logits(out: Path, sequences: np.ndarray, **change) -> np.ndarray:
    """Logits of the converted model, run by MindFormers itself (float32, CPU kernels, loaded strictly),
    with `change` to its model_config."""
    plan = plan_ms2hf(out)
    side = MSSide(out, {**plan.model_config, **change}, plan.source.config_file, plan.table, "CPU", len(sequences),
                  sequences.shape[1])
    return side.logits(sequences)


def reference(src: Path) -> tuple[np.ndarray, np.ndarray]:
    ref = json.loads((src / "reference_logits.json").read_text())
    return np.array(ref["sequences"], dtype=np.int64), np.array(ref["logits"], dtype=np.float64)


@needs_family
@pytest.mark.parametrize("fmt,qkv", [("ckpt", False), ("safetensors", True)])
def test_qwen2_with_qkv_biases_computes_the_reference_logits(ms, tmp_path, fmt, qkv):
    out = tmp_path / "out"
    convert_hf2ms(QWEN2, out, HF2MSOptions(format=fmt, qkv_concat=qkv))
    sequences, expected = reference(QWEN2)
    got = mindformers_logits(out, sequences)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


@needs_family
def test_qwen2_verify_runs_transformers_qwen2_on_the_hf_side(tmp_path):
    out = tmp_path / "out"
    convert_hf2ms(QWEN2, out)
    proc = run_cli("verify", QWEN2, out, "--json", "--layers")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["passed"] and report["max_abs_diff"] < 1e-5


@needs_family
def test_mistral_with_a_4_token_window_is_refused_at_its_default_seq_length(tmp_path):
    refused(run_cli("hf2ms", MISTRAL_SWA4, tmp_path / "out"), "config.json: sliding_window",
            "shorter than seq_length 16", "--seq-length 4")
    assert not (tmp_path / "out").exists()


@needs_family
def test_mistral_with_a_4_token_window_converts_for_4_tokens_and_verifies(tmp_path):
    out = tmp_path / "out"
    assert run_cli("hf2ms", MISTRAL_SWA4, out, "--seq-length", "4").returncode == 0
    proc = run_cli("verify", MISTRAL_SWA4, out, "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert report["passed"] and report["seq_len"] == 4  # capped at what the model was converted for


@needs_family
def test_mistral_within_its_window_computes_the_reference_logits(ms, tmp_path):
    out = tmp_path / "out"
    convert_hf2ms(MISTRAL_SWA4, out, HF2MSOptions(seq_length=4, qkv_concat=True))
    sequences, expected = reference(MISTRAL_SWA4)
    # The window binds only from the 5th token on; before it, HF's logits are full attention's.
    np.testing.assert_allclose(mindformers_logits(out, sequences[:, :4]), expected[:, :4], atol=1e-5, rtol=0)


# ------------------------------------------------------------------ InternLM2: fused wqkv, remote code only

INTERNLM2 = REAL_FAMILY / "tiny-random-internlm2-wqkv-neural-api"   # pad_token_id 0, which its sequences hold


@pytest.fixture(scope="module", params=[("ckpt", False), ("safetensors", True)], ids=["split", "qkv-concat"])
def internlm2(request, tmp_path_factory) -> Path:
    """The real InternLM2 checkpoint converted once per layout: wqkv taken apart, or copied to w_qkv."""
    fmt, qkv = request.param
    out = tmp_path_factory.mktemp("internlm2") / "out"
    convert_hf2ms(INTERNLM2, out, HF2MSOptions(format=fmt, qkv_concat=qkv))
    return out


@needs_family
def test_internlm2_computes_its_reference_logits_with_and_without_qkv_concat(ms, internlm2):
    sequences, expected = reference(INTERNLM2)
    # The reference feeds token 0 as text, and pad_token_id is 0: MindFormers masks attention to the pad
    # id (the conversion's note says so), HF does not. With no pad id both compute the same.
    assert any("pad_token_id 0: MindFormers masks" in n
               for n in json.loads((internlm2 / "conversion.json").read_text())["config"]["notes"])
    np.testing.assert_allclose(mindformers_logits(internlm2, sequences, pad_token_id=-1), expected, atol=1e-4, rtol=0)


@needs_family
def test_internlm2_wqkv_is_copied_to_w_qkv_or_split_into_wq_wk_wv(internlm2):
    src, got = raw(INTERNLM2), raw(internlm2)
    wqkv = src["model.layers.1.attention.wqkv.weight"]
    if "model.layers.1.attention.w_qkv.weight" in got:
        assert got["model.layers.1.attention.w_qkv.weight"] == wqkv  # the same bytes: the same layout
    else:  # per KV head [q, q, k, v] of 4 rows of 16 float32 each
        rows = np.frombuffer(wqkv[2], dtype=np.float32).reshape(2, 4, 4, 16)
        for name, part in (("wq", rows[:, :2]), ("wk", rows[:, 2]), ("wv", rows[:, 3])):
            assert got[f"model.layers.1.attention.{name}.weight"][2] == part.tobytes()


@needs_family
def test_internlm2_comes_back_byte_identical(internlm2, tmp_path):
    assert run_cli("ms2hf", internlm2, tmp_path / "hf").returncode == 0
    assert raw(tmp_path / "hf") == raw(INTERNLM2)
    back = json.loads((tmp_path / "hf/config.json").read_text())
    assert back["architectures"] == ["InternLM2ForCausalLM"] and back["bias"] is False


@needs_family
def test_internlm2_verify_says_it_has_no_hf_side(internlm2):
    refused(run_cli("verify", INTERNLM2, internlm2), "has no InternLM2ForCausalLM", "remote", "reference logits")


@needs_family
def test_internlm2_biases_on_wqkv_and_wo_are_taken_apart_and_packed_again_exactly(tmp_path):
    # InternLM2 with `bias: true` (modeling_internlm2.py: wqkv and wo take config.bias): the wqkv bias is
    # packed per KV head like the weight's rows
    from safetensors.numpy import save_file
    src = tmp_path / "internlm2-bias"
    src.mkdir()
    cfg = {**json.loads((INTERNLM2 / "config.json").read_text()), "bias": True}
    (src / "config.json").write_text(json.dumps(cfg))
    rng = np.random.default_rng(5)
    weights = {name: np.frombuffer(t[2], dtype=np.float32).reshape(t[1]) for name, t in raw(INTERNLM2).items()}
    for i in range(cfg["num_hidden_layers"]):
        weights[f"model.layers.{i}.attention.wqkv.bias"] = rng.standard_normal(32).astype(np.float32)
        weights[f"model.layers.{i}.attention.wo.bias"] = rng.standard_normal(16).astype(np.float32)
    save_file(weights, str(src / "model.safetensors"))
    for qkv in (False, True):
        out, back = tmp_path / f"ms-{qkv}", tmp_path / f"hf-{qkv}"
        convert_hf2ms(src, out, HF2MSOptions(qkv_concat=qkv))
        got = raw(out)
        bias = weights["model.layers.1.attention.wqkv.bias"]
        if qkv:
            assert got["model.layers.1.attention.w_qkv.bias"][2] == bias.tobytes()
        else:  # per KV head [q, q, k, v] of 4 values each
            assert got["model.layers.1.attention.wk.bias"][2] == bias.reshape(2, 4, 4)[:, 2].tobytes()
        assert run_cli("ms2hf", out, back).returncode == 0
        assert raw(back) == raw(src)
