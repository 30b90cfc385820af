"""Checkpoint formats llama-convert does not read, recognised so that the user is told what the file is
and what to do, instead of "config.json not found" or a pickle error about a file that is not a pickle.

Each check reads at most a few header bytes: GGUF (llama.cpp), Meta's original consolidated.*.pth with
params.json, and llama2.c's raw .bin.
"""
from __future__ import annotations

import struct
from pathlib import Path

from ..core.errors import ConvertError

GGUF_MAGIC = b"GGUF"
LLAMA2C_MAGIC = 0x616B3432   # "ak42": llama2.c export versions 1 and 2
ZIP_MAGIC = b"PK\x03\x04"    # torch.save since 1.6
PICKLE_PROTO = 0x80          # the legacy torch.save format starts with a pickle


def _head(path: Path, n: int) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except OSError:
        return b""


def gguf(path: Path) -> ConvertError:
    return ConvertError(path, "is a GGUF file (llama.cpp's format), which llama-convert does not read",
                        "convert the HuggingFace checkpoint it was made from (config.json and safetensors); "
                        "GGUF weights are usually quantized, which no conversion can undo")


def meta_original(root: Path) -> ConvertError:
    return ConvertError(root, "is Meta's original checkpoint (consolidated.*.pth and params.json), which "
                        "llama-convert does not read",
                        "convert it to HuggingFace first with transformers' "
                        "`python -m transformers.models.llama.convert_llama_weights_to_hf`, or use the model's "
                        "HuggingFace repository (config.json and safetensors)")


def llama2c(path: Path) -> ConvertError:
    return ConvertError(path, "is a llama2.c checkpoint (raw float32 weights after a small integer header), "
                        "not a PyTorch pickle, and llama-convert does not read it",
                        "export the model.pt it was trained as with llama2.c's `export.py --version -1`, which "
                        "writes a HuggingFace directory, and convert that")


def is_llama2c(path: Path) -> bool:
    """llama2.c's .bin: version 0 is 7 int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size,
    negative when the classifier is not shared, seq_len) and float32 weights; versions 1 and 2 start with
    the magic "ak42". A torch file starts with a zip or a pickle header instead."""
    head = _head(path, 28)
    if len(head) < 28 or head.startswith(ZIP_MAGIC) or head[0] == PICKLE_PROTO:
        return False
    magic, version = struct.unpack("<Ii", head[:8])
    if magic == LLAMA2C_MAGIC:
        return version in (1, 2)
    dim, hidden, layers, heads, kv, vocab, seq = struct.unpack("<7i", head)
    sane = all(0 < v < 1 << 20 for v in (dim, hidden, layers, heads, kv, abs(vocab), seq))
    return sane and dim % heads == 0 and heads % kv == 0 and (path.stat().st_size - 28) % 4 == 0


def recognise_file(path: Path) -> ConvertError | None:
    """The refusal for one file of a format we do not read, or None."""
    if path.suffix == ".gguf" or _head(path, 4) == GGUF_MAGIC:
        return gguf(path)
    if path.suffix == ".bin" and is_llama2c(path):
        return llama2c(path)
    return None


def recognise_dir(root: Path) -> ConvertError | None:
    """The refusal for a directory holding a checkpoint of a format we do not read, or None."""
    if (root / "params.json").is_file() and any(root.glob("consolidated.*.pth")):
        return meta_original(root)
    for path in sorted(root.glob("*.gguf")) + sorted(root.glob("*.bin")):
        if path.is_file():
            found = recognise_file(path)
            if found is not None:
                return found
    return None
