"""Dtype names across the formats we touch, and exact casts between them.

numpy has no bfloat16, so bf16 data travels as uint16 bit patterns; casts are done on the bits.
numpy is imported by the casts that need it, not here: a plain bf16 conversion never does.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class DType:
    name: str          # our canonical name, also the MindFormers YAML spelling
    itemsize: int
    safetensors: str   # safetensors header code
    ckpt: str          # MindSpore checkpoint tensor_type
    storage: str       # numpy dtype holding the raw elements
    torch: str         # torch dtype attribute name


_ALL = [
    DType("bfloat16", 2, "BF16", "BFloat16", "uint16", "bfloat16"),
    DType("float16", 2, "F16", "Float16", "float16", "float16"),
    DType("float32", 4, "F32", "Float32", "float32", "float32"),
    DType("float64", 8, "F64", "Float64", "float64", "float64"),
    DType("int8", 1, "I8", "Int8", "int8", "int8"),
    DType("uint8", 1, "U8", "UInt8", "uint8", "uint8"),
    DType("int16", 2, "I16", "Int16", "int16", "int16"),
    DType("int32", 4, "I32", "Int32", "int32", "int32"),
    DType("int64", 8, "I64", "Int64", "int64", "int64"),
    DType("bool", 1, "BOOL", "Bool", "bool", "bool"),
]
BY_NAME = {d.name: d for d in _ALL}
BY_SAFETENSORS = {d.safetensors: d for d in _ALL}
BY_CKPT = {d.ckpt: d for d in _ALL}
BY_TORCH = {d.torch: d for d in _ALL}
FLOATS = ("bfloat16", "float16", "float32")


def dtype(name: str) -> DType:
    return BY_NAME[name]


def _to_float32(data: np.ndarray, src: str) -> np.ndarray:
    import numpy as np
    if src == "bfloat16":
        return (data.astype(np.uint32) << 16).view(np.float32)
    return data.astype(np.float32)


def _bf16_from_float32(x: np.ndarray) -> np.ndarray:
    import numpy as np
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    # Round to nearest, ties to even, on the 16 bits that are dropped.
    rounded = bits + (np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1)))
    out = (rounded >> 16).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():  # keep NaN a NaN: rounding could carry it into infinity
        out[nan] = ((bits[nan] >> 16) | np.uint32(0x0040)).astype(np.uint16)
    return out


def cast(data: np.ndarray, src: str, dst: str) -> np.ndarray:
    """Cast raw storage `data` from dtype `src` to `dst`, rounding to nearest-even."""
    if src == dst:
        return data
    if src not in FLOATS or dst not in FLOATS:
        raise ValueError(f"cannot cast {src} to {dst}")
    wide = _to_float32(data, src)
    if dst == "float32":
        return wide
    if dst == "float16":
        import numpy as np
        with np.errstate(over="ignore"):  # beyond float16's range is inf, as IEEE rounding says
            return wide.astype(np.float16)
    return _bf16_from_float32(wide)


def to_float32(data: np.ndarray, src: str) -> np.ndarray:
    """Values of raw storage `data` as float32 (exact for all our float dtypes)."""
    return _to_float32(data, src)


def cast_bytes(raw: memoryview, src: str, dst: str) -> memoryview:
    """cast() on raw little-endian bytes. bf16 to float32, which every bf16 model's norms take, is
    done on the bytes themselves: the bf16 bits become the high half of the float32, exactly."""
    if (src, dst) == ("bfloat16", "float32"):
        out = bytearray(len(raw) * 2)
        out[2::4] = raw[0::2]
        out[3::4] = raw[1::2]
        return memoryview(out)
    import numpy as np
    return memoryview(np.ascontiguousarray(cast(np.frombuffer(raw, dtype=dtype(src).storage), src, dst))).cast("B")
