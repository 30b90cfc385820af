"""Bad input: one line naming the file and the problem, exit 2, no traceback, no output directory."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import FIXTURES, assert_rejected, run_cli

MHA = FIXTURES / "mha-untied-fp32"          # single safetensors, untied
SHARDED = FIXTURES / "gqa-tied-bf16-sharded"
BIN = FIXTURES / "mqa-bias-fp16-bin"


def copy(src: Path, tmp: Path) -> Path:
    dst = tmp / "src"
    shutil.copytree(src, dst)
    return dst


def edit_config(src: Path, **changes) -> None:
    path = src / "config.json"
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))


def test_missing_source_directory(tmp_path):
    assert_rejected(tmp_path, tmp_path / "nope", "nope", "not found")


def test_missing_config_json(tmp_path):
    src = copy(MHA, tmp_path)
    (src / "config.json").unlink()
    assert_rejected(tmp_path, src, "config.json", "not found")


def test_corrupt_config_json(tmp_path):
    src = copy(MHA, tmp_path)
    (src / "config.json").write_text('{"hidden_size": 64,')
    assert_rejected(tmp_path, src, "config.json", "not valid JSON")


def test_no_weights(tmp_path):
    src = copy(MHA, tmp_path)
    (src / "model.safetensors").unlink()
    assert_rejected(tmp_path, src, str(src), "no weights found")


def test_truncated_safetensors(tmp_path):
    src = copy(MHA, tmp_path)
    f = src / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-1000])
    assert_rejected(tmp_path, src, "model.safetensors", "truncated")


def test_corrupt_safetensors_header(tmp_path):
    src = copy(MHA, tmp_path)
    f = src / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[8:40] = b"\xff" * 32
    f.write_bytes(bytes(data))
    assert_rejected(tmp_path, src, "model.safetensors", "corrupt")


def test_missing_shard(tmp_path):
    src = copy(SHARDED, tmp_path)
    (src / "model-00002-of-00004.safetensors").unlink()
    assert_rejected(tmp_path, src, "model-00002-of-00004.safetensors", "missing")


def test_truncated_pytorch_bin(tmp_path):
    src = copy(BIN, tmp_path)
    f = src / "pytorch_model.bin"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    assert_rejected(tmp_path, src, "pytorch_model.bin", "cannot load")


def test_pickle_with_code_is_refused_by_weights_only(tmp_path):
    src = copy(BIN, tmp_path)
    state = torch.load(src / "pytorch_model.bin", weights_only=True)
    state["evil"] = Path("/")  # any non-tensor object: weights_only refuses to unpickle it
    torch.save(state, src / "pytorch_model.bin")
    assert_rejected(tmp_path, src, "pytorch_model.bin", "cannot load")


def test_shape_that_disagrees_with_config(tmp_path):
    src = copy(MHA, tmp_path)
    edit_config(src, intermediate_size=96)
    assert_rejected(tmp_path, src, "model.safetensors", "mlp.gate_proj.weight is [128, 64]", "implies [96, 64]")


def edit_weights(src: Path, change) -> None:
    state = load_file(src / "model.safetensors")
    change(state)
    save_file(state, src / "model.safetensors", metadata={"format": "pt"})


def test_missing_tensor(tmp_path):
    src = copy(MHA, tmp_path)
    edit_weights(src, lambda state: state.pop("model.layers.1.mlp.up_proj.weight"))
    assert_rejected(tmp_path, src, "model.safetensors", "missing", "model.layers.1.mlp.up_proj.weight")


def test_unknown_tensor(tmp_path):
    src = copy(MHA, tmp_path)
    edit_weights(src, lambda state: state.update({"model.layers.0.self_attn.q_norm.weight": torch.ones(16)}))
    assert_rejected(tmp_path, src, "model.safetensors", "unknown tensors", "q_norm")


def test_harmless_rotary_buffer_is_skipped_and_recorded(tmp_path):
    src = copy(MHA, tmp_path)
    edit_weights(src, lambda state: state.update({"model.layers.0.self_attn.rotary_emb.inv_freq": torch.ones(8)}))
    proc = run_cli("hf2ms", src, tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    record = json.loads((tmp_path / "out/conversion.json").read_text())
    assert [s["name"] for s in record["skipped"]] == ["model.layers.0.self_attn.rotary_emb.inv_freq"]


def test_tied_config_with_a_different_lm_head(tmp_path):
    src = copy(MHA, tmp_path)
    edit_config(src, tie_word_embeddings=True)
    assert_rejected(tmp_path, src, "model.safetensors", "lm_head.weight differs from model.embed_tokens.weight")


@pytest.mark.parametrize("change,key", [
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"architectures": ["Qwen2ForCausalLM"]}, "architectures"),
    ({"rope_scaling": {"type": "dynamic", "factor": 2.0}}, "rope_scaling"),
    ({"num_key_value_heads": 3}, "num_key_value_heads"),
])
def test_unsupported_config_feature(tmp_path, change, key):
    src = copy(MHA, tmp_path)
    edit_config(src, **change)
    assert_rejected(tmp_path, src, "config.json", key)


def test_existing_output_without_force(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    proc = run_cli("hf2ms", MHA, out)
    assert proc.returncode == 2 and "already exists" in proc.stderr and "--force" in proc.stderr
    assert (out / "keep.txt").read_text() == "mine"


def test_force_replaces_existing_output(tmp_path):
    out = tmp_path / "out"
    assert run_cli("hf2ms", MHA, out, "--format", "safetensors").returncode == 0
    proc = run_cli("hf2ms", MHA, out, "--force")
    assert proc.returncode == 0, proc.stderr
    assert not (out / "model.safetensors").exists()
    assert (out / "model.ckpt").exists()


def test_bad_usage_exits_2(tmp_path):
    proc = run_cli("hf2ms", MHA, tmp_path / "out", "--format", "gguf")
    assert proc.returncode == 2 and not (tmp_path / "out").exists()


def test_an_os_error_while_writing_is_one_line(tmp_path):
    out = tmp_path / ("o" * 300)  # longer than any file name may be: mkdir fails with ENAMETOOLONG
    proc = run_cli("hf2ms", MHA, out)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "too long" in proc.stderr
