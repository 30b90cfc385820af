"""OUT_DIR's YAML runs in MindFormers as it is: Trainer.predict, from_pretrained, AutoModel, build_network
and generate, on CPU, with no edits to what llama-convert wrote.

MindFormers is imported in this process (a fresh interpreter per test would pay its ~10 s import each
time); each test runs from its own empty working directory, so nothing can depend on the cwd.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import FIXTURES, REAL_MODELS, run_cli

STORIES = sorted(REAL_MODELS.glob("stories260K-*")) if REAL_MODELS.exists() else []


def convert(src: Path, out: Path, *args: str) -> Path:
    proc = run_cli("hf2ms", src, out, *args)
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """An empty working directory unrelated to the source and OUT_DIR."""
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


@pytest.fixture(scope="module")
def mindformers(ms):
    import mindformers
    return mindformers


def cpu_context(mindformers, yaml_path: Path):
    """What run_mindformer does first: the context from the YAML (postprocess_use_numpy included)."""
    config = mindformers.MindFormerConfig(str(yaml_path))
    mindformers.build_context(config)
    return config


def greedy_source(tmp_path: Path, max_length: int) -> Path:
    """The fixture that ships a tokenizer, with a greedy generation_config asking for max_length tokens."""
    src = tmp_path / "src"
    shutil.copytree(FIXTURES / "gqa-llama3-rope", src)
    (src / "generation_config.json").write_text(json.dumps({"max_length": max_length}))
    return src


def hf_greedy(src: Path, prompt: list[int], max_length: int) -> list[int]:
    import torch
    import transformers
    model = transformers.LlamaForCausalLM.from_pretrained(src).eval()
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                             max_length=max_length, do_sample=False)
    return out[0].tolist()


def test_trainer_predicts_from_the_yaml_alone_what_transformers_generates(mindformers, tmp_path, elsewhere):
    src = greedy_source(tmp_path, max_length=8)
    out = convert(src, tmp_path / "out", "--device", "CPU")
    config = cpu_context(mindformers, out / "llama_config.yaml")

    result = mindformers.Trainer(config).predict(input_data="w5 w9 w17")

    # MindFormers' LlamaTokenizerFast puts <s> (id 1) before the prompt, as Llama tokenizers do.
    expected = hf_greedy(src, [1, 5, 9, 17], max_length=8)
    text = result[0]["text_generation_text"][0]
    assert text.split() == [f"w{i}" for i in expected[1:]]


def test_safetensors_output_predicts_through_load_checkpoint(mindformers, tmp_path, elsewhere):
    src = greedy_source(tmp_path, max_length=8)
    out = convert(src, tmp_path / "out", "--device", "CPU", "--format", "safetensors")
    config = cpu_context(mindformers, out / "llama_config.yaml")

    trainer = mindformers.Trainer(config)
    result = trainer.predict(predict_checkpoint=config.load_checkpoint, input_data="w5 w9 w17")

    expected = hf_greedy(src, [1, 5, 9, 17], max_length=8)
    assert result[0]["text_generation_text"][0].split() == [f"w{i}" for i in expected[1:]]


@pytest.mark.skipif(not STORIES, reason="real stories260K checkpoints not present")
def test_mindformers_generate_continues_the_story_as_transformers_did(mindformers, tmp_path, elsewhere):
    src = next(p for p in STORIES if "f32" in p.name)
    expected = json.loads((src / "expected_greedy.json").read_text())
    n = 7  # the prompt and 6 tokens ("Once upon a time, there"): each step is a full forward, ~3 s on CPU
    out = convert(src, tmp_path / "out", "--device", "CPU", "--seq-length", "8")
    cpu_context(mindformers, out / "llama_config.yaml")

    model = mindformers.AutoModel.from_pretrained(str(out))
    ids = model.generate(expected["prompt_ids"], max_length=n)

    assert list(np.asarray(ids).reshape(-1)[:n]) == expected["greedy_ids"][:n]


@pytest.mark.skipif(not STORIES, reason="real stories260K checkpoints not present")
@pytest.mark.parametrize("src", STORIES, ids=[p.name for p in STORIES])
def test_every_cpu_conversion_predicts_the_story_in_one_forward_pass(mindformers, tmp_path, src):
    """fp32, bf16 and fp16 sources, each converted for CPU and run as written (no verify casts): fed the
    greedy story, the trained model predicts each next token of it."""
    expected = json.loads((src / "expected_greedy.json").read_text())["greedy_ids"]
    seq = 64
    out = convert(src, tmp_path / "out", "--device", "CPU", "--seq-length", str(seq))

    model = mindformers.AutoModel.from_pretrained(str(out))
    logits = model(mindformers_tensor(np.array([expected[:seq]], dtype=np.int32)))
    logits = (logits[0] if isinstance(logits, tuple) else logits).asnumpy().reshape(seq, -1)

    assert list(logits.argmax(-1)[:-1]) == expected[1:seq]


@pytest.mark.parametrize("fixture", ["gqa-tied-bf16-sharded", "mqa-bias-fp16-bin", "mha-untied-fp32"])
def test_a_cpu_conversion_runs_a_forward_pass_in_its_own_dtypes(mindformers, tmp_path, fixture):
    out = convert(FIXTURES / fixture, tmp_path / "out", "--device", "CPU")

    model = mindformers.AutoModel.from_pretrained(str(out))
    seq = model.config.seq_length
    logits = model(mindformers_tensor(np.arange(seq, dtype=np.int32).reshape(1, seq) % 7))
    logits = logits[0] if isinstance(logits, tuple) else logits

    assert np.isfinite(logits.asnumpy()).all()
    record = json.loads((out / "conversion.json").read_text())
    assert record["tensors"][0]["dtype"] == "float32"


def mindformers_tensor(a: np.ndarray):
    import mindspore
    return mindspore.Tensor(a)


def test_a_cpu_conversion_records_the_widening(tmp_path):
    out = tmp_path / "out"
    proc = run_cli("hf2ms", FIXTURES / "gqa-tied-bf16-sharded", out, "--device", "CPU")
    assert proc.returncode == 0, proc.stderr
    assert "widened from bfloat16 to float32" in proc.stdout
    record = json.loads((out / "conversion.json").read_text())
    assert any("widened from bfloat16 to float32" in n for n in record["config"]["notes"])
    assert {t["cast"] for t in record["tensors"]} == {"bfloat16->float32"}


def test_a_half_precision_dtype_for_cpu_is_refused(tmp_path):
    from conftest import refused
    refused(run_cli("hf2ms", FIXTURES / "mha-untied-fp32", tmp_path / "out", "--device", "CPU", "--dtype", "bfloat16"),
            "--dtype bfloat16", "CPU")


def test_ckpt_output_loads_by_from_pretrained_automodel_and_build_network(mindformers, tmp_path, elsewhere):
    out = convert(FIXTURES / "gqa-llama3-rope", tmp_path / "out")  # Ascend settings: loads and builds on CPU too
    from mindformers.models import LlamaForCausalLM
    from mindformers.models.build_model import build_network

    params = {k: v.asnumpy() for k, v in mindformers_load(out / "model.ckpt").items()}
    config = mindformers.MindFormerConfig(str(out / "llama_config.yaml"))
    config.model.model_config.update(use_flash_attention=False, fused_rms_norm=False, use_rope_slice=True)
    for model in (LlamaForCausalLM.from_pretrained(str(out)), mindformers.AutoModel.from_pretrained(str(out)),
                  build_network(config.model)):
        loaded = {k: v.asnumpy() for k, v in model.parameters_dict().items()}
        for name, value in params.items():
            np.testing.assert_array_equal(loaded[name], value, err_msg=name)


def mindformers_load(path: Path) -> dict:
    import mindspore
    return mindspore.load_checkpoint(str(path))


def test_the_yaml_names_the_tokenizer_the_source_ships(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(FIXTURES / "mha-untied-fp32", src)
    (src / "tokenizer.model").write_bytes(b"sentencepiece model bytes")  # copied, never parsed by us
    (src / "special_tokens_map.json").write_text(json.dumps({"pad_token": {"content": "<pad>"}, "eos_token": "</s>"}))
    out = convert(src, tmp_path / "out")
    import yaml
    run = yaml.safe_load((out / "llama_config.yaml").read_text())

    tokenizer = run["processor"]["tokenizer"]
    assert tokenizer["type"] == "LlamaTokenizer" and tokenizer["vocab_file"] == str(out.resolve() / "tokenizer.model")
    assert tokenizer["pad_token"] == "<pad>"
    assert run["context"]["device_target"] == "Ascend" and run["run_mode"] == "predict"
    assert run["load_checkpoint"] == str(out.resolve() / "model.ckpt")


def test_the_yaml_has_no_processor_when_the_source_ships_no_tokenizer(tmp_path):
    import yaml
    out = convert(FIXTURES / "mha-untied-fp32", tmp_path / "out")
    assert "processor" not in yaml.safe_load((out / "llama_config.yaml").read_text())
