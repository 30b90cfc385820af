"""Plant one float32 bit pattern into a copy of a checkpoint: the faults the verdict tests use.

Values are planted as bits, so a signalling NaN or a negative zero arrives exactly as written.
Only float32 safetensors are edited (the fp32 fixtures, and MindSpore output written with
format="safetensors"); the edit goes through the reference safetensors library.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

BITS = {"nan": 0x7FC00000, "snan": 0x7F800001, "+inf": 0x7F800000, "-inf": 0xFF800000,
        "-0": 0x80000000, "+0": 0x00000000}

# The same weight seen from each side, one per stage of the forward pass (an untied model).
STAGE_TENSORS = {
    "embedding": ("model.embed_tokens.weight", "model.tok_embeddings.embedding_weight"),
    "layer.1": ("model.layers.1.mlp.down_proj.weight", "model.layers.1.feed_forward.w2.weight"),
    "final_norm": ("model.norm.weight", "model.norm_out.weight"),
    "lm_head": ("lm_head.weight", "lm_head.weight"),
}


def file_holding(directory: Path, name: str) -> Path:
    for index in (directory / "model.safetensors.index.json", directory / "param_name_map.json"):
        if index.exists():
            return directory / json.loads(index.read_text())["weight_map"][name]
    return directory / "model.safetensors"


def plant(directory: Path, name: str, index: tuple[int, ...], bits: int) -> None:
    """Set tensor `name` at `index` to the float32 with these bits, in place (the directory is a copy)."""
    path = file_holding(directory, name)
    with safe_open(path, "np") as f:
        metadata = f.metadata()
    tensors = load_file(path)
    assert tensors[name].dtype == np.float32, f"{name} is {tensors[name].dtype}: plant into float32 only"
    tensors[name].view(np.uint32)[index] = bits
    path.chmod(0o644)
    save_file(tensors, path, metadata=metadata)
