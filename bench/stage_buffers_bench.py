"""What streamed verify pays to get one side's weights into float32, stage by stage: every tensor of a
checkpoint read and widened into a new tensor each (verify before issue 24: stages.float32_torch), against
read and widened into buffers reused from stage to stage (stages.StageBuffers). Rounds interleaved, the
fastest reported; the checkpoint is read once first so both ways read from the page cache.

    .venv/bin/python bench/stage_buffers_bench.py [--cache bench/cache] [--model llama-3.2-1b-x16] [--rounds 3]
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from llama_convert.sources.hf import open_hf_dir  # noqa: E402
from llama_convert.verify.stages import StageBuffers, float32_torch  # noqa: E402


def stages(tensors: dict) -> list[list]:
    """The tensors grouped as streamed verify loads them: one group per decoder layer, the rest alone."""
    groups: dict[str, list] = {}
    for name, ref in tensors.items():
        m = re.match(r"model\.layers\.(\d+)\.", name)
        groups.setdefault(f"layer.{m.group(1)}" if m else name, []).append(ref)
    return list(groups.values())


def fresh(groups) -> float:
    start = time.perf_counter()
    for refs in groups:
        held = [float32_torch(r) for r in refs]
        del held
    return time.perf_counter() - start


def reused(groups) -> float:
    start = time.perf_counter()
    buffers = StageBuffers()
    for refs in groups:
        buffers.start(refs)
        held = [buffers.take(r) for r in refs]
        del held
    buffers.release()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, default=HERE / "cache")
    ap.add_argument("--model", default="llama-3.2-1b-x16")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    groups = stages(open_hf_dir(args.cache / args.model).tensors)
    fresh(groups)  # warm the page cache
    times = {"new tensor per weight": [], "reused stage buffers": []}
    for _ in range(args.rounds):
        times["new tensor per weight"].append(fresh(groups))
        times["reused stage buffers"].append(reused(groups))
    for how, ts in times.items():
        print(f"{args.model}: {how}: fastest {min(ts):.2f} s of {len(ts)} ({', '.join(f'{t:.2f}' for t in ts)})")


if __name__ == "__main__":
    main()
