"""Every run YAML llama-convert writes is one MindFormers accepts: it passes
`mindformers.core.context.validators.execute_validator` (what `build_context` runs before anything else)
and its model_config builds MindFormers' LlamaConfig, for each device, each format, with and without the
options that change the YAML, on every fixture and real model.

The YAMLs are rendered from plans (headers only, no weights written) by `side_files`, the function that
writes them; one conversion per device shows that the file written is that rendering. MindFormers is
imported once for the module.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from conftest import ALL_MODEL_DIRS, FIXTURES, REAL_FAMILY, model_id
from llama_convert import HF2MSOptions, convert_hf2ms, plan_hf2ms
from llama_convert.output.run_yaml import side_files

DEVICES = ("Ascend", "CPU")
FORMATS = ("ckpt", "safetensors")
SWA4 = REAL_FAMILY / "tiny-random-mistral-swa4-neural-api"


@pytest.fixture(scope="module")
def mindformers(ms):
    import mindformers
    return mindformers


def accepted_by_mindformers(mindformers, path: Path) -> dict:
    """The YAML at `path` as build_context takes it: validated by MindFormers' own validators, its
    model_config built into LlamaConfig. Returns the run configuration as plain data."""
    from mindformers.core.context.validators import execute_validator
    config = mindformers.MindFormerConfig(str(path))
    config["parallel_config"] = config.get("parallel_config", {})  # as build_context completes it
    execute_validator(mindformers.MindFormerConfig(**config))
    model_config = {k: v for k, v in yaml.safe_load(path.read_text())["model"]["model_config"].items() if k != "type"}
    mindformers.models.LlamaConfig(**model_config)
    return yaml.safe_load(path.read_text())


def rendered(src: Path, tmp: Path, **options) -> Path:
    """The YAML hf2ms would write into tmp/out for these options, written beside it for MindFormers to read."""
    plan = plan_hf2ms(src, HF2MSOptions(**options))
    (name, text), = side_files(plan, tmp / "out").items()
    path = tmp / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("qkv_concat", [False, True], ids=["separate", "qkv-concat"])
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("src", ALL_MODEL_DIRS, ids=model_id)
def test_every_yaml_passes_mindformers_validators(mindformers, tmp_path, src, device, fmt, qkv_concat):
    run = accepted_by_mindformers(mindformers, rendered(src, tmp_path, device=device, format=fmt,
                                                        qkv_concat=qkv_concat))
    assert run["run_mode"] == "predict" and run["context"]["device_target"] == device
    assert run["load_ckpt_format"] == fmt


@pytest.mark.parametrize("options", [{"dtype": "bfloat16"}, {"dtype": "float16"}, {"untie": True},
                                     {"seq_length": 100}, {"max_shard_size": 10_000, "format": "safetensors"}],
                         ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_yamls_of_the_other_options_pass_mindformers_validators(mindformers, tmp_path, options):
    accepted_by_mindformers(mindformers, rendered(FIXTURES / "gqa-llama3-rope", tmp_path, **options))


@pytest.mark.skipif(not SWA4.exists(), reason="real family model not present")
@pytest.mark.parametrize("device", DEVICES)
def test_a_sequence_shorter_than_one_block_still_gets_one_block(mindformers, tmp_path, device):
    run = accepted_by_mindformers(mindformers, rendered(SWA4, tmp_path, device=device, seq_length=4))
    if device == "Ascend":
        assert run["model"]["model_config"]["num_blocks"] == 1


def test_the_ascend_yaml_is_an_incremental_predict_config_like_mindformers_own(tmp_path):
    """As research/llama3_1/*/predict_llama3_1_*.yaml (MindFormers r1.8.0): KV cache, flash attention,
    dynamic shapes, paged attention; a bf16 source stays bf16."""
    run = yaml.safe_load(rendered(FIXTURES / "gqa-tied-bf16-sharded", tmp_path).read_text())
    mc = run["model"]["model_config"]
    assert (mc["use_past"], mc["use_flash_attention"], mc["is_dynamic"]) == (True, True, True)
    assert (mc["param_init_type"], mc["compute_dtype"]) == ("bfloat16", "bfloat16")
    assert run["context"] == {"mode": 0, "device_target": "Ascend", "device_id": 0, "max_call_depth": 10000}


@pytest.mark.parametrize("seq_length, batch_blocks", [(128, 8), (129, 9), (4096, 256), (16, 1), (1, 1)])
def test_paged_attention_holds_one_full_length_sequence_per_batch_row(tmp_path, seq_length, batch_blocks):
    mc = yaml.safe_load(rendered(FIXTURES / "gqa-llama3-rope", tmp_path, seq_length=seq_length).read_text())[
        "model"]["model_config"]
    assert mc["block_size"] == 16 and mc["batch_size"] == 1
    assert mc["num_blocks"] == batch_blocks
    assert mc["num_blocks"] * mc["block_size"] >= mc["batch_size"] * mc["seq_length"]


def test_the_cpu_yaml_runs_whole_forward_passes_in_float32(tmp_path):
    mc = yaml.safe_load(rendered(FIXTURES / "gqa-tied-bf16-sharded", tmp_path, device="CPU").read_text())[
        "model"]["model_config"]
    assert (mc["use_past"], mc["use_flash_attention"]) == (False, False)
    assert "num_blocks" not in mc and "is_dynamic" not in mc
    assert (mc["param_init_type"], mc["compute_dtype"]) == ("float32", "float32")


def test_the_validator_refuses_the_yaml_earlier_versions_wrote(mindformers, tmp_path):
    """The check bites: flash attention without use_past in predict mode, the Ascend YAML of before."""
    path = rendered(FIXTURES / "gqa-llama3-rope", tmp_path)
    run = yaml.safe_load(path.read_text())
    for key in ("use_past", "is_dynamic", "block_size", "num_blocks"):
        run["model"]["model_config"].pop(key)
    run["model"]["model_config"]["use_past"] = False
    path.write_text(yaml.safe_dump(run))
    with pytest.raises(ValueError, match="Flash Attention is incompatible when use_past=False"):
        accepted_by_mindformers(mindformers, path)


@pytest.mark.parametrize("device", DEVICES)
def test_the_yaml_a_conversion_writes_is_the_one_rendered_from_its_plan(mindformers, tmp_path, device):
    src = FIXTURES / "gqa-tied-bf16-sharded"
    options = HF2MSOptions(device=device, format="safetensors")
    out = convert_hf2ms(src, tmp_path / "out", options).out_dir
    (name, text), = side_files(plan_hf2ms(src, options), out).items()
    assert (out / name).read_text() == text
    accepted_by_mindformers(mindformers, out / name)
