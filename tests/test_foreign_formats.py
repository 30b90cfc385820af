"""Checkpoint formats llama-convert does not read are named, with what to do: one line, exit 2."""
from __future__ import annotations

import shutil
import struct
from pathlib import Path

import pytest

from conftest import FIXTURES, REAL_MODELS, assert_rejected, refused, run_cli

LLAMA2C = REAL_MODELS / "stories260K-hf-f32-derived/original-llama2c"   # Karpathy's own stories260K.bin


def gguf_file(path: Path) -> Path:
    # GGUF v3 header: magic, version, tensor count, metadata count (llama.cpp's gguf.h)
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 0))
    return path


def test_a_gguf_directory_is_named_as_gguf(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    gguf_file(src / "llama-3.2-1b-q4_k_m.gguf")
    assert_rejected(tmp_path, src, "llama-3.2-1b-q4_k_m.gguf: is a GGUF file (llama.cpp's format)",
                    "convert the HuggingFace checkpoint it was made from")


def test_a_gguf_file_is_named_by_every_command(tmp_path):
    path = gguf_file(tmp_path / "model.gguf")
    assert_rejected(tmp_path, path, f"{path}: is a GGUF file")
    refused(run_cli("inspect", path), f"{path}: is a GGUF file")


def test_metas_original_checkpoint_is_named_with_the_converter_to_use(tmp_path):
    torch = pytest.importorskip("torch")
    src = tmp_path / "Llama-3.2-1B-original"
    src.mkdir()
    (src / "params.json").write_text('{"dim": 64, "n_layers": 1, "n_heads": 4, "vocab_size": 256}')
    torch.save({"tok_embeddings.weight": torch.zeros(4, 4)}, src / "consolidated.00.pth")
    (src / "tokenizer.model").write_bytes(b"\0")
    assert_rejected(tmp_path, src, f"{src}: is Meta's original checkpoint (consolidated.*.pth and params.json)",
                    "convert_llama_weights_to_hf")


@pytest.mark.skipif(not LLAMA2C.exists(), reason="shared/ not beside the checkout")
def test_a_llama2c_bin_is_not_called_a_pickle(tmp_path):
    src = tmp_path / "stories"
    shutil.copytree(LLAMA2C, src)
    needles = ("is a llama2.c checkpoint", "not a PyTorch pickle", "export.py --version -1")
    assert_rejected(tmp_path, src, f"{src / 'stories260K.bin'}:", *needles)
    refused(run_cli("inspect", src / "stories260K.bin"), *needles, absent=("instruction",))
    # named pytorch_model.bin beside a config.json, it still is what it is
    shutil.copy(FIXTURES / "mha-untied-fp32/config.json", src / "config.json")
    (src / "stories260K.bin").rename(src / "pytorch_model.bin")
    assert_rejected(tmp_path, src, f"{src / 'pytorch_model.bin'}:", *needles)
