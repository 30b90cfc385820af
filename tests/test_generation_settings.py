"""Generation settings: every HF generation key MindFormers' GenerationConfig reads reaches it, and verify
compares HF's GenerationConfig with MindFormers' `from_model_config` of the converted YAML, key by key."""
from __future__ import annotations

import json

import pytest

from conftest import FIXTURES, REAL_CONFIGS, run_cli
from llama_convert import HF2MSOptions, convert_hf2ms
from llama_convert.core.options import HF2MSOptions as Options
from llama_convert.plan.plan import CPU_GREEDY
from llama_convert.table.config_rules import translate
from llama_convert.table.loader import load_table
from llama_convert.verify.config_parity import generation_differences

TABLE = load_table()
LLAMA3 = FIXTURES / "gqa-llama3-rope"
# Meta's own generation_config.json of Llama-3.2-3B-Instruct: do_sample, temperature 0.6, top_p 0.9
INSTRUCT = REAL_CONFIGS / "family/generation_config/Llama-3.2-3B-Instruct.generation_config.json"


def instruct_generation() -> dict:
    if not INSTRUCT.exists():
        pytest.skip("shared/ not beside the checkout")
    return json.loads(INSTRUCT.read_text())


def model_config(gen: dict, device: str = "Ascend") -> dict:
    hf = json.loads((LLAMA3 / "config.json").read_text())
    return translate(TABLE, hf, gen, Options(device=device), "float32", LLAMA3 / "config.json").model_config


@pytest.mark.parametrize("device", ["Ascend", "CPU"])
def test_a_llama3_instruct_source_samples_in_mindformers_as_in_hf(ms, device):
    gen = instruct_generation()
    mc = model_config(gen, device)
    assert (mc["do_sample"], mc["temperature"], mc["top_p"]) == (True, 0.6, 0.9)
    from mindformers.generation import GenerationConfig
    from mindformers.models import LlamaConfig
    mf = GenerationConfig.from_model_config(LlamaConfig(**mc))
    assert (mf.do_sample, mf.temperature, mf.top_p) == (True, 0.6, 0.9)
    assert generation_differences(TABLE, gen, mc) == []


def test_every_generation_key_mindformers_reads_is_carried_and_a_changed_one_is_named(ms):
    gen = {"do_sample": True, "temperature": 0.7, "top_k": 20, "top_p": 0.8, "repetition_penalty": 1.1,
           "encoder_repetition_penalty": 1.2, "renormalize_logits": True, "max_length": 300, "max_new_tokens": 200,
           "min_length": 3, "min_new_tokens": 2, "return_dict_in_generate": True, "output_scores": True,
           "output_logits": True}
    mc = model_config(gen)
    assert generation_differences(TABLE, gen, mc) == []
    for key, value in gen.items():
        changed = {**mc, TABLE.generation[key].to: value * 2 if not isinstance(value, bool) else not value}
        assert [d.split()[0] for d in generation_differences(TABLE, gen, changed)] == [key]


def test_generation_keys_mindformers_does_not_read_are_recorded_with_the_reason():
    t = translate(TABLE, json.loads((LLAMA3 / "config.json").read_text()),
                  {"num_beams": 4, "eos_token_id": [2, 3], "typical_p": 0.9}, Options(), "float32", LLAMA3 / "config.json")
    assert "beam search" in t.ignored["generation_config.num_beams"]
    assert "config.json's ids" in t.ignored["generation_config.eos_token_id"]
    assert t.ignored["generation_config.typical_p"] == "not a MindFormers model setting"
    assert "temperature" not in json.dumps(t.ignored)


def test_greedy_decoding_written_for_the_cpu_is_the_same_decoding(ms):
    gen = json.loads((FIXTURES / "mha-untied-fp32/generation_config.json").read_text())
    mc = {**model_config(gen, "CPU"), **CPU_GREEDY}  # as a --device CPU plan writes greedy decoding
    assert generation_differences(TABLE, gen, mc) == []
    assert [d.split()[0] for d in generation_differences(TABLE, gen, {**mc, "top_k": 5})] == ["do_sample", "top_k"]


def test_verify_fails_naming_a_changed_generation_key(tmp_path):
    out = tmp_path / "out"
    convert_hf2ms(LLAMA3, out, HF2MSOptions(device="CPU"))
    path = out / "llama_config.yaml"
    path.write_text(path.read_text().replace("temperature: 0.6", "temperature: 1.0"))
    proc = run_cli("verify", LLAMA3, out, "--json", "--seq-len", "16")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["config_differences"] == ["generation.temperature 1.0 vs 0.6 from generation_config.json"]
    assert report["failures"] == report["config_differences"]
