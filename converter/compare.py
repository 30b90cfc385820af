"""inspect and diff: look at checkpoints of either side, and compare them through the mapping."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .dtypes import dtype as dtype_info, to_float32
from .errors import ConvertError
from .formats import ckpt, safetensors as st
from .formats.files import check_regular
from .formats.payload import read_all
from .formats.tensor import TensorRef
from .formats.torch_bin import read_bin
from .hf_source import open_hf_dir
from .mapping import yaml_names
from .ms_source import ms_checkpoint_files, open_ms_dir, read_ms_headers
from .options import HF2MSOptions, MS2HFOptions
from .plan import build_ms2hf_plan, build_plan


def _is_ms(path: Path) -> bool:
    root = path.parent if path.is_file() else path
    if path.is_file() and path.suffix == ".ckpt":
        return True
    return any((root / n).exists() for n in yaml_names()) or (path.is_dir() and any(path.glob("*.ckpt")))


def read_headers(path: Path) -> tuple[str, list[TensorRef]]:
    """('hf'|'ms', tensors) of a HF directory, a MindSpore directory, or one checkpoint file."""
    path = Path(path)
    if not path.exists():
        raise ConvertError(path, "not found")
    if not path.is_dir():
        check_regular(path, "checkpoint file")  # a FIFO or device is refused for what it is
    side = "ms" if _is_ms(path) else "hf"
    if path.is_file():
        if path.suffix == ".ckpt":
            return side, ckpt.scan(path)[0]
        if path.suffix == ".safetensors":
            return side, list(st.read_header(path)[0].values())
        if path.suffix == ".bin":
            return side, list(read_bin(path).values())
        raise ConvertError(path, "unknown checkpoint type", "expected .safetensors, .ckpt or .bin")
    if side == "hf":
        return side, list(open_hf_dir(path).tensors.values())
    return side, list(read_ms_headers(ms_checkpoint_files(path))[0].values())


def inspect(path: Path) -> dict:
    side, refs = read_headers(path)
    by_dtype: dict[str, int] = {}
    for r in refs:
        by_dtype[r.dtype] = by_dtype.get(r.dtype, 0) + r.nbytes
    return {"path": str(path), "side": side,
            "tensors": [{"name": r.name, "shape": list(r.shape), "dtype": r.dtype, "bytes": r.nbytes} for r in refs],
            "tensor_count": len(refs), "total_bytes": sum(r.nbytes for r in refs), "bytes_by_dtype": by_dtype}


# ---------------------------------------------------------------------------- diff

@dataclass
class View:
    """A checkpoint seen with HF names: name -> (shape, dtype, loader of float32 values)."""
    side: str
    tensors: dict[str, tuple[tuple[int, ...], str, Callable[[], np.ndarray]]]


def hf_view(path: Path) -> View:
    """Either side through its table: a MindSpore checkpoint read backward into HF tensors, a HF one as
    the tensors its conversion would use (skipped buffers and tied twins left out)."""
    from .execute import Materializer
    path = Path(path)
    if _is_ms(path):
        plan = build_ms2hf_plan(open_ms_dir(path), MS2HFOptions())
        make = Materializer(plan)
        tensors = {pt.name: (pt.shape, pt.dtype, _loader(make, pt)) for pt in plan.tensors}
        return View("ms", tensors)
    plan = build_plan(open_hf_dir(path), HF2MSOptions())
    left_out = {s["name"] for s in plan.skipped}
    tensors = {n: (r.shape, r.dtype, _ref_loader(r)) for n, r in plan.source.tensors.items() if n not in left_out}
    return View("hf", tensors)


def _loader(make, pt):
    def load() -> np.ndarray:
        payload = make(pt)
        raw = read_all(payload)
        return to_float32(raw.view(dtype_info(pt.dtype).storage), pt.dtype)
    return load


def _ref_loader(ref: TensorRef):
    return lambda: to_float32(ref.read().reshape(-1), ref.dtype)


def diff(a: Path, b: Path, atol: float = 0.0) -> dict:
    va, vb = hf_view(a), hf_view(b)
    only_a = sorted(set(va.tensors) - set(vb.tensors))
    only_b = sorted(set(vb.tensors) - set(va.tensors))
    rows, differ = [], bool(only_a or only_b)
    for name in [n for n in va.tensors if n in vb.tensors]:
        (sa, da, la), (sb, db, lb) = va.tensors[name], vb.tensors[name]
        row = {"name": name, "shape_a": list(sa), "shape_b": list(sb), "dtype_a": da, "dtype_b": db}
        if sa != sb:
            row["max_abs_diff"] = None
            differ = True
        else:
            d = float(np.max(np.abs(la().astype(np.float64) - lb().astype(np.float64)))) if np.prod(sa) else 0.0
            row["max_abs_diff"] = d
            differ |= d > atol
        differ |= da != db
        rows.append(row)
    return {"a": str(a), "b": str(b), "side_a": va.side, "side_b": vb.side, "same": not differ,
            "only_in_a": only_a, "only_in_b": only_b, "tensors": rows, "atol": atol}
