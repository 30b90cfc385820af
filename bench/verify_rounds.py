"""Streamed verify of one shape by several checkouts, rounds interleaved: wall time and peak RSS of
the process tree, one JSON line per run. verify_bench.py runs the 8B shape once per checkout; this
gives it more rounds.

    git archive HEAD llama_convert mappings | tar -x -C /tmp/this
    git archive REV llama_convert mappings | tar -x -C /tmp/base
    .venv/bin/python bench/verify_rounds.py --model llama-3.1-8b-x16 --rounds 2 /tmp/this /tmp/base >> bench/verify_rounds.jsonl

The model comes from bench/make_checkpoints.py (cache); it is converted once (`hf2ms --no-hash`) into
CACHE/MODEL-rounds-ms, kept for the next run (delete it by hand: 15 GiB for the 8B shape).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from make_checkpoints import make  # noqa: E402
from run import CLI, measure  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkouts", nargs="+", type=Path, help="directories holding llama_convert/ and mappings/")
    ap.add_argument("--model", default="llama-3.1-8b-x16")
    ap.add_argument("--cache", type=Path, default=HERE / "cache")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    src = make(args.model, args.cache)
    ms = args.cache / f"{args.model}-rounds-ms"
    if not (ms / "conversion.json").exists():
        subprocess.run([CLI, "hf2ms", str(src), str(ms), "--no-hash", "-q", "--force"], check=True)
    cmds = {}
    for d in args.checkouts:
        boot = (f"import sys; sys.path.insert(0, {str(d.resolve())!r}); sys.argv[0] = 'llama-convert'; "
                "from llama_convert.cli import main; main()")
        cmds[str(d)] = [sys.executable, "-c", boot, "verify", str(src), str(ms), "--stream", "--json"]
    names = list(cmds)
    for r in range(args.rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            wall, peak, code = measure(cmds[name])
            print(json.dumps({"model": args.model, "round": r, "checkout": name, "wall_s": round(wall, 1),
                              "peak_rss_gib": round(peak / 2**30, 3), "exit": code,
                              "at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}), flush=True)


if __name__ == "__main__":
    main()
