"""How much memory a verify run holds at its peak, estimated from tensor shapes alone (headers).

One function per mode, used by verify to choose its mode and by bulk to admit a verify row.
"""
from __future__ import annotations

import math
import re
from typing import Mapping

GiB = 2**30

# Whole-model mode holds, per parameter: HF's float32 copy, MindFormers' randomly initialised float32
# copy, the loaded checkpoint and its float32 cast (measured: 18.0 GiB for Llama-3.2-1B's 1.24 G
# parameters), plus the two runtimes.
WHOLE_BYTES_PER_PARAM = 16
WHOLE_RUNTIMES = 1 * GiB
# Streamed mode holds one stage per side plus the runtimes (torch, transformers, MindSpore, MindFormers).
# The embedding and the lm_head stage hold their weight in float32 about three times over: read,
# widened, handed to the framework (measured peaks: 3.7 GiB on the 1B shape, 7.3 GiB on the 8B shape).
# A decoder layer stage holds the layer read, in float32, and in float64 for the reference.
STREAMED_RUNTIMES = 3 * GiB // 2
WIDE_STAGE_COPIES = 3
LAYER_BYTES_PER_PARAM = 4 + 4 + 8

_LAYER = re.compile(r"\.layers\.(\d+)\.")


def _shape(t) -> tuple[int, ...]:
    return tuple(getattr(t, "shape", t))


def _largest(tensors: Mapping[str, object]) -> tuple[int, int]:
    """(elements of the largest tensor, parameters of the largest decoder layer)."""
    layers: dict[str, int] = {}
    largest = 0
    for name, t in tensors.items():
        n = math.prod(_shape(t))
        largest = max(largest, n)
        found = _LAYER.search(name)
        if found:
            layers[found.group(1)] = layers.get(found.group(1), 0) + n
    return largest, max(layers.values(), default=0)


def whole_model_estimate(tensors: Mapping[str, object]) -> int:
    """Bytes a whole-model verify holds, from either side's tensors (name -> shape, or anything with .shape)."""
    _, layer = _largest(tensors)
    total = sum(math.prod(_shape(t)) for t in tensors.values())
    return WHOLE_BYTES_PER_PARAM * total + 8 * layer + WHOLE_RUNTIMES


def streamed_estimate(tensors: Mapping[str, object]) -> int:
    """Bytes a streamed verify holds: the runtimes and its largest stage, whatever the model's depth."""
    largest, layer = _largest(tensors)
    return STREAMED_RUNTIMES + max(WIDE_STAGE_COPIES * 4 * largest, LAYER_BYTES_PER_PARAM * layer)
