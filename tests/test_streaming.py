"""Streaming: tensors are produced window by window, and where the windows fall never changes a byte.

A real conversion uses 1 MiB windows, larger than any fixture tensor; these tests shrink the window
so that windows start and end inside tensors, inside runs of a fused tensor, and across the slice
boundaries of a sliced .ckpt, which is where an off-by-one would hide.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import FIXTURES
from llama_convert import HF2MSOptions, convert_hf2ms, convert_ms2hf, plan_hf2ms
from llama_convert.table import ops
from llama_convert.core.dtypes import cast
from llama_convert.core.errors import ConvertError
from llama_convert.output.materialize import Materializer
from llama_convert.formats import payload
from llama_convert.formats.payload import PAGE, read_all
from test_bad_input import MHA, copy, edit_config, edit_weights
from test_ms2hf import raw

SRC = FIXTURES / "gqa-tied-bf16-sharded"
SMALL_WINDOW = 40  # bytes: a multiple of every itemsize, far smaller than a row


def weights(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.suffix in (".ckpt", ".safetensors")}


@pytest.mark.parametrize("opts", [
    HF2MSOptions(format="safetensors", qkv_concat=True),
    HF2MSOptions(format="ckpt", qkv_concat=True, dtype="float16"),
    HF2MSOptions(format="ckpt", qkv_concat=True, dtype="float32", ckpt_slice_bytes=1000),
], ids=["st-qkv", "ckpt-qkv-fp16", "ckpt-qkv-fp32-sliced"])
def test_small_windows_write_the_same_bytes_as_large_ones(tmp_path, monkeypatch, opts):
    convert_hf2ms(SRC, tmp_path / "large", opts)
    monkeypatch.setattr(payload, "WINDOW", SMALL_WINDOW)
    convert_hf2ms(SRC, tmp_path / "small", opts)
    assert weights(tmp_path / "small") == weights(tmp_path / "large")


# Llama's q, k, v (and gate, up) fused from separate tensors; Phi-3's packed [q; k; v] (and [gate; up])
# regrouped: one source whose runs land out of output order.
FUSING = {SRC.name: {"qkv_grouped", "gate_up_interleaved"},
          "phi3-tied-fp32": {"qkv_contiguous_to_grouped", "gate_up_contiguous_to_interleaved"}}


@pytest.mark.parametrize("name", FUSING)
def test_fused_tensors_stream_exactly_what_the_op_computes_at_any_offset(name):
    plan = plan_hf2ms(FIXTURES / name, HF2MSOptions(qkv_concat=True, dtype="float16"))
    make, ctx = Materializer(plan), plan.op_context()
    rng = np.random.default_rng(0)
    fused = [pt for pt in plan.tensors if pt.op != "copy"]
    assert {pt.op for pt in fused} == FUSING[name]
    for pt in fused:
        refs = [plan.source.tensors[s] for s in pt.sources]
        arrays = [cast(r.read(), r.dtype, pt.dtype) for r in refs]
        expected = np.ascontiguousarray(ops.get(pt.op).forward(arrays, ctx)).reshape(-1).view(np.uint8)
        got = make(pt)
        assert np.array_equal(read_all(got), expected), pt.name
        for _ in range(20):  # arbitrary element-aligned windows
            a, b = sorted(rng.integers(0, expected.size // 2, size=2) * 2)
            view = memoryview(bytearray(int(b - a)))
            got.read_into(view, int(a))
            assert bytes(view) == expected[a:b].tobytes(), (pt.name, a, b)


@pytest.mark.parametrize("name", FUSING)
def test_parts_of_sliced_fused_tensors_come_back_exactly(tmp_path, monkeypatch, name):
    # w_qkv and w_gate_hidden cut into 1000-byte slices: their parts cross slice boundaries mid-run.
    convert_hf2ms(FIXTURES / name, tmp_path / "ms", HF2MSOptions(qkv_concat=True, ckpt_slice_bytes=1000))
    monkeypatch.setattr(payload, "WINDOW", SMALL_WINDOW)
    convert_ms2hf(tmp_path / "ms", tmp_path / "hf")
    back, orig = raw(tmp_path / "hf"), raw(FIXTURES / name)
    orig.pop("lm_head.weight", None)
    assert back == orig


def test_a_tied_lm_head_equal_to_the_embedding_except_its_last_element_is_refused(tmp_path, monkeypatch):
    src = copy(MHA, tmp_path)
    edit_config(src, tie_word_embeddings=True)
    edit_weights(src, lambda state: state.update({"lm_head.weight": state["model.embed_tokens.weight"].clone()}))
    monkeypatch.setattr(payload, "WINDOW", SMALL_WINDOW)
    convert_hf2ms(src, tmp_path / "equal", HF2MSOptions())  # equal twins: the copy is dropped

    def nudge_last(state):
        state["lm_head.weight"].view(-1)[-1] += 1.0
    edit_weights(src, nudge_last)
    with pytest.raises(ConvertError, match="lm_head.weight differs from model.embed_tokens.weight"):
        convert_hf2ms(src, tmp_path / "differs", HF2MSOptions())


def test_copied_tensors_keep_their_offset_modulo_the_page(tmp_path):
    # The kernel copies page-congruent ranges faster; safetensors allows padding the header.
    from llama_convert.formats.safetensors import read_header
    convert_hf2ms(SRC, tmp_path / "out", HF2MSOptions(format="safetensors"))
    for out_file in sorted((tmp_path / "out").glob("*.safetensors")):
        source, _ = read_header(SRC / out_file.name)
        written, _ = read_header(out_file)
        big = max(source.values(), key=lambda r: r.nbytes)  # plain copies under the same name in MS
        (src_off, _), = big.ranges.segments
        same = [r for r in written.values() if r.ranges.segments[0][1] == big.nbytes and r.dtype == big.dtype]
        assert any(r.ranges.segments[0][0] % PAGE == src_off % PAGE for r in same), out_file.name


@pytest.mark.parametrize("slice_bytes", [None, 10_000], ids=["whole", "sliced"])
def test_padded_ckpt_loads_in_mindspore_exactly_like_an_unpadded_one(tmp_path, ms, slice_bytes):
    from mindspore.train.checkpoint_pb2 import Checkpoint
    src = FIXTURES / "mha-untied-fp32"
    convert_hf2ms(src, tmp_path / "plain", HF2MSOptions(ckpt_slice_bytes=slice_bytes, ckpt_align_min_bytes=1 << 40))
    convert_hf2ms(src, tmp_path / "padded", HF2MSOptions(ckpt_slice_bytes=slice_bytes, ckpt_align_min_bytes=1))
    plain, padded = (tmp_path / d / "model.ckpt" for d in ("plain", "padded"))
    assert padded.stat().st_size > plain.stat().st_size
    parsed = {}
    for name, path in (("plain", plain), ("padded", padded)):
        parsed[name] = Checkpoint()
        parsed[name].ParseFromString(path.read_bytes())  # the real schema: the pad field is unknown to it
    assert parsed["padded"].value == parsed["plain"].value
    a, b = ms.load_checkpoint(str(plain)), ms.load_checkpoint(str(padded))
    assert sorted(a) == sorted(b)
    for name in a:
        np.testing.assert_array_equal(a[name].asnumpy(), b[name].asnumpy())


def test_padded_ckpt_puts_copied_tensors_at_their_source_offset_modulo_the_page(tmp_path):
    from llama_convert.formats import ckpt
    from llama_convert.formats.safetensors import read_header
    src = FIXTURES / "mha-untied-fp32"
    convert_hf2ms(src, tmp_path / "ms", HF2MSOptions(ckpt_align_min_bytes=1))
    source, _ = read_header(src / "model.safetensors")
    written = {r.name: r for r in ckpt.scan(tmp_path / "ms" / "model.ckpt")[0]}
    src_off = source["model.embed_tokens.weight"].ranges.segments[0][0]
    out_off = written["model.tok_embeddings.embedding_weight"].ranges.segments[0][0]
    assert out_off % PAGE == src_off % PAGE
    convert_ms2hf(tmp_path / "ms", tmp_path / "hf")  # and our own reader skips the padding
    assert raw(tmp_path / "hf") == raw(src)


def test_an_output_hashed_while_it_grows_gets_the_sha256_of_the_finished_file(tmp_path):
    import hashlib
    import time
    from llama_convert.output.hashing import Hashes
    path, chunks = tmp_path / "growing.bin", [bytes([i]) * (1000 + 37 * i) for i in range(60)]
    hashes = Hashes(True)
    with open(path, "wb", buffering=0) as out:
        hashes.follow(path)
        for chunk in chunks:  # the follower catches up with the writer and waits, over and over
            out.write(chunk)
            time.sleep(0.001)
    hashes.submit(path)
    assert hashes.record(path)["sha256"] == hashlib.sha256(b"".join(chunks)).hexdigest()
    hashes.close()
