"""The op registry and the format layers, each against an independent reference."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from llama_convert.table import ops
from llama_convert.core.dtypes import cast, cast_bytes
from llama_convert.formats import ckpt, safetensors as st_format
from llama_convert.formats.payload import InMemory


@st.composite
def heads(draw):
    kv = draw(st.integers(1, 4))
    per = draw(st.integers(1, 4))
    return kv * per, kv, draw(st.integers(1, 4)), draw(st.integers(1, 5))  # heads, kv, head_dim, in-dim


@settings(max_examples=60, deadline=None)
@given(heads(), st.booleans())
def test_qkv_grouped_inverse_restores_inputs(shape, bias, ):
    n_heads, n_kv, d, x = shape
    ctx = ops.OpContext(n_heads, n_kv)
    rest = () if bias else (x,)
    rng = np.random.default_rng(n_heads * 100 + n_kv)
    q, k, v = (rng.standard_normal((h * d, *rest)).astype(np.float32) for h in (n_heads, n_kv, n_kv))
    op = ops.get("qkv_grouped")
    fused = op.forward([q, k, v], ctx)
    assert fused.shape == op.out_shape([q.shape, k.shape, v.shape], ctx)
    assert [t.shape for t in op.inverse(fused, ctx)] == op.in_shapes(fused.shape, ctx)
    for a, b in zip(op.inverse(fused, ctx), (q, k, v)):
        np.testing.assert_array_equal(a, b)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 9), st.integers(1, 7))
def test_gate_up_interleaved_inverse_restores_inputs(ffn, hidden):
    rng = np.random.default_rng(ffn * 10 + hidden)
    gate, up = (rng.integers(0, 2**16, (ffn, hidden)).astype(np.uint16) for _ in range(2))  # bf16 bit patterns
    op = ops.get("gate_up_interleaved")
    fused = op.forward([gate, up], None)
    back = op.inverse(fused, None)
    assert np.array_equal(back[0], gate) and np.array_equal(back[1], up)


def op_rows(name: str, n_heads: int, n_kv: int, d: int) -> int:
    """Rows of the packed tensor an op makes, for heads of d rows (an FFN of d rows)."""
    qkv, gate_up = (n_heads + 2 * n_kv) * d, 2 * d
    return {"copy": d, "qkv_grouped": qkv, "qkv_contiguous": qkv, "qkv_contiguous_to_grouped": qkv,
            "gate_up_interleaved": gate_up, "gate_up_contiguous": gate_up, "gate_up_contiguous_to_interleaved": gate_up}[name]


@settings(max_examples=30, deadline=None)
@given(st.sampled_from(sorted(n for n, op in ops.OPS.items() if not op.lossy)), heads(),
       st.sampled_from([np.float32, np.float16, np.uint16]))
def test_every_registered_op_but_the_lossy_one_inverts_exactly(name, shape, dtype):
    """inverse(forward(x)) == x, bit for bit, for every op in the registry and every storage dtype."""
    n_heads, n_kv, d, x = shape
    ctx = ops.OpContext(n_heads, n_kv)
    op = ops.get(name)
    out_shape = (op_rows(name, n_heads, n_kv, d), x)
    inputs = [np.random.default_rng(7).integers(0, 2**15, s).astype(dtype) for s in op.in_shapes(out_shape, ctx)]
    back = op.inverse(op.forward(inputs, ctx), ctx)
    assert len(back) == len(inputs)
    for a, b in zip(back, inputs):
        assert a.dtype == b.dtype and np.array_equal(a.view(np.uint8), b.view(np.uint8))


def test_qkv_grouped_matches_mindformers_layout(ms):
    from mindformers.utils.convert_utils import qkv_concat_hf2mg
    rng = np.random.default_rng(0)
    q, k, v = rng.standard_normal((32, 8)), rng.standard_normal((8, 8)), rng.standard_normal((8, 8))
    ours = ops.get("qkv_grouped").forward([q, k, v], ops.OpContext(8, 2))
    np.testing.assert_array_equal(ours, qkv_concat_hf2mg(np.concatenate([q, k, v]), 8, 2, 32))


@pytest.mark.parametrize("dst", ["bfloat16", "float16"])
def test_casts_round_to_nearest_even_like_torch(dst):
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.standard_normal(10000).astype(np.float32) * 10,
                        np.array([0.0, -0.0, np.inf, -np.inf, 1e-40, 65520.0, 3.3895e38], np.float32)])
    want = torch.from_numpy(x).to(getattr(torch, dst))
    want_bits = want.view(torch.int16).numpy().view(np.uint16) if dst == "bfloat16" else want.numpy()
    got = cast(x, "float32", dst)
    np.testing.assert_array_equal(got.view(np.uint16), want_bits.view(np.uint16))


def test_bf16_nan_stays_nan():
    got = cast(np.array([np.nan], np.float32), "float32", "bfloat16")
    back = cast(got, "bfloat16", "float32")
    assert np.isnan(back[0])


def test_bf16_widening_on_raw_bytes_matches_torch_for_every_bit_pattern():
    every = np.arange(1 << 16, dtype=np.uint16)
    want = torch.from_numpy(every.view(np.int16)).view(torch.bfloat16).to(torch.float32).numpy()
    got = np.frombuffer(cast_bytes(memoryview(every).cast("B"), "bfloat16", "float32"), np.float32)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


def test_safetensors_writer_output_reads_back_with_the_reference_library(tmp_path):
    from safetensors.numpy import load_file
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    b = np.arange(5, dtype=np.float16)
    w = st_format.SafetensorsWriter(tmp_path / "x.safetensors", [("a", "float32", (3, 4)), ("b", "float16", (5,))],
                                    {"format": "ms"})
    w.add("a", InMemory(a))
    w.add("b", InMemory(b))
    w.close()
    got = load_file(tmp_path / "x.safetensors")
    np.testing.assert_array_equal(got["a"], a)
    np.testing.assert_array_equal(got["b"], b)
    refs, meta = st_format.read_header(tmp_path / "x.safetensors")
    assert meta == {"format": "ms"} and refs["a"].shape == (3, 4) and np.array_equal(refs["b"].read(), b)


def test_ckpt_scan_reads_what_mindspore_saves(tmp_path, ms):
    params = {"w": ms.Parameter(ms.Tensor(np.arange(6, dtype=np.float32).reshape(2, 3)), name="w"),
              "b": ms.Parameter(ms.Tensor(np.ones(4, np.float16)), name="b")}
    path = tmp_path / "m.ckpt"
    ms.save_checkpoint([{"name": k, "data": v} for k, v in params.items()], str(path))
    refs, others = ckpt.scan(path)
    by_name = {r.name: r for r in refs}
    np.testing.assert_array_equal(by_name["w"].read(), np.arange(6, dtype=np.float32).reshape(2, 3))
    assert by_name["b"].dtype == "float16" and by_name["b"].shape == (4,)


def test_ckpt_scan_rejects_truncation(tmp_path):
    path = tmp_path / "m.ckpt"
    w = ckpt.CkptWriter(path)
    w.add("w", "float32", (100,), InMemory(np.zeros(100, np.float32)))
    w.close()
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(Exception) as e:
        ckpt.scan(path)
    assert "m.ckpt" in str(e.value)


def test_buffered_copy_path_writes_the_same_bytes_as_the_kernel_path(tmp_path, monkeypatch):
    from llama_convert import HF2MSOptions, convert_hf2ms
    from llama_convert.formats import payload
    from conftest import FIXTURES
    src = FIXTURES / "gqa-tied-bf16-sharded"
    convert_hf2ms(src, tmp_path / "kernel", HF2MSOptions(format="safetensors"))
    monkeypatch.setattr(payload, "COPY_MODE", "buffered")
    convert_hf2ms(src, tmp_path / "buffered", HF2MSOptions(format="safetensors"))
    for f in (tmp_path / "kernel").glob("*.safetensors"):
        assert f.read_bytes() == (tmp_path / "buffered" / f.name).read_bytes()


@settings(max_examples=30, deadline=None)
@given(st.sampled_from(sorted(n for n, op in ops.OPS.items() if op.placement)), heads(), st.booleans())
def test_placement_describes_exactly_what_forward_does(name, shape, bias):
    """The executor reads fused tensors straight into place by `placement`; it must agree with forward."""
    n_heads, n_kv, d, x = shape
    ctx = ops.OpContext(n_heads, n_kv)
    op = ops.get(name)
    rest = () if bias else (x,)
    rows = op_rows(name, n_heads, n_kv, d)
    ins = [np.random.default_rng(3).standard_normal(s).astype(np.float32) for s in op.in_shapes((rows, *rest), ctx)]
    out = np.full(sum(a.size for a in ins), np.nan, np.float32)
    for a, runs in zip(ins, op.placement([a.shape for a in ins], ctx)):
        flat, pos = a.reshape(-1), 0
        for start, n in runs:
            out[start:start + n] = flat[pos:pos + n]
            pos += n
        assert pos == a.size
    np.testing.assert_array_equal(out, op.forward(ins, ctx).reshape(-1))


def test_the_contiguous_regroupings_are_the_contiguous_split_then_the_fused_layout():
    ctx = ops.OpContext(6, 2)
    q, k, v = (np.random.default_rng(i).standard_normal((n * 3, 5)).astype(np.float32) for i, n in enumerate((6, 2, 2)))
    packed = ops.get("qkv_contiguous").forward([q, k, v], ctx)
    np.testing.assert_array_equal(packed, np.concatenate([q, k, v]))
    np.testing.assert_array_equal(ops.get("qkv_contiguous_to_grouped").forward([packed], ctx),
                                  ops.get("qkv_grouped").forward([q, k, v], ctx))
    gate, up = q[:8], q[8:16]
    np.testing.assert_array_equal(ops.get("gate_up_contiguous_to_interleaved").forward([np.concatenate([gate, up])], ctx),
                                  ops.get("gate_up_interleaved").forward([gate, up], ctx))
