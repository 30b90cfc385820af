"""What OUT_DIR holds after hf2ms, and the provenance record in conversion.json."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from conftest import FIXTURES, run_cli
from llama_convert import HF2MSOptions, convert_hf2ms
from oracle import as_float32, hf_state, load_ms_checkpoint

LLAMA3 = FIXTURES / "gqa-llama3-rope"      # tokenizer files, generation_config, eos list
SHARDED = FIXTURES / "gqa-tied-bf16-sharded"


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_ckpt_output_holds_exactly_the_promised_files(tmp_path):
    out = tmp_path / "out"
    assert run_cli("hf2ms", LLAMA3, out).returncode == 0
    assert sorted(p.name for p in out.iterdir()) == sorted([
        "model.ckpt", "llama_config.yaml", "conversion.json",
        "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"])
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (out / name).read_bytes() == (LLAMA3 / name).read_bytes()


def test_yaml_names_llamaconfig_and_llamaforcausallm(tmp_path):
    out = tmp_path / "out"
    assert run_cli("hf2ms", LLAMA3, out).returncode == 0
    model = yaml.safe_load((out / "llama_config.yaml").read_text())["model"]
    assert model["model_config"]["type"] == "LlamaConfig" and model["arch"] == {"type": "LlamaForCausalLM"}
    mc = model["model_config"]
    assert mc["eos_token_id"] == [2, 3] and mc["do_sample"] is True and mc["top_p"] == 0.9
    assert mc["max_decode_length"] == 96 and mc["extend_method"] == "LLAMA3"


def test_sharded_source_gives_sharded_safetensors_with_mindspores_name_map(tmp_path):
    out = tmp_path / "out"
    assert run_cli("hf2ms", SHARDED, out, "--format", "safetensors").returncode == 0
    index = json.loads((out / "param_name_map.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert shards == [f"model-{k:05d}-of-00004.safetensors" for k in range(1, 5)]
    assert sorted(p.name for p in out.glob("*.safetensors")) == shards
    assert index["metadata"]["total_size"] == sum(
        json.loads((out / "conversion.json").read_text())["tensors"][i]["bytes"] for i in range(len(index["weight_map"])))


def test_max_shard_size_shards_a_single_file_source(tmp_path):
    out = tmp_path / "out"
    assert run_cli("hf2ms", FIXTURES / "mha-untied-fp32", out, "--format", "safetensors",
                   "--max-shard-size", "100KB").returncode == 0
    files = sorted(out.glob("*.safetensors"))
    assert len(files) > 2 and (out / "param_name_map.json").exists()


def test_single_source_gives_one_safetensors_file_not_named_as_huggingface_names_it(tmp_path):
    out = tmp_path / "out"
    assert run_cli("hf2ms", FIXTURES / "mha-untied-fp32", out, "--format", "safetensors").returncode == 0
    assert [p.name for p in out.glob("*.safetensors")] == ["model-00001-of-00001.safetensors"]
    assert (out / "param_name_map.json").exists() and not list(out.glob("*index.json"))


def test_conversion_json_records_provenance(tmp_path):
    out = tmp_path / "out"
    assert run_cli("hf2ms", SHARDED, out, "--qkv-concat").returncode == 0
    rec = json.loads((out / "conversion.json").read_text())
    assert rec["tool"] == "llama-convert" and rec["version"]
    table = FIXTURES.parent / "mappings/llama.yaml"
    assert rec["mapping_table"] == {"name": "llama", "file": "llama.yaml", "sha256": sha(table)}
    assert rec["options"]["qkv_concat"] is True and rec["options"]["format"] == "ckpt"
    src_files = {f["name"]: f for f in rec["source"]["files"]}
    for path in SHARDED.iterdir():
        if path.name != "generation_config.json" or "generation_config.json" in src_files:
            assert src_files[path.name] == {"name": path.name, "size": path.stat().st_size, "sha256": sha(path)}
    outputs = {f["name"]: f for f in rec["outputs"]}
    assert set(outputs) == {p.name for p in out.iterdir()} - {"conversion.json"}
    for name, f in outputs.items():
        assert f["sha256"] == sha(out / name) and f["size"] == (out / name).stat().st_size
    assert rec["tensor_count"] == len(rec["tensors"]) == 2 + 2 * 6  # embed, norm_out; 6 fused per layer
    assert rec["skipped"] == []


def test_keep_copies_weight_bytes_exactly(tmp_path):
    out = tmp_path / "out"
    assert run_cli("hf2ms", SHARDED, out, "--format", "safetensors").returncode == 0
    src, got = raw_tensors(SHARDED), raw_tensors(out)
    assert got["model.layers.1.attention.wk.weight"] == src["model.layers.1.self_attn.k_proj.weight"]
    assert got["model.tok_embeddings.embedding_weight"] == src["model.embed_tokens.weight"]


def raw_tensors(directory) -> dict[str, bytes]:
    """name -> raw bytes of every tensor in a directory of safetensors files, read by the reference library."""
    from safetensors import safe_open
    out = {}
    for f in directory.glob("*.safetensors"):
        with safe_open(f, "pt") as st:
            for k in st.keys():
                t = st.get_tensor(k)
                out[k] = t.reshape(-1).view(torch.uint8).numpy().tobytes()
    return out


def test_dtype_cast_rounds_to_nearest_even_and_is_recorded(tmp_path, ms):
    out = tmp_path / "out"
    assert run_cli("hf2ms", FIXTURES / "mha-untied-fp32", out, "--dtype", "bfloat16").returncode == 0
    params = load_ms_checkpoint(ms, out)
    src = hf_state(FIXTURES / "mha-untied-fp32")["model.layers.0.self_attn.q_proj.weight"]
    want = torch.from_numpy(src).to(torch.bfloat16).float().numpy()  # torch rounds to nearest-even
    np.testing.assert_array_equal(as_float32(params["model.layers.0.attention.wq.weight"]), want)
    rec = json.loads((out / "conversion.json").read_text())
    casts = {t["name"]: t["cast"] for t in rec["tensors"]}
    assert casts["model.layers.0.attention.wq.weight"] == "float32->bfloat16"
    assert casts["model.layers.0.attention_norm.weight"] is None  # norms stay float32


def test_ckpt_slices_large_tensors_like_mindspore_and_loads_back_intact(tmp_path, ms):
    from mindspore.train.checkpoint_pb2 import Checkpoint
    src = FIXTURES / "mha-untied-fp32"
    out = tmp_path / "out"
    convert_hf2ms(src, out, HF2MSOptions(ckpt_slice_bytes=10_000))
    parsed = Checkpoint()
    parsed.ParseFromString((out / "model.ckpt").read_bytes())  # the real schema, parsed by protobuf
    tags = [v.tag for v in parsed.value]
    assert tags.count("model.tok_embeddings.embedding_weight") == 7  # 65536 bytes in 10000-byte slices
    assert all(len(v.tensor.tensor_content) <= 10_000 for v in parsed.value)
    embed = [v for v in parsed.value if v.tag == "model.tok_embeddings.embedding_weight"]
    assert all(list(v.tensor.dims) == [256, 64] and v.tensor.tensor_type == "Float32" for v in embed)
    params = ms.load_checkpoint(str(out / "model.ckpt"))
    np.testing.assert_array_equal(as_float32(params["model.tok_embeddings.embedding_weight"]),
                                  hf_state(src)["model.embed_tokens.weight"])


def test_dry_run_reads_headers_only_and_writes_nothing(tmp_path):
    out = tmp_path / "out"
    proc = run_cli("hf2ms", SHARDED, out, "--dry-run", "--qkv-concat")
    assert proc.returncode == 0 and not out.exists()
    text = proc.stdout
    assert "model.layers.0.attention.w_qkv.weight" in text and "qkv_grouped" in text
    assert "128x64" in text and "llama_config.yaml" in text and "type: LlamaConfig" in text
    assert "total: 14 tensors" in text


def test_dry_run_json_is_machine_readable(tmp_path):
    proc = run_cli("hf2ms", SHARDED, tmp_path / "out", "--dry-run", "--json")
    plan = json.loads(proc.stdout)
    assert plan["dry_run"] is True and plan["tensor_count"] == len(plan["tensors"])
    assert plan["model_yaml"]["model"]["model_config"]["tie_word_embeddings"] is True
    first = plan["tensors"][0]
    assert set(first) >= {"name", "shape", "dtype", "sources", "op"}


def test_json_summary_after_conversion(tmp_path):
    proc = run_cli("hf2ms", FIXTURES / "mqa-bias-fp16-bin", tmp_path / "out", "--json")
    summary = json.loads(proc.stdout)
    assert summary["ok"] is True and summary["tensor_count"] == 3 + 2 * 13
    assert {f["name"] for f in summary["files"]} >= {"model.ckpt", "llama_config.yaml"}


@pytest.mark.parametrize("fmt", ["ckpt", "safetensors"])
def test_bf16_conversion_imports_none_of_the_heavy_libraries(tmp_path, fmt):
    # mindspore costs 1.6 s at start and numpy 50 ms: a conversion of bf16 weights, fused or not,
    # copies and rearranges bytes and widens the norms, and needs neither.
    code = (f"import sys; from llama_convert import HF2MSOptions, convert_hf2ms; "
            f"convert_hf2ms({str(SHARDED)!r}, {str(tmp_path / 'out')!r}, HF2MSOptions(format={fmt!r}, qkv_concat=True)); "
            f"print(sorted(m for m in ('mindspore', 'mindformers', 'torch', 'transformers', 'numpy') "
            f"if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
