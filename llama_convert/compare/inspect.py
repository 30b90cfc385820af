"""inspect: the tensors of a checkpoint of either side, from headers alone."""
from __future__ import annotations

from pathlib import Path

from ..sources.detect import read_headers


def inspect(path: Path) -> dict:
    """Names, shapes, dtypes and sizes of the tensors of a HF or MindSpore directory or one checkpoint file."""
    side, refs = read_headers(path)
    by_dtype: dict[str, int] = {}
    for r in refs:
        by_dtype[r.dtype] = by_dtype.get(r.dtype, 0) + r.nbytes
    return {"path": str(path), "side": side,
            "tensors": [{"name": r.name, "shape": list(r.shape), "dtype": r.dtype, "bytes": r.nbytes} for r in refs],
            "tensor_count": len(refs), "total_bytes": sum(r.nbytes for r in refs), "bytes_by_dtype": by_dtype}
