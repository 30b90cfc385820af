"""A tensor known from a header: enough to plan with, and a way to fetch its data later."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ..core.dtypes import dtype as _dtype
from .payload import FileRanges, InMemory, Payload

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class TensorRef:
    name: str
    dtype: str
    shape: tuple[int, ...]
    file: Path
    ranges: FileRanges | None = None          # raw bytes sit in `file` (safetensors, ckpt)
    loader: Callable[[], np.ndarray] | None = field(default=None, compare=False)  # e.g. torch .bin

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * _dtype(self.dtype).itemsize

    def payload(self) -> Payload:
        """The bytes as they are, for copying without a change."""
        if self.ranges is not None:
            return self.ranges
        return InMemory(self.read())

    def read(self) -> np.ndarray:
        """The data as a numpy array of the storage dtype (bf16 as uint16), shaped."""
        storage = _dtype(self.dtype).storage
        if self.ranges is not None:
            return self.ranges.read().view(storage).reshape(self.shape)
        assert self.loader is not None
        data = self.loader()
        return (data if data.flags.c_contiguous else data.copy(order="C")).view(storage).reshape(self.shape)
