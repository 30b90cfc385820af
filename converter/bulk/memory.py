"""How much memory a row needs, how much the machine (or its cgroup) has, and what fits at once.

Estimates come from the plan (headers only). A conversion streams: its process holds the runtime and a
few tensors. A whole-model verify holds both models in float32 plus two runtimes (torch, MindSpore), and
while loading, each side's checkpoint beside its model: measured 18.0 GiB peak for the 1.24e9 parameters
of the Llama-3.2-1B shape (bench/run.py --verify), 14.3 bytes a parameter over the runtimes.
Both rules live in estimate(), so a cheaper verify (streamed, one layer at a time) changes one function.
"""
from __future__ import annotations

import math

from ..machine import available_memory

GiB = 2**30
CONVERT_RUNTIME = 384 * 2**20      # python, numpy, click, the readers, hash buffers
VERIFY_RUNTIMES = 3 * GiB // 2     # an allowance for torch + transformers + MindSpore + MindFormers
VERIFY_BYTES_PER_PARAM = 16        # four float32 copies: two models, two loaded checkpoints
BUDGET_SHARE = 0.75                # of available memory: the page cache and the driver need the rest


def params_of(plan) -> int:
    return sum(math.prod(t.shape) for t in plan.tensors)


def estimate(plan, phase: str) -> int:
    """Bytes a `convert` or `verify` phase of this plan holds at its peak."""
    if phase == "verify":
        return VERIFY_BYTES_PER_PARAM * params_of(plan) + VERIFY_RUNTIMES
    largest = max((t.nbytes for t in plan.tensors), default=0)
    # A fused or cast tensor may be built in memory from its sources (pickled .bin, no placement): a few copies.
    return CONVERT_RUNTIME + 3 * largest


def default_budget() -> int:
    return int(available_memory() * BUDGET_SHARE)


def gib(n: int) -> str:
    return f"{n / GiB:.2f} GiB"
