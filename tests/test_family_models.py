"""Real checkpoints of other Llama-family architectures: the converted MindFormers model computes the
logits transformers computed for them (reference_logits.json, float64), and what cannot convert as it
is says so. (They also run through every end-to-end test with the fixtures; see conftest.)"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import REAL_FAMILY, refused, run_cli
from llama_convert import HF2MSOptions, convert_hf2ms, plan_ms2hf
from llama_convert.verify import MSSide

QWEN2 = REAL_FAMILY / "tiny-random-qwen2-qkvbias-neural-api"
MISTRAL_SWA4 = REAL_FAMILY / "tiny-random-mistral-swa4-neural-api"   # sliding_window 4, 16 positions
needs_family = pytest.mark.skipif(not REAL_FAMILY.exists(), reason="../shared/real-models-family is not beside the checkout")


def mindformers_logits(out: Path, sequences: np.ndarray) -> np.ndarray:
    """Logits of the converted model, run by MindFormers itself (float32, CPU kernels)."""
    plan = plan_ms2hf(out)
    side = MSSide(out, plan.model_config, plan.source.config_file, plan.table, "CPU", len(sequences),
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
