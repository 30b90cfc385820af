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


# NaN payloads. A float conversion done by the hardware (F16C, AVX-512, SSE's float32 -> float64)
# quiets a signalling NaN: 0x7f81 would come back as 0x7fc1, and a round trip that promises the
# same bytes would change them. So NaNs are widened and narrowed on their bits: the payload moves
# to the high end of the wider mantissa and back, and the quiet bit is never touched. Every other
# value goes through numpy's conversion, which is exact when widening and rounds to nearest-even
# when narrowing. (numpy 1.26 converts float16 in software and would keep the payload; a build that
# uses the hardware would not, and these functions do not depend on which one is installed.)
#                 bits, exponent mask, mantissa bits, quiet bit
_LAYOUT = {"bfloat16": (16, 0x7F80, 7, 0x40), "float16": (16, 0x7C00, 10, 0x200),
           "float32": (32, 0x7F800000, 23, 0x400000), "float64": (64, 0x7FF0000000000000, 52, 1 << 51)}
_UINT = {16: "uint16", 32: "uint32", 64: "uint64"}


def _nan_mask(bits: np.ndarray, name: str) -> np.ndarray:
    import numpy as np
    width, exp, mant, _ = _LAYOUT[name]
    u = np.dtype(_UINT[width]).type
    return ((bits & u(exp)) == u(exp)) & ((bits & u((1 << mant) - 1)) != 0)


def _move_nans(src_bits: np.ndarray, src: str, out_bits: np.ndarray, dst: str) -> None:
    """Write into out_bits the NaNs of src_bits re-encoded from src's layout to dst's, on the bits.
    Narrowing keeps the payload's high bits; a NaN whose kept bits would all be zero (and so read
    as infinity) gets the quiet bit."""
    import numpy as np
    nan = _nan_mask(src_bits, src)
    if not nan.any():
        return
    (sw, _, sm, _), (dw, dexp, dm, dquiet) = _LAYOUT[src], _LAYOUT[dst]
    bits = src_bits[nan].astype(np.uint64)
    sign = (bits >> np.uint64(sw - 1)) << np.uint64(dw - 1)
    payload = bits & np.uint64((1 << sm) - 1)
    payload = payload << np.uint64(dm - sm) if dm >= sm else payload >> np.uint64(sm - dm)
    payload[payload == 0] = dquiet
    out_bits[nan] = (sign | np.uint64(dexp) | payload).astype(out_bits.dtype)


def _bits(data: np.ndarray, name: str) -> np.ndarray:
    return data.view(_UINT[_LAYOUT[name][0]])


def widen(data: np.ndarray, src: str, dst: str = "float32") -> np.ndarray:
    """Values of raw storage `data` (dtype `src`) in the wider float dtype `dst`, exactly: every
    value, the sign of zero and every NaN's payload bits (a signalling NaN stays signalling)."""
    import numpy as np
    if src == dst:
        return data
    if src == "bfloat16":  # its bits are the high half of float32's
        wide = (data.astype(np.uint32) << 16).view(np.float32)
        return wide if dst == "float32" else widen(wide, "float32", dst)
    if _LAYOUT[src][0] >= _LAYOUT[dst][0] or dst not in ("float32", "float64"):
        raise ValueError(f"{src} to {dst} is not a widening")
    with np.errstate(invalid="ignore"):  # a signalling NaN makes the hardware complain; it is mended below
        out = data.astype(dst)
    _move_nans(_bits(data, src), src, _bits(out, dst), dst)
    return out


def _bf16_from_float32(x: np.ndarray) -> np.ndarray:
    import numpy as np
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    # Round to nearest, ties to even, on the 16 bits that are dropped.
    rounded = bits + (np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1)))
    out = (rounded >> 16).astype(np.uint16)
    _move_nans(bits, "float32", out, "bfloat16")  # rounding could carry a NaN into infinity
    return out


def _f16_from_float32(x: np.ndarray) -> np.ndarray:
    import numpy as np
    x = np.ascontiguousarray(x, dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore"):  # beyond float16's range is inf, as IEEE rounding says
        out = x.astype(np.float16)
    _move_nans(x.view(np.uint32), "float32", out.view(np.uint16), "float16")
    return out


def cast(data: np.ndarray, src: str, dst: str) -> np.ndarray:
    """Cast raw storage `data` from dtype `src` to `dst`: exact when widening, rounding to
    nearest-even when narrowing; NaNs keep their payload bits either way (see _move_nans)."""
    if src == dst:
        return data
    if src not in FLOATS or dst not in FLOATS:
        raise ValueError(f"cannot cast {src} to {dst}")
    wide = widen(data, src, "float32")
    if dst == "float32":
        return wide
    return _f16_from_float32(wide) if dst == "float16" else _bf16_from_float32(wide)


def to_float32(data: np.ndarray, src: str) -> np.ndarray:
    """Values of raw storage `data` of a float dtype no wider than float32, as float32, exactly."""
    return widen(data, src, "float32")


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
