"""LoRA adapters made by PEFT on the fixtures cross both ways: as mindpet's factors under a pet_config that
MindFormers runs, as OUT/adapter/ that PEFT loads, or merged into the weights; what MindFormers' LoRA
cannot state is refused by name."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from oracle import kv_cache_parameters
from conftest import FIXTURES, assert_rejected, refused, run_cli
from llama_convert import HF2MSOptions, MS2HFOptions, convert_hf2ms, convert_ms2hf
from llama_convert.formats import ckpt, safetensors as st

# name -> (fixture, PEFT LoraConfig arguments, dtype the base is loaded in, autocast factors to float32,
# safetensors or .bin). B is initialised non-zero (init_lora_weights=False): a zero B would pass any test.
ADAPTERS = {
    "fp32-qv-down-r4": ("mha-untied-fp32", dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]),
                        "float32", True, True),
    "bf16-all-r8": ("gqa-tied-bf16-sharded", dict(r=8, lora_alpha=16, target_modules=[
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]), "bfloat16", False, True),
    "fp32-on-bf16-ko-up-r2-bin": ("qwen2-tied-bf16", dict(r=2, lora_alpha=5, target_modules=["k_proj", "o_proj", "up_proj"]),
                                  "bfloat16", True, False),
    "rslora-r4": ("mqa-bias-fp16-bin", dict(r=4, lora_alpha=3, use_rslora=True, target_modules=["q_proj", "gate_proj"]),
                  "float32", True, True),
}
# What MindFormers' LoRA cannot state, each as PEFT makes it: (fixture, LoraConfig arguments, words of the refusal).
REFUSED = {
    "dora": (dict(r=4, target_modules=["q_proj"], use_dora=True), ("DoRA",)),
    "modules_to_save": (dict(r=4, target_modules=["q_proj"], modules_to_save=["lm_head"]), ("modules_to_save",)),
    "rank_pattern": (dict(r=4, target_modules=["q_proj", "v_proj"], rank_pattern={"v_proj": 2}),
                     ("rank_pattern", "v_proj rank 2, q_proj rank 4")),
    "alpha_pattern": (dict(r=4, target_modules=["q_proj", "v_proj"], alpha_pattern={"v_proj": 32}), ("alpha_pattern",)),
    "lm_head": (dict(r=4, target_modules=["q_proj", "lm_head"]), ("lm_head", "lm_head")),
    "embedding": (dict(r=4, target_modules=["embed_tokens"]), ("embedding", "embed_tokens")),
    "rslora_r2": (dict(r=2, target_modules=["q_proj"], use_rslora=True), ("rsLoRA", "r = 2")),
    "some_layers": (dict(r=4, target_modules=["q_proj"], layers_to_transform=[0]), ("layers 0 of 2", "q_proj")),
    "bias": (dict(r=4, target_modules=["q_proj"], bias="lora_only"), ("biases",)),
}


def _peft_model(fixture: str, dtype: str, **lora):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(FIXTURES / fixture, dtype=getattr(torch, dtype))
    autocast = lora.pop("autocast_adapter_dtype", True)
    return get_peft_model(base, LoraConfig(init_lora_weights=False, lora_dropout=0.05, **lora),
                          autocast_adapter_dtype=autocast)


@pytest.fixture(scope="module")
def adapters(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    made = {}
    for name, (fixture, lora, dtype, autocast, safe) in ADAPTERS.items():
        _peft_model(fixture, dtype, autocast_adapter_dtype=autocast, **lora).save_pretrained(
            root / name, safe_serialization=safe)
        made[name] = root / name
    for name, (lora, _) in REFUSED.items():
        _peft_model("mha-untied-fp32", "float32", **lora).save_pretrained(root / f"refused-{name}")
    return made


@pytest.fixture(scope="module")
def converted(adapters, tmp_path_factory) -> dict[str, Path]:
    """Each adapter with its model, hf2ms as it is (Ascend settings: every byte kept)."""
    root = tmp_path_factory.mktemp("lora-ms")
    return {name: convert_hf2ms(FIXTURES / ADAPTERS[name][0], root / name, HF2MSOptions(adapter=str(path))).out_dir
            for name, path in adapters.items()}


def _factors(path: Path) -> dict[str, tuple[str, tuple, bytes]]:
    if path.suffix == ".bin":
        import torch
        state = torch.load(path, weights_only=True)
        return {n: (str(t.dtype).removeprefix("torch."), tuple(t.shape), t.contiguous().view(torch.uint8).numpy().tobytes())
                for n, t in state.items()}
    return {n: (r.dtype, r.shape, r.read().tobytes()) for n, r in st.read_header(path)[0].items()}


def _adapter_file(directory: Path) -> Path:
    return next(p for p in (directory / "adapter_model.safetensors", directory / "adapter_model.bin") if p.exists())


def _as_data(cfg: dict) -> dict:
    """adapter_config.json compared as data: PEFT writes target_modules in set order."""
    return {**cfg, "target_modules": sorted(cfg["target_modules"])}


# ---------------------------------------------------------------- hf2ms


@pytest.mark.parametrize("name", ADAPTERS)
def test_hf2ms_writes_the_factors_under_mindpet_names_and_a_pet_config_for_exactly_the_adapted_modules(converted,
                                                                                                      adapters, name):
    out = converted[name]
    pet = yaml.safe_load((out / "llama_config.yaml").read_text())["model"]["model_config"]["pet_config"]
    lora = ADAPTERS[name][1]
    cells = {"q_proj": "wq", "k_proj": "wk", "v_proj": "wv", "o_proj": "wo", "gate_proj": "w1", "down_proj": "w2",
             "up_proj": "w3"}
    assert isinstance(pet["target_modules"], str)  # a list breaks MindFormers' build_network
    assert sorted(pet["target_modules"].split("|")) == sorted(f".*{cells[m]}" for m in lora["target_modules"])
    assert (pet["pet_type"], pet["lora_rank"], pet["lora_dropout"]) == ("lora", lora["r"], 0.05)
    alpha = lora["lora_alpha"] * (lora["r"] ** 0.5 if lora.get("use_rslora") else 1)
    assert pet["lora_alpha"] == alpha and pet["lora_alpha"] / lora["r"] == (
        lora["lora_alpha"] / lora["r"] ** 0.5 if lora.get("use_rslora") else lora["lora_alpha"] / lora["r"])
    written = {r.name: r for r in ckpt.scan(out / "model.ckpt")[0]}
    source = _factors(_adapter_file(adapters[name]))
    for key, (dtype, shape, data) in source.items():
        module, part = key.removeprefix("base_model.model.").split(".lora_")
        layer = module.split(".")[2]
        ms_name = f"model.layers.{layer}.{'attention' if 'self_attn' in module else 'feed_forward'}." \
                  f"{cells[module.rsplit('.', 1)[1]]}.mindpet_delta_lora_{part[0].lower()}"
        ref = written[ms_name]
        assert (ref.dtype, ref.shape, ref.read().tobytes()) == (dtype, shape, data), ms_name
    if next(iter(source.values()))[0] != yaml.safe_load((out / "llama_config.yaml").read_text())[
            "model"]["model_config"]["param_init_type"]:
        assert pet["param_init_type"] == next(iter(source.values()))[0]  # so a strict load takes them as they are


def test_factors_in_another_dtype_than_the_model_load_strictly_as_they_are(ms, converted):
    from mindformers import MindFormerConfig
    from mindformers.models.build_model import build_network
    out = converted["fp32-on-bf16-ko-up-r2-bin"]   # float32 factors on a bfloat16 model, Ascend settings
    config = MindFormerConfig(str(out / "llama_config.yaml"))
    config.model.model_config.checkpoint_name_or_path = None
    net = build_network(config.model)
    not_loaded, unused = ms.load_param_into_net(net, ms.load_checkpoint(str(out / "model.ckpt")), strict_load=True)
    assert (sorted(not_loaded), unused) == (kv_cache_parameters(config.model.model_config), [])  # the KV cache only
    dtypes = {p.name.rsplit(".", 1)[1]: str(p.dtype) for p in net.get_parameters() if ".wk." in p.name}
    assert dtypes | {"bias": None} == {"weight": "BFloat16", "bias": None, "mindpet_delta_lora_a": "Float32",
                                       "mindpet_delta_lora_b": "Float32"}


@pytest.fixture(scope="module")
def peft_logits(adapters):
    """transformers + PEFT in float32 on seeded tokens, per adapter."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    ids = np.random.default_rng(0).integers(3, 250, size=(2, 12))
    out = {}
    for name, path in adapters.items():
        base = AutoModelForCausalLM.from_pretrained(FIXTURES / ADAPTERS[name][0], dtype=torch.float32)
        model = PeftModel.from_pretrained(base, path).eval()
        with torch.no_grad():
            out[name] = model(torch.from_numpy(ids)).logits.numpy()
            with model.disable_adapter():
                assert np.abs(model(torch.from_numpy(ids)).logits.numpy() - out[name]).max() > 1e-3  # B is not zero
    return ids, out


@pytest.mark.parametrize("name", ADAPTERS)
def test_mindformers_with_the_pet_config_on_cpu_computes_what_transformers_with_peft_computes(
        ms, adapters, peft_logits, tmp_path, name):
    from mindformers import MindFormerConfig
    from mindformers.models.build_model import build_network
    out = convert_hf2ms(FIXTURES / ADAPTERS[name][0], tmp_path / "ms",
                        HF2MSOptions(adapter=str(adapters[name]), device="CPU")).out_dir
    ids, expected = peft_logits
    config = MindFormerConfig(str(out / "llama_config.yaml"))  # as a user runs it: build_network wraps the model
    config.model.model_config.seq_length = ids.shape[1]
    net = build_network(config.model)
    net.set_train(False)
    assert ms.load_param_into_net(net, ms.load_checkpoint(str(out / "model.ckpt")), strict_load=True) == ([], [])
    got = net(ms.Tensor(ids.astype(np.int32)))
    got = (got[0] if isinstance(got, tuple) else got).asnumpy().reshape(expected[name].shape)
    assert np.abs(got - expected[name]).max() <= 1e-4


# ---------------------------------------------------------------- the way back


@pytest.mark.parametrize("name", ADAPTERS)
def test_an_adapter_through_mindformers_and_back_keeps_every_byte_and_its_config(converted, adapters, tmp_path, name):
    back = convert_ms2hf(converted[name], tmp_path / "hf").out_dir
    assert _factors(back / "adapter/adapter_model.safetensors") == _factors(_adapter_file(adapters[name]))
    assert _as_data(json.loads((back / "adapter/adapter_config.json").read_text())) == \
        _as_data(json.loads((adapters[name] / "adapter_config.json").read_text()))
    record = json.loads((back / "conversion.json").read_text())
    assert {f["name"] for f in record["outputs"]} >= {"adapter/adapter_model.safetensors", "adapter/adapter_config.json"}


def test_diff_compares_the_factors_too(converted, tmp_path):
    from safetensors.torch import load_file, save_file
    from llama_convert import diff_checkpoints
    name = "fp32-qv-down-r4"
    back = convert_ms2hf(converted[name], tmp_path / "hf").out_dir
    assert diff_checkpoints(converted[name], back)["same"]
    factors = load_file(back / "adapter/adapter_model.safetensors")
    key = sorted(factors)[0]
    factors[key][0, 0] += 1
    save_file(factors, back / "adapter/adapter_model.safetensors", metadata={"format": "pt"})
    r = diff_checkpoints(converted[name], back)
    assert not r["same"] and key in json.dumps(r)


def test_peft_loads_the_adapter_ms2hf_writes_and_a_force_rerun_replaces_that_output(converted, peft_logits, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    name = "fp32-qv-down-r4"
    # a checkpoint trained on Ascend has no record of a PEFT config: a plain one is written from pet_config
    ms_dir = tmp_path / "ms"
    shutil.copytree(converted[name], ms_dir)
    data = yaml.safe_load((ms_dir / "llama_config.yaml").read_text())
    del data["llama_convert"]["adapter"]
    (ms_dir / "llama_config.yaml").write_text(yaml.safe_dump(data))
    out = convert_ms2hf(ms_dir, tmp_path / "hf").out_dir
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32), out / "adapter")
    ids, expected = peft_logits
    with torch.no_grad():
        assert np.abs(model.eval()(torch.from_numpy(ids)).logits.numpy() - expected[name]).max() <= 1e-5
    assert run_cli("ms2hf", ms_dir, out, "--force").returncode == 0


# ---------------------------------------------------------------- merged


# A merge rounds once, from float32: |ours - PEFT's| per element stays within 2 ulp of the inputs' scale,
# 2 * eps(dtype) * (|W| + |scale * B @ A|). Not of the result's: where W and the delta cancel, the result is
# small and a bound on its own ulp is not met by any order of float32 operations. PEFT itself rounds twice
# in half precision (the delta to the weight's dtype, then the sum).
EPS = {"float32": 2.0 ** -23, "bfloat16": 2.0 ** -7, "float16": 2.0 ** -10}


def _float32(ref) -> np.ndarray:
    from llama_convert.core.dtypes import to_float32
    return to_float32(ref.read(), ref.dtype)


def _assert_merged_as_peft_merges(fixture: str, dtype: str, adapter: Path, tmp_path: Path) -> int:
    """hf2ms --merge-adapter against PEFT's merge_and_unload() converted, tensor by tensor within the bound;
    returns how many weights the merge changed."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    base = AutoModelForCausalLM.from_pretrained(FIXTURES / fixture, dtype=getattr(torch, dtype))
    PeftModel.from_pretrained(base, adapter).merge_and_unload().save_pretrained(tmp_path / "peft-merged")
    shutil.copy(FIXTURES / fixture / "config.json", tmp_path / "peft-merged/config.json")  # the same config as ours
    theirs = convert_hf2ms(tmp_path / "peft-merged", tmp_path / "theirs").out_dir
    ours = convert_hf2ms(FIXTURES / fixture, tmp_path / "ours",
                         HF2MSOptions(adapter=str(adapter), merge_adapter=True)).out_dir
    assert "pet_config" not in yaml.safe_load((ours / "llama_config.yaml").read_text())["model"]["model_config"]
    plain = convert_hf2ms(FIXTURES / fixture, tmp_path / "plain").out_dir
    a, b, w = ({r.name: r for r in ckpt.scan(d / "model.ckpt")[0]} for d in (ours, theirs, plain))
    assert sorted(a) == sorted(b)
    changed = 0
    for n in a:
        assert a[n].dtype == b[n].dtype == w[n].dtype, n
        x, y, w0 = _float32(a[n]), _float32(b[n]), _float32(w[n])
        bound = 2 * EPS[a[n].dtype] * (np.abs(w0) + np.abs(y - w0))
        assert (np.abs(x - y) <= bound).all(), n
        changed += not np.array_equal(x, w0)
    return changed


@pytest.mark.parametrize("name", ["fp32-qv-down-r4", "bf16-all-r8"])
def test_merge_adapter_equals_peft_merge_and_unload_within_two_ulp_of_the_inputs_scale(adapters, tmp_path, name):
    fixture, lora, dtype, _, _ = ADAPTERS[name]
    changed = _assert_merged_as_peft_merges(fixture, dtype, adapters[name], tmp_path)
    assert changed == len(lora["target_modules"]) * 2  # every adapted weight of both layers, nothing else


@pytest.mark.parametrize("name", ["rank_pattern", "alpha_pattern", "rslora_r2", "some_layers"])
def test_what_pet_config_cannot_state_still_merges_as_peft_merges(adapters, tmp_path, name):
    path = adapters["fp32-qv-down-r4"].parent / f"refused-{name}"
    assert _assert_merged_as_peft_merges("mha-untied-fp32", "float32", path, tmp_path) >= 1


def test_ms2hf_merge_adapter_writes_what_hf2ms_merge_adapter_writes(converted, adapters, tmp_path):
    name = "fp32-on-bf16-ko-up-r2-bin"
    fixture = FIXTURES / ADAPTERS[name][0]
    there = convert_hf2ms(fixture, tmp_path / "ms", HF2MSOptions(adapter=str(adapters[name]), merge_adapter=True))
    convert_ms2hf(there.out_dir, tmp_path / "hf-a")
    convert_ms2hf(converted[name], tmp_path / "hf-b", MS2HFOptions(merge_adapter=True))
    assert not (tmp_path / "hf-b/adapter").exists()
    assert run_cli("diff", tmp_path / "hf-a", tmp_path / "hf-b", "--strict-dtype").returncode == 0
    assert run_cli("diff", tmp_path / "hf-a", fixture).returncode == 1  # the merge changed the model


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize("name", REFUSED)
def test_what_mindformers_lora_cannot_state_is_refused_by_name(adapters, tmp_path, name):
    path = adapters["fp32-qv-down-r4"].parent / f"refused-{name}"
    assert_rejected(tmp_path, FIXTURES / "mha-untied-fp32", *REFUSED[name][1], extra=("--adapter", str(path)))


def test_qkv_concat_with_an_unmerged_adapter_is_refused_and_merged_it_converts(adapters, tmp_path):
    src, path = FIXTURES / "mha-untied-fp32", str(adapters["fp32-qv-down-r4"])
    assert_rejected(tmp_path, src, "--qkv-concat", "block-diagonal", "--merge-adapter",
                    extra=("--adapter", path, "--qkv-concat"))
    assert run_cli("hf2ms", src, tmp_path / "ok", "--adapter", path, "--qkv-concat", "--merge-adapter").returncode == 0


def test_an_adapter_of_another_model_and_merge_adapter_without_one_are_refused(adapters, tmp_path):
    assert_rejected(tmp_path, FIXTURES / "gqa-linear-rope", "do not fit", extra=("--adapter", str(adapters["fp32-qv-down-r4"])))
    assert_rejected(tmp_path, FIXTURES / "mha-untied-fp32", "--merge-adapter", "--adapter", extra=("--merge-adapter",))
    refused(run_cli("ms2hf", FIXTURES / "mha-untied-fp32", tmp_path / "x", "--merge-adapter"))


# ---------------------------------------------------------------- verify


def test_verify_adapter_passes_on_the_conversion_and_fails_on_a_changed_factor(converted, adapters, tmp_path):
    from llama_convert import verify_conversion
    from llama_convert.verify import VerifyOptions
    name = "bf16-all-r8"
    fixture = FIXTURES / ADAPTERS[name][0]
    report = verify_conversion(fixture, converted[name], VerifyOptions(adapter=str(adapters[name]), seq_len=16))
    assert report.passed and report.logits_ratio <= 8, report.failures
    changed = tmp_path / "changed"
    shutil.copytree(adapters[name], changed)
    from safetensors.torch import load_file, save_file
    factors = load_file(changed / "adapter_model.safetensors")
    key = sorted(k for k in factors if "layers.1.mlp.down_proj.lora_B" in k)[0]
    factors[key] = factors[key] * 1.01
    save_file(factors, changed / "adapter_model.safetensors", metadata={"format": "pt"})
    report = verify_conversion(fixture, converted[name], VerifyOptions(adapter=str(changed), seq_len=16))
    assert not report.passed and report.failures[0].startswith("lm_head: distance"), report.failures


def test_verify_adapter_passes_on_a_merged_float32_conversion(adapters, tmp_path):
    from llama_convert import verify_conversion
    from llama_convert.verify import VerifyOptions
    name = "fp32-qv-down-r4"
    fixture, path = FIXTURES / ADAPTERS[name][0], str(adapters[name])
    out = convert_hf2ms(fixture, tmp_path / "ms", HF2MSOptions(adapter=path, merge_adapter=True)).out_dir
    report = verify_conversion(fixture, out, VerifyOptions(adapter=path, seq_len=8))
    assert report.passed, report.failures


def test_verify_without_adapter_on_a_lora_conversion_says_to_give_it(converted):
    from llama_convert import ConvertError, verify_conversion
    with pytest.raises(ConvertError, match="--adapter ADAPTER_DIR"):
        verify_conversion(FIXTURES / "mha-untied-fp32", converted["fp32-qv-down-r4"])


def test_verify_adapter_names_an_adapter_that_is_not_the_one_converted(converted, adapters):
    from llama_convert import verify_conversion
    from llama_convert.verify import VerifyOptions
    name = "fp32-qv-down-r4"
    other = adapters[name].parent / "refused-some_layers"   # q_proj of layer 0 only
    report = verify_conversion(FIXTURES / ADAPTERS[name][0], converted[name],
                               VerifyOptions(adapter=str(other), seq_len=8))
    assert not report.passed and any(f.startswith("adapter: adapted modules") for f in report.failures)


# ---------------------------------------------------------------- bulk


def test_a_bulk_manifest_row_takes_adapter_and_merge_adapter(adapters, tmp_path):
    shutil.copytree(adapters["fp32-qv-down-r4"], tmp_path / "lora")
    rows = [{"src": str(FIXTURES / "mha-untied-fp32"), "out": "unmerged", "adapter": "lora"},
            {"src": str(FIXTURES / "mha-untied-fp32"), "out": "merged", "adapter": "lora", "merge_adapter": True}]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert run_cli("bulk", tmp_path / "m.jsonl").returncode == 0
    assert "pet_config" in yaml.safe_load((tmp_path / "unmerged/llama_config.yaml").read_text())["model"]["model_config"]
    assert "pet_config" not in yaml.safe_load((tmp_path / "merged/llama_config.yaml").read_text())["model"]["model_config"]
