"""A tensor known from a header: enough to plan with, and a way to fetch its data later."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ..core.dtypes import dtype as _dtype
from .payload import FileRanges, InMemory, Payload, Scatter, read_all

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
    pieces: Scatter | None = None             # assembled from several files (the slices of several ranks)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * _dtype(self.dtype).itemsize

    def payload(self) -> Payload:
        """The bytes as they are, for copying without a change."""
        if self.stored is not None:
            return self.stored
        return InMemory(self.read())

    @property
    def stored(self) -> FileRanges | Scatter | None:
        """Where the raw bytes sit on disk, if they do (in one file or assembled from several)."""
        return self.ranges if self.ranges is not None else self.pieces

    @property
    def offset(self) -> int:
        """Where the tensor's first byte sits in `file` (0 when it is not on disk as it is)."""
        if self.ranges is not None and self.ranges.segments:
            return self.ranges.segments[0][0]
        if self.pieces is not None and self.pieces.runs and self.pieces.runs[0].file_off:
            return self.pieces.runs[0].file_off[0]
        return 0

    def read(self) -> np.ndarray:
        """The data as a numpy array of the storage dtype (bf16 as uint16), shaped."""
        storage = _dtype(self.dtype).storage
        if self.stored is not None:
            return read_all(self.stored).view(storage).reshape(self.shape)
        assert self.loader is not None
        data = self.loader()
        return (data if data.flags.c_contiguous else data.copy(order="C")).view(storage).reshape(self.shape)
