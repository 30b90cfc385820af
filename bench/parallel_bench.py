"""hf2ms --parallel beside the single-card conversion: wall time, peak RSS and bytes written.

    .venv/bin/python bench/parallel_bench.py [--model llama-3.2-3b] [--rounds 2] [--out bench/parallel_results.json]

The synthetic checkpoint comes from bench/make_checkpoints.py (bench/cache, made under the cache's
flock). Each layout converts into a fresh directory after `sync`, which is measured (run.measure: wall
time, peak RSS of the process tree) and deleted at once: only one output exists at a time. Layouts are
interleaved round by round and the medians reported, as the machine is shared. Hashing is on (the
default), so every byte written is also read back once by sha256.

vocab_emb_dp true (MindFormers' default) keeps the embedding (and lm_head) whole on every card, so the
ranks together hold more bytes than the model; the `vocab_emb_dp=false` layout cuts them too and
writes exactly the model's bytes, which separates the cost of cutting from the cost of the extra bytes.
"""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from make_checkpoints import make  # noqa: E402
from run import CLI, dir_bytes, measure  # noqa: E402

LAYOUTS = [None, "mp=8", "mp=4,pp=2", "mp=8,vocab_emb_dp=false"]


def made(name: str, cache: Path) -> Path:
    with open(cache / ".make.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return make(name, cache)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="llama-3.2-3b")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--format", default="ckpt", choices=["ckpt", "safetensors"])
    ap.add_argument("--no-hash", action="store_true", help="time the cutting and writing alone, without sha256")
    ap.add_argument("--layouts", nargs="+", default=[str(x) for x in LAYOUTS], help="'None' is single-card")
    ap.add_argument("--work", type=Path, default=HERE / "cache" / "work")
    ap.add_argument("--out", type=Path, default=HERE / "parallel_results.json")
    args = ap.parse_args()
    src = made(args.model, HERE / "cache")
    args.work.mkdir(parents=True, exist_ok=True)
    layouts = [None if x == "None" else x for x in args.layouts]
    runs: dict[str, list[tuple[float, int, int]]] = {str(x): [] for x in layouts}
    for r in range(args.rounds):
        for layout in layouts[r % len(layouts):] + layouts[:r % len(layouts)]:
            out = args.work / f"parallel-{os.getpid()}"
            shutil.rmtree(out, ignore_errors=True)
            subprocess.run(["sync"], check=True)
            cmd = [CLI, "hf2ms", str(src), str(out), "--format", args.format, "-q"] + (["--no-hash"] if args.no_hash else [])
            wall, rss, code = measure(cmd + (["--parallel", layout] if layout else []))
            if code:
                raise SystemExit(f"{layout}: exit {code}")
            size = dir_bytes(out)
            shutil.rmtree(out)
            runs[str(layout)].append((wall, rss, size))
            print(f"round {r} {layout or 'single card'}: {wall:.1f} s, peak RSS {rss / 2**20:.0f} MiB, "
                  f"{size / 1e9:.2f} GB written", flush=True)
    base = statistics.median(w for w, _, _ in runs["None"])
    result = {"model": args.model, "format": args.format, "hash": not args.no_hash, "rounds": args.rounds, "host": platform.node(),
              "cpus": os.cpu_count(), "source_bytes": dir_bytes(src), "layouts": {}}
    for layout, rs in runs.items():
        wall = statistics.median(w for w, _, _ in rs)
        fastest = min(w for w, _, _ in rs)
        result["layouts"][layout] = {"seconds": round(wall, 2), "x_single_card": round(wall / base, 2),
                                     "fastest_seconds": round(fastest, 2),
                                     "fastest_x_single_card": round(fastest / min(w for w, _, _ in runs["None"]), 2),
                                     "peak_rss_mib": round(max(m for _, m, _ in rs) / 2**20),
                                     "bytes_written": rs[0][2],
                                     "gb_per_s_written": round(rs[0][2] / wall / 1e9, 2)}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["layouts"], indent=2))


if __name__ == "__main__":
    main()
