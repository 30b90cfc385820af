"""config.json (+ generation_config.json) -> MindFormers LlamaConfig, as the mapping table says."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import FIXTURES, REAL_CONFIG_FILES, REAL_MODELS
from llama_convert.table.config_rules import translate
from llama_convert.core.errors import ConvertError
from llama_convert.table.loader import load_table
from llama_convert.core.options import HF2MSOptions

TABLE = load_table()


def tr(hf: dict, gen: dict | None = None, **opts):
    return translate(TABLE, hf, gen, HF2MSOptions(**opts), "bfloat16", Path("config.json"))


def real(name: str) -> dict:
    return json.loads(next(p for p in REAL_CONFIG_FILES if p.name.startswith(name)).read_text())


@pytest.mark.parametrize("path", REAL_CONFIG_FILES, ids=lambda p: p.name)
def test_every_real_config_is_accepted_by_mindformers_or_rejected_naming_the_key(ms, path):
    from mindformers.models import LlamaConfig
    hf = json.loads(path.read_text())
    try:
        fields = translate(TABLE, hf, None, HF2MSOptions(), "bfloat16", path).model_config
    except ConvertError as e:
        line = e.one_line()
        assert "\n" not in line and str(path) in line
        assert any(line.startswith(f"{path}: {key}:") for key in hf), line
        return
    config = LlamaConfig(**fields)
    assert config.num_layers == hf["num_hidden_layers"] and config.hidden_size == hf["hidden_size"]


def test_transformers5_rope_parameters_and_dtype_key():
    path = REAL_MODELS / "stories260K-hf-f32-derived/config.json"
    if not path.exists():
        pytest.skip("shared/ not beside the checkout")
    hf = json.loads(path.read_text())
    assert "rope_parameters" in hf and "dtype" in hf
    mc = tr(hf).model_config
    assert mc["theta"] == 10000.0 and mc["extend_method"] == "None"


def test_llama1_max_sequence_length_becomes_max_position_embedding():
    mc = tr(real("llama-65b-hf__LLaMA1")).model_config
    assert mc["max_position_embedding"] == 2048 and mc["seq_length"] == 2048
    assert mc["n_kv_heads"] == mc["num_heads"]


def test_seq_length_defaults_to_at_most_4096_and_follows_the_option():
    hf = real("Llama-3.1-8B__from-md")
    assert tr(hf).model_config["seq_length"] == 4096
    assert tr(hf, seq_length=8192).model_config["seq_length"] == 8192


def test_llama3_rope_scaling_becomes_the_dict_mindformers_checks_for():
    mc = tr(real("Llama-3.2-3B__from-md")).model_config
    assert mc["extend_method"] == "LLAMA3"
    assert mc["scaling_factor"] == {"factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                    "original_max_position_embeddings": 8192}
    assert isinstance(mc["scaling_factor"]["factor"], float)
    assert mc["theta"] == 500000.0


def test_linear_rope_scaling_becomes_position_interpolation():
    mc = tr(real("deepseek-coder-6.7b-instruct")).model_config
    assert (mc["extend_method"], mc["scaling_factor"], mc["theta"]) == ("PI", 4.0, 100000.0)


def test_eos_list_is_kept_and_absent_pad_becomes_an_id_that_masks_nothing():
    t = tr(real("Llama-3.1-8B-Instruct-bnb8bit") | {"quantization_config": None})
    assert t.model_config["eos_token_id"] == [128001, 128008, 128009]
    assert t.model_config["pad_token_id"] == -1 and any("pad_token_id" in n for n in t.notes)


def test_attention_bias_sets_both_mindformers_bias_switches():
    mc = tr(json.loads((FIXTURES / "mqa-bias-fp16-bin/config.json").read_text())).model_config
    assert mc["qkv_has_bias"] is True and mc["attn_proj_has_bias"] is True


def test_dtype_follows_the_weights_unless_overridden():
    hf = real("Llama-2-7b-hf")
    assert tr(hf).model_config["param_init_type"] == "bfloat16"
    mc = tr(hf, dtype="float16").model_config
    assert mc["param_init_type"] == mc["compute_dtype"] == "float16"


def test_generation_config_fills_sampling_fields_with_hf_defaults_for_absent_keys():
    mc = tr(real("Llama-2-7b-hf"), {"do_sample": True, "top_p": 0.9, "temperature": 0.6, "max_length": 4096}).model_config
    assert (mc["do_sample"], mc["top_p"], mc["top_k"], mc["repetition_penalty"], mc["max_decode_length"]) == \
        (True, 0.9, 50, 1.0, 4096)


def test_untie_clears_tie_word_embeddings():
    hf = real("Llama-3.2-3B__from-md")
    assert tr(hf).model_config["tie_word_embeddings"] is True
    assert tr(hf, untie=True).model_config["tie_word_embeddings"] is False


@pytest.mark.parametrize("change,key", [
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"mlp_bias": True}, "mlp_bias"),
    ({"head_dim": 256}, "head_dim"),
    ({"num_key_value_heads": 3}, "num_key_value_heads"),
    ({"architectures": ["MistralForCausalLM"]}, "architectures"),
    ({"rope_scaling": {"type": "dynamic", "factor": 2.0}}, "rope_scaling"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 2.0}}, "rope_scaling"),
    ({"sliding_window": 4096}, "sliding_window"),
    ({"quantization_config": {"bits": 4}}, "quantization_config"),
])
def test_unsupported_features_are_rejected_naming_the_key(change, key):
    with pytest.raises(ConvertError) as e:
        tr(real("Llama-2-7b-hf") | change)
    assert e.value.one_line().startswith(f"config.json: {key}:")


def test_every_table_entry_says_what_happens_to_its_key():
    for key, spec in TABLE.config.items():
        assert spec.verb in {"to", "via", "require", "reject", "ignore"}, key
        if spec.ignore is not None:
            assert spec.ignore.strip(), f"{key} is ignored without a reason"
