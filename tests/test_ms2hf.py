"""ms2hf: the way back through the same table; lossless round trips; inspect and diff."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import ALL_MODEL_DIRS, layout_combos, FIXTURES, raw, run_cli
from llama_convert import HF2MSOptions, convert_hf2ms, convert_ms2hf
from llama_convert.table.config_rules import rope_settings

COMBOS = layout_combos(ALL_MODEL_DIRS, untie=False)
IDS = [f"{s.name}-{f}{'-qkv' if q else ''}" for s, f, q in COMBOS]


def model_keys(cfg: dict) -> dict:
    """The config.json keys that decide the weights and the forward pass, normalised across styles."""
    heads = cfg["num_attention_heads"]
    return {"hidden_size": cfg["hidden_size"], "intermediate_size": cfg["intermediate_size"],
            "num_hidden_layers": cfg["num_hidden_layers"], "num_attention_heads": heads,
            "num_key_value_heads": cfg.get("num_key_value_heads") or heads, "vocab_size": cfg["vocab_size"],
            "rms_norm_eps": cfg["rms_norm_eps"], "rope": rope_settings(cfg),
            "max_position_embeddings": cfg.get("max_position_embeddings") or cfg.get("max_sequence_length"),
            "tie_word_embeddings": cfg.get("tie_word_embeddings", False),
            "attention_bias": cfg.get("attention_bias", False), "hidden_act": cfg.get("hidden_act", "silu"),
            "bos_token_id": cfg.get("bos_token_id"), "eos_token_id": cfg.get("eos_token_id"),
            "pad_token_id": cfg.get("pad_token_id"), "dtype": cfg.get("dtype") or cfg.get("torch_dtype")}


@pytest.mark.parametrize("src,fmt,qkv", COMBOS, ids=IDS)
def test_hf_to_ms_to_hf_is_byte_identical(tmp_path, src, fmt, qkv):
    convert_hf2ms(src, tmp_path / "ms", HF2MSOptions(format=fmt, qkv_concat=qkv))
    assert run_cli("ms2hf", tmp_path / "ms", tmp_path / "hf").returncode == 0
    back, orig = raw(tmp_path / "hf"), raw(src)
    src_cfg = json.loads((src / "config.json").read_text())
    if src_cfg.get("tie_word_embeddings"):
        orig.pop("lm_head.weight", None)  # a tied .bin repeats the embedding; HF does not need it
    assert sorted(back) == sorted(orig)
    for name in orig:
        assert back[name] == orig[name], name
    out_cfg = json.loads((tmp_path / "hf/config.json").read_text())
    want, got = model_keys(src_cfg), model_keys(out_cfg)
    if want["dtype"] is None:  # a config that does not say; the way back states the weights' dtype
        got["dtype"] = None
    assert got == want


@pytest.mark.parametrize("src,fmt,qkv", COMBOS, ids=IDS)
def test_ms_to_hf_to_ms_is_byte_identical(tmp_path, src, fmt, qkv):
    opts = HF2MSOptions(format=fmt, qkv_concat=qkv)
    convert_hf2ms(src, tmp_path / "ms1", opts)
    convert_ms2hf(tmp_path / "ms1", tmp_path / "hf")
    convert_hf2ms(tmp_path / "hf", tmp_path / "ms2", opts)
    assert raw(tmp_path / "ms2") == raw(tmp_path / "ms1")


def test_transformers_loads_the_way_back_and_computes_the_same(tmp_path):
    import transformers
    src = FIXTURES / "gqa-llama3-rope"
    convert_hf2ms(src, tmp_path / "ms", HF2MSOptions(qkv_concat=True))
    convert_ms2hf(tmp_path / "ms", tmp_path / "hf")
    ids = torch.arange(1, 40).reshape(1, -1)
    with torch.no_grad():
        a = transformers.LlamaForCausalLM.from_pretrained(src).eval()(ids).logits
        b = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "hf").eval()(ids).logits
    assert torch.equal(a, b)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (tmp_path / "hf" / name).read_bytes() == (src / name).read_bytes()
    gen = json.loads((tmp_path / "hf/generation_config.json").read_text())
    assert gen["do_sample"] is True and gen["top_p"] == 0.9 and gen["eos_token_id"] == [2, 3]


def test_large_models_are_sharded_with_an_index(tmp_path):
    convert_hf2ms(FIXTURES / "mha-untied-fp32", tmp_path / "ms")
    assert run_cli("ms2hf", tmp_path / "ms", tmp_path / "hf", "--max-shard-size", "100KB").returncode == 0
    index = json.loads((tmp_path / "hf/model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2
    assert sorted(index["weight_map"]) == sorted(raw(FIXTURES / "mha-untied-fp32"))


def test_the_way_back_writes_a_hf_checkpoints_order_whatever_order_the_source_stored(ms, tmp_path):
    import shutil
    from llama_convert.formats.safetensors import read_header
    convert_hf2ms(FIXTURES / "mha-untied-fp32", tmp_path / "ms")
    shutil.copytree(tmp_path / "ms", tmp_path / "reversed")
    params = ms.load_checkpoint(str(tmp_path / "ms/model.ckpt"))
    (tmp_path / "reversed/model.ckpt").unlink()
    ms.save_checkpoint([{"name": n, "data": params[n]} for n in reversed(params)],
                       str(tmp_path / "reversed/model.ckpt"))
    for name in ("ms", "reversed"):
        assert run_cli("ms2hf", tmp_path / name, tmp_path / f"hf-{name}", "--max-shard-size", "100KB").returncode == 0
    files = {name: {p.name: p.read_bytes() for p in sorted((tmp_path / f"hf-{name}").iterdir())
                    if p.name != "conversion.json"} for name in ("ms", "reversed")}
    assert files["ms"] == files["reversed"]   # byte for byte, shards and index included
    index = json.loads((tmp_path / "hf-ms/model.safetensors.index.json").read_text())["weight_map"]
    order = []
    for shard in dict.fromkeys(index.values()):   # shards cut in the order the tensors are written
        header, _ = read_header(tmp_path / "hf-ms" / shard)
        order += sorted(header, key=lambda n: header[n].ranges.segments[0][0])
    layers = [int(n.split(".")[2]) for n in order if n.startswith("model.layers.")]
    assert order[0] == "model.embed_tokens.weight" and order[-2:] == ["model.norm.weight", "lm_head.weight"]
    assert layers == sorted(layers) and len(set(layers)) > 1


def test_training_state_is_skipped_and_reported(ms, tmp_path):
    convert_hf2ms(FIXTURES / "gqa-linear-rope", tmp_path / "ms")
    ckpt_path = tmp_path / "ms/model.ckpt"
    params = ms.load_checkpoint(str(ckpt_path))
    entries = [{"name": k, "data": v} for k, v in params.items()]
    for k, v in params.items():
        for prefix in ("adam_m.", "adam_v.", "accu_grads."):
            entries.append({"name": prefix + k, "data": ms.Tensor(np.zeros(v.shape, np.float32))})
    for k in ("global_step", "learning_rate", "scale_sense", "epoch_num", "step_num"):
        entries.append({"name": k, "data": ms.Tensor(np.array([7], np.int32))})
    ckpt_path.chmod(0o644)
    ms.save_checkpoint(entries, str(ckpt_path), append_dict={"epoch_num": 3, "step_num": 100})
    proc = run_cli("ms2hf", tmp_path / "ms", tmp_path / "hf", "--json")
    assert proc.returncode == 0, proc.stderr
    skipped = {s["name"] for s in json.loads(proc.stdout)["skipped"]}
    assert {"global_step", "learning_rate", "scale_sense", "epoch_num", "step_num"} <= skipped
    assert "adam_m.model.layers.0.attention.wq.weight" in skipped and "accu_grads.lm_head.weight" in skipped
    written = raw(tmp_path / "hf")
    assert not any(n.startswith(("adam", "accu")) or n in skipped for n in written)
    assert sorted(written) == sorted(raw(FIXTURES / "gqa-linear-rope"))


def test_unknown_entries_are_refused(ms, tmp_path):
    convert_hf2ms(FIXTURES / "gqa-linear-rope", tmp_path / "ms", HF2MSOptions(format="safetensors"))
    from safetensors.numpy import load_file, save_file
    f = tmp_path / "ms/model-00001-of-00001.safetensors"
    state = load_file(f)
    state["model.layers.0.attention.q_norm.weight"] = np.ones(16, np.float32)
    save_file(state, f)
    name_map = json.loads((tmp_path / "ms/param_name_map.json").read_text())
    name_map["weight_map"]["model.layers.0.attention.q_norm.weight"] = f.name  # in the map too: the table refuses it
    (tmp_path / "ms/param_name_map.json").write_text(json.dumps(name_map))
    proc = run_cli("ms2hf", tmp_path / "ms", tmp_path / "hf")
    assert proc.returncode == 2 and "q_norm" in proc.stderr and not (tmp_path / "hf").exists()


def test_missing_yaml_needs_config(tmp_path):
    convert_hf2ms(FIXTURES / "mha-untied-fp32", tmp_path / "ms")
    (tmp_path / "ms/llama_config.yaml").rename(tmp_path / "model.yaml")
    proc = run_cli("ms2hf", tmp_path / "ms", tmp_path / "hf")
    assert proc.returncode == 2 and "llama_config.yaml" in proc.stderr and "--config" in proc.stderr
    assert run_cli("ms2hf", tmp_path / "ms" / "model.ckpt", tmp_path / "hf", "--config",
                   tmp_path / "model.yaml").returncode == 0


# ------------------------------------------------------------------ inspect and diff

@pytest.mark.parametrize("what", ["hf-dir", "ckpt", "ms-safetensors"])
def test_inspect_lists_tensors_from_headers(tmp_path, what):
    src = FIXTURES / "gqa-tied-bf16-sharded"
    if what == "hf-dir":
        path = src
    else:
        fmt = "ckpt" if what == "ckpt" else "safetensors"
        convert_hf2ms(src, tmp_path / "ms", HF2MSOptions(format=fmt))
        path = next((tmp_path / "ms").glob(f"*.{fmt}"))
    proc = run_cli("inspect", path, "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["tensor_count"] == len(info["tensors"]) > 0
    assert info["total_bytes"] == sum(t["bytes"] for t in info["tensors"])
    assert {"name", "shape", "dtype", "bytes"} <= set(info["tensors"][0])
    text = run_cli("inspect", path).stdout
    assert "total:" in text


def test_diff_of_a_model_and_its_conversion_is_same(tmp_path):
    src = FIXTURES / "gqa-tied-bf16-sharded"
    convert_hf2ms(src, tmp_path / "ms", HF2MSOptions(qkv_concat=True))
    proc = run_cli("diff", src, tmp_path / "ms", "--json")
    assert proc.returncode == 0, proc.stdout
    r = json.loads(proc.stdout)
    assert r["same"] and not r["only_in_a"] and not r["only_in_b"]


def test_diff_finds_a_changed_tensor_and_exits_1(ms, tmp_path):
    src = FIXTURES / "mha-untied-fp32"
    convert_hf2ms(src, tmp_path / "ms", HF2MSOptions(qkv_concat=True))
    path = tmp_path / "ms/model.ckpt"
    params = {k: v.asnumpy() for k, v in ms.load_checkpoint(str(path)).items()}
    params["model.layers.1.feed_forward.w2.weight"][0, 0] += 0.5
    path.chmod(0o644)
    ms.save_checkpoint([{"name": k, "data": ms.Tensor(v)} for k, v in params.items()], str(path))
    proc = run_cli("diff", src, tmp_path / "ms", "--json")
    assert proc.returncode == 1
    r = json.loads(proc.stdout)
    off = {t["name"]: t["max_abs_diff"] for t in r["tensors"] if t["max_abs_diff"]}
    assert list(off) == ["model.layers.1.mlp.down_proj.weight"] and off["model.layers.1.mlp.down_proj.weight"] == pytest.approx(0.5)


def test_diff_reports_missing_names_and_shapes(tmp_path):
    proc = run_cli("diff", FIXTURES / "gqa-tied-bf16-sharded", FIXTURES / "mha-untied-fp32", "--json")
    r = json.loads(proc.stdout)
    assert proc.returncode == 1 and r["only_in_b"] == ["lm_head.weight"]
    k = next(t for t in r["tensors"] if t["name"] == "model.layers.0.self_attn.k_proj.weight")
    assert k["shape_a"] == [32, 64] and k["shape_b"] == [64, 64]


# ------------------------------------------------------------------ the way back undoes --device CPU's widening

@pytest.mark.parametrize("src", [FIXTURES / "gqa-tied-bf16-sharded", FIXTURES / "mqa-bias-fp16-bin"], ids=lambda p: p.name)
def test_the_way_back_narrows_a_cpu_conversion_to_the_source_dtype_exactly(tmp_path, src):
    convert_hf2ms(src, tmp_path / "ms", HF2MSOptions(device="CPU"))
    orig = raw(src)
    (half,) = {dtype for dtype, _, _ in orig.values()}
    assert json.loads((tmp_path / "ms/conversion.json").read_text())["widened"]["from"] == half
    proc = run_cli("ms2hf", tmp_path / "ms", tmp_path / "hf")
    assert proc.returncode == 0 and f"narrowed back to {half}" in proc.stdout + proc.stderr
    back = raw(tmp_path / "hf")
    if json.loads((src / "config.json").read_text()).get("tie_word_embeddings"):
        orig.pop("lm_head.weight", None)  # a tied .bin repeats the embedding; HF does not need it
    assert back == orig  # the dtype and every byte
    assert json.loads((tmp_path / "hf/config.json").read_text())["torch_dtype"] == half


def test_dtype_still_overrides_the_recorded_source_dtype(tmp_path):
    convert_hf2ms(FIXTURES / "gqa-tied-bf16-sharded", tmp_path / "ms", HF2MSOptions(device="CPU"))
    assert run_cli("ms2hf", tmp_path / "ms", tmp_path / "hf", "--dtype", "float32").returncode == 0
    assert {dtype for dtype, _, _ in raw(tmp_path / "hf").values()} == {"float32"}


def test_weights_saved_over_since_the_conversion_keep_their_own_dtype(ms, tmp_path):
    convert_hf2ms(FIXTURES / "gqa-tied-bf16-sharded", tmp_path / "ms", HF2MSOptions(device="CPU"))
    ckpt_path = tmp_path / "ms/model.ckpt"
    params = ms.load_checkpoint(str(ckpt_path))
    ckpt_path.unlink()  # a training run saves its own file: conversion.json no longer describes it
    ms.save_checkpoint([{"name": k, "data": v} for k, v in params.items()], str(ckpt_path))
    assert run_cli("ms2hf", tmp_path / "ms", tmp_path / "hf").returncode == 0
    assert {dtype for dtype, _, _ in raw(tmp_path / "hf").values()} == {"float32"}
