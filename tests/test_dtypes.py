"""Casts between the float dtypes: exact when widening, and a NaN keeps its payload bits both ways,
so a round trip that promises the same bytes gives them, signalling NaNs included."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import FIXTURES
from llama_convert import convert_hf2ms, convert_ms2hf
from llama_convert.core.dtypes import cast, cast_bytes, widen

EVERY_16_BITS = np.arange(1 << 16, dtype=np.uint16)


def storage(bits: np.ndarray, dtype: str) -> np.ndarray:
    return bits.view(np.float16) if dtype == "float16" else bits


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_every_half_precision_bit_pattern_survives_widening_to_float32_and_back(dtype):
    wide = cast(storage(EVERY_16_BITS, dtype), dtype, "float32")
    back = cast(wide, "float32", dtype)
    assert np.array_equal(back.view(np.uint16), EVERY_16_BITS)


@pytest.mark.parametrize("dtype, bits, widened", [
    ("bfloat16", 0x7F81, 0x7F810000),   # signalling NaN: the quiet bit (0x0040) stays clear
    ("bfloat16", 0xFFC1, 0xFFC10000),   # quiet, negative, with a payload
    ("float16", 0x7C01, 0x7F802000),    # signalling NaN, payload moved to the top of the mantissa
    ("float16", 0xFD55, 0xFFAAA000),
    ("float16", 0x8000, 0x80000000),    # negative zero
])
def test_widening_to_float32_keeps_the_nan_payload_and_the_sign_of_zero(dtype, bits, widened):
    got = cast(storage(np.array([bits], np.uint16), dtype), dtype, "float32")
    assert got.view(np.uint32)[0] == widened
    raw = memoryview(np.array([bits], np.uint16)).cast("B")
    assert np.frombuffer(cast_bytes(raw, dtype, "float32"), np.uint32)[0] == widened


def test_the_hardware_conversion_quiets_signalling_nans_which_is_why_casts_avoid_it():
    # torch converts float16 with the CPU's F16C instructions; the result is what our casts must not do.
    quieted = torch.from_numpy(np.full(64, 0x7C01, np.uint16).view(np.float16)).float().numpy()
    ours = cast(np.full(64, 0x7C01, np.uint16).view(np.float16), "float16", "float32")
    assert np.isnan(quieted).all() and np.isnan(ours).all()
    assert set(ours.view(np.uint32)) == {0x7F802000}
    if set(quieted.view(np.uint32)) == {0x7F802000}:
        pytest.skip("this CPU's conversion keeps signalling NaNs; nothing to contrast")
    assert set(quieted.view(np.uint32)) == {0x7FC02000}


def test_float32_nans_widen_to_float64_on_their_bits():
    f = np.array([0x7F800001, 0xFFC00001, 0x7F812345], np.uint32).view(np.float32)
    got = widen(f, "float32", "float64").view(np.uint64)
    assert list(got) == [0x7FF0000020000000, 0xFFF8000020000000, 0x7FF02468A0000000]


@pytest.mark.parametrize("dtype, bits, narrowed", [
    ("bfloat16", 0x7F800001, 0x7FC0),   # every payload bit dropped: it would read as infinity; quiet it
    ("bfloat16", 0x7F810001, 0x7F81),   # the payload's high bits are kept, signalling stays signalling
    ("float16", 0x7F800001, 0x7E00),
    ("float16", 0x7F806000, 0x7C03),
])
def test_narrowing_a_nan_keeps_its_high_payload_bits_and_never_makes_an_infinity(dtype, bits, narrowed):
    got = cast(np.array([bits], np.uint32).view(np.float32), "float32", dtype)
    assert got.view(np.uint16)[0] == narrowed


# ------------------------------------------------------------------ the promise, end to end

@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_hf2ms_then_ms2hf_returns_the_same_bytes_for_signalling_nans_and_negative_zero(tmp_path, dtype):
    src = tmp_path / "src"
    shutil.copytree(FIXTURES / "gqa-tied-bf16-sharded", src)
    state = {}
    for f in sorted(src.glob("*.safetensors")):
        state.update(load_file(f))
        f.unlink()
    (src / "model.safetensors.index.json").unlink()
    state = {k: v.to(getattr(torch, dtype)) for k, v in state.items()}
    planted = {"model.norm.weight": (0, 0x7F81 if dtype == "bfloat16" else 0x7C01),      # signalling NaN
               "model.layers.0.input_layernorm.weight": (3, 0xFFC3 if dtype == "bfloat16" else 0xFE03),
               "model.layers.1.post_attention_layernorm.weight": (5, 0x8000)}           # negative zero
    for name, (i, bits) in planted.items():
        state[name].view(torch.int16)[i] = torch.tensor(bits, dtype=torch.int32).to(torch.int16)
    save_file(state, src / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "torch_dtype": dtype}))

    convert_hf2ms(src, tmp_path / "ms")
    convert_ms2hf(tmp_path / "ms", tmp_path / "back")
    back = load_file(tmp_path / "back" / "model.safetensors")
    for name, (i, bits) in planted.items():
        assert back[name].view(torch.int16)[i].item() & 0xFFFF == bits, name
    for name, tensor in state.items():
        assert back[name].dtype == tensor.dtype and torch.equal(back[name].view(torch.int16),
                                                                 tensor.view(torch.int16)), name
