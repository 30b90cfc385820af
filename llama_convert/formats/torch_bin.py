"""pytorch_model.bin: a pickled state dict, loaded only with weights_only=True and mmap."""
from __future__ import annotations

import re
import warnings
from pathlib import Path

from ..core.dtypes import BY_TORCH
from ..core.errors import ConvertError
from ..core.extras import require
from .files import check_not_lfs_pointer, open_input
from .foreign import is_llama2c, llama2c
from .tensor import TensorRef


def _torch():
    return require("torch", "reading pytorch_model.bin")


def read_bin(path: Path) -> dict[str, TensorRef]:
    path = Path(path)
    with open_input(path, "PyTorch checkpoint") as f:  # refuses FIFOs and devices before torch opens it
        check_not_lfs_pointer(path, f)
    if is_llama2c(path):  # not a pickle at all: torch would call it one with a forbidden instruction
        raise llama2c(path)
    torch = _torch()
    state = _load(torch, path)
    if not isinstance(state, dict):
        raise ConvertError(path, f"is not a state dict: it holds a {type(state).__name__}, not a dict of tensors",
                           "save model.state_dict() with torch.save")
    refs = {}
    for name, t in state.items():
        if not isinstance(name, str):
            raise ConvertError(path, f"state dict key {name!r:.60} ({type(name).__name__}) is not a tensor name",
                               "the file is not a model's state dict")
        if not isinstance(t, torch.Tensor):
            nested = " (nested state dicts are not supported: save the inner one)" if isinstance(t, dict) else ""
            raise ConvertError(path, f"entry {name!r} is not a tensor ({type(t).__name__}){nested}",
                               "the file is not a plain state dict of tensors")
        dt = BY_TORCH.get(str(t.dtype).removeprefix("torch."))
        if dt is None:
            raise ConvertError(path, f"tensor {name!r} has unsupported dtype {t.dtype}")
        refs[name] = TensorRef(name, dt.name, tuple(t.shape), path, loader=_loader(t))
    return refs


def _load(torch, path: Path):
    # torch warns on stderr about pickle protocols; the user gets our one line instead.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as e:
                if "mmap" not in str(e):
                    raise
                # Legacy (pre-zip) torch files cannot be mapped; they load into memory instead.
                return torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise ConvertError(path, "file not found") from None
        except Exception as e:  # torch raises many types for corrupt, truncated or unsafe pickles
            raise _refusal(path, e) from None


def _refusal(path: Path, e: Exception) -> ConvertError:
    text = str(e)
    if "Weights only load failed" in text:
        # torch's message advises re-running with weights_only=False, i.e. running the file's code:
        # never pass that on. Say what the file tried to do instead.
        glob = re.search(r"GLOBAL ([\w.]+)", text)
        what = f" ({glob.group(1)})" if glob else ""
        op = re.search(r"Unsupported operand \d+", text)
        if glob or not op:
            return ConvertError(path, f"cannot load: the file tried to run code or load an object other than "
                                f"tensors{what}, which a safe load refuses",
                                "a state dict holds only tensors; this file may be malicious, do not load it "
                                "with a tool that runs pickled code")
        return ConvertError(path, f"cannot load: the pickle uses an instruction a safe load refuses ({op.group(0)})",
                            "re-save the state dict with a recent torch.save")
    first = (text.strip().splitlines() or [type(e).__name__])[0]
    return ConvertError(path, f"cannot load as a PyTorch state dict: {first[:200]}",
                        "the file is truncated or corrupt, or holds objects other than tensors")


def _loader(t):
    def load():
        # A tensor saved with requires_grad=True carries autograd state; its values are all we read.
        c = t.detach().contiguous()
        # numpy has no bfloat16: hand over the bit pattern.
        if str(c.dtype) == "torch.bfloat16":
            import torch
            c = c.view(torch.int16)
        return c.numpy()
    return load
