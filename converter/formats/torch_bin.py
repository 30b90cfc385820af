"""pytorch_model.bin: a pickled state dict, loaded only with weights_only=True and mmap."""
from __future__ import annotations

from pathlib import Path

from ..dtypes import BY_TORCH
from ..errors import ConvertError
from .tensor import TensorRef


def _torch():
    try:
        import torch
    except ImportError:
        raise ConvertError(None, "reading pytorch_model.bin needs PyTorch, which is not installed",
                           "pip install torch, or convert the checkpoint to safetensors first") from None
    return torch


def read_bin(path: Path) -> dict[str, TensorRef]:
    torch = _torch()
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            # Legacy (pre-zip) torch files cannot be mapped; they load into memory instead.
            state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ConvertError(path, "file not found") from None
    except Exception as e:  # torch raises many types for corrupt, truncated or unsafe pickles
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConvertError(path, f"cannot load as a PyTorch state dict: {first[:200]}",
                           "the file is truncated or corrupt, or holds objects other than tensors") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConvertError(path, "is not a state dict of tensors")
    refs = {}
    for name, t in state.items():
        dt = BY_TORCH.get(str(t.dtype).removeprefix("torch."))
        if dt is None:
            raise ConvertError(path, f"tensor {name!r} has unsupported dtype {t.dtype}")
        refs[name] = TensorRef(name, dt.name, tuple(t.shape), path, loader=_loader(t))
    return refs


def _loader(t):
    def load():
        c = t.contiguous()
        # numpy has no bfloat16: hand over the bit pattern.
        if str(c.dtype) == "torch.bfloat16":
            import torch
            c = c.view(torch.int16)
        return c.numpy()
    return load
