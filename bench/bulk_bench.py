"""A bulk run of 8 copies of the Llama-3.2-1B shape: `bulk --jobs 1`, `bulk --jobs 2` and a shell loop over
`hf2ms`, for throughput (GB/s of input converted) and peak memory (RSS summed over the process tree).

    .venv/bin/python bench/bulk_bench.py [--cache bench/cache] [--rounds 3] [--copies 8]

The 8 sources are hard links of one model directory (no extra disk; after the first read every copy
comes from the page cache, so this measures the tools, not the disk). Outputs, report and journal are
deleted before every command, then `sync`, so no command pays for another's dirty pages. Commands are
interleaved round by round; the fastest round of each is reported (the machine is shared and noisy).
Writes bench/bulk_results.json and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run import CLI, dir_bytes, measure  # noqa: E402  (the same process-tree RSS poller as bench/run.py)

MODEL = "llama-3.2-1b"


def link_copies(model: Path, work: Path, copies: int, sub: str = "src", copied: tuple[str, ...] = ()) -> list[Path]:
    """work/sub/m0, m1, ...: hard links of model's files (the names in `copied` are real copies);
    made once, reused by later runs."""
    srcs = []
    for i in range(copies):
        dst = work / sub / f"m{i}"
        if not dst.exists():
            dst.mkdir(parents=True)
            for f in model.iterdir():
                if f.name in copied:
                    shutil.copyfile(f, dst / f.name)
                else:
                    os.link(f, dst / f.name)
        srcs.append(dst)
    return srcs


def commands(srcs: list[Path], work: Path) -> dict[str, list[str]]:
    manifest = work / "bulk.jsonl"
    manifest.write_text("".join(json.dumps({"src": str(s), "out": f"out/{s.name}"}) + "\n" for s in srcs))
    loop = "; ".join(f"{CLI} hf2ms {s} {work / 'out' / s.name} || exit 1" for s in srcs)
    return {
        "shell loop over hf2ms": ["bash", "-c", f"mkdir -p {work / 'out'}; {loop}"],
        "bulk --jobs 1": [CLI, "bulk", str(manifest), "--jobs", "1"],
        "bulk --jobs 2": [CLI, "bulk", str(manifest), "--jobs", "2"],
    }


def clean(work: Path) -> None:
    shutil.rmtree(work / "out", ignore_errors=True)
    for f in work.glob("bulk-report.json*"):
        f.unlink()
    subprocess.run(["sync"], check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, default=HERE / "cache")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--copies", type=int, default=8)
    args = ap.parse_args()
    subprocess.run([sys.executable, str(HERE / "make_checkpoints.py"), "--cache", str(args.cache), "--models", MODEL],
                   check=True)
    model = args.cache / MODEL
    work = args.cache / "bulk-bench"
    srcs = link_copies(model, work, args.copies)
    total = dir_bytes(model) * args.copies
    cmds = commands(srcs, work)
    runs: dict[str, list[tuple[float, int]]] = {name: [] for name in cmds}
    for r in range(args.rounds):
        for name, cmd in cmds.items():
            clean(work)
            wall, peak, code = measure(cmd)
            if code:
                raise SystemExit(f"{name} failed (exit {code})")
            runs[name].append((wall, peak))
            print(f"round {r + 1}: {name}: {wall:.1f} s, peak {peak / 2**20:.0f} MiB", file=sys.stderr)
    clean(work)
    base = min(w for w, _ in runs["shell loop over hf2ms"])
    rows = []
    for name, samples in runs.items():
        wall = min(w for w, _ in samples)
        rows.append({"command": name, "seconds": round(wall, 2), "gb_per_s": round(total / wall / 1e9, 2),
                     "x_shell_loop": round(base / wall, 2), "peak_rss_mib": round(max(p for _, p in samples) / 2**20)})
    result = {"measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "host": platform.node(),
              "cpus": os.cpu_count(), "copies": args.copies, "input_bytes": total, "rounds": args.rounds, "rows": rows}
    (HERE / "bulk_results.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"{args.copies} x {MODEL} ({total / 1e9:.1f} GB of input), fastest of {args.rounds} interleaved rounds, "
          f"{os.cpu_count()} cores")
    print("| command | seconds | GB/s | x shell loop | peak RSS MiB |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['command']} | {r['seconds']} | {r['gb_per_s']} | {r['x_shell_loop']} | {r['peak_rss_mib']} |")


if __name__ == "__main__":
    main()
