"""How much memory a row needs, how much the machine (or its cgroup) has, and what fits at once.

Estimates come from the plan (headers only). A conversion streams: its process holds the runtime and a
few tensors. Bulk runs verify streamed (`verify --stream`: the same verdicts as whole-model mode, tested,
and faster), whose footprint verify itself estimates (verify.memory: the runtimes and its largest stage).
A whole-model verify would need 16 bytes a parameter, which rules out the 8B-70B models bulk is for.
"""
from __future__ import annotations

from ..core.machine import available_memory
from ..verify.memory import streamed_estimate

GiB = 2**30
CONVERT_RUNTIME = 384 * 2**20      # python, numpy, click, the readers, hash buffers
BUDGET_SHARE = 0.75                # of available memory: the page cache and the driver need the rest


def estimate(plan, phase: str) -> int:
    """Bytes a `convert` or `verify` phase of this plan holds at its peak."""
    if phase == "verify":
        return streamed_estimate({t.name: t.shape for t in plan.tensors})
    largest = max((t.nbytes for t in plan.tensors), default=0)
    # A fused or cast tensor may be built in memory from its sources (pickled .bin, no placement): a few copies.
    return CONVERT_RUNTIME + 3 * largest


def default_budget() -> int:
    return int(available_memory() * BUDGET_SHARE)
