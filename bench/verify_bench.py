"""Benchmark `verify`: whole-model against streamed on the 1B and 3B shapes, streamed (and the
conversion) on an 8B shape.

    .venv/bin/python bench/verify_bench.py [--cache bench/cache] [--rounds 3] [--models llama-3.2-1b llama-3.2-3b]
                                           [--big llama-3.1-8b | --no-big] [--keep]

The checkpoints come from bench/make_checkpoints.py (seeded, cached; the 8B one is 15 GiB) and are
converted once with `hf2ms --no-hash` beside them. Each verify runs as a fresh CLI process; wall
time and the peak RSS of its process tree are measured by bench/run.py's poller. The small shapes
run both modes interleaved, round by round, and the fastest round of each is reported, because the
machine is shared and noisy; the load average before each model is recorded with the numbers.
Whole-model mode is skipped (and said to be) where verify's own estimate of it exceeds the memory
available: running it would only summon the OOM killer on a shared machine. The 8B conversion
output is deleted after measuring unless --keep.
Writes bench/verify_results.json and bench/verify_results.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from make_checkpoints import make  # noqa: E402
from run import CLI, measure  # noqa: E402

GIB = 2**30


def converted(src: Path, out: Path) -> tuple[Path, dict | None]:
    """MS_DIR for src, converted once; (path, the conversion's measurement when it ran now)."""
    if (out / "conversion.json").exists():
        return out, None
    shutil.rmtree(out, ignore_errors=True)
    os.sync()
    wall, peak, rc = measure([CLI, "hf2ms", str(src), str(out), "--no-hash"])
    if rc:
        raise SystemExit(f"hf2ms {src} failed")
    return out, {"seconds": wall, "peak_rss_bytes": peak}


def whole_estimate(src: Path) -> int:
    from llama_convert.sources.hf import open_hf_dir
    from llama_convert.verify import whole_model_estimate
    return whole_model_estimate(open_hf_dir(src).tensors)


def available() -> int:
    from llama_convert.core.machine import available_memory
    return available_memory()


def verify_cmd(src: Path, ms_dir: Path, mode: str) -> list[str]:
    return [CLI, "verify", str(src), str(ms_dir), "--stream" if mode == "streamed" else "--no-stream"]


def bench_small(name: str, cache: Path, rounds: int) -> dict:
    src = make(name, cache)
    ms_dir, _ = converted(src, cache / f"{name}-verify-ms")
    estimate, avail = whole_estimate(src), available()
    modes = ["whole", "streamed"] if estimate <= avail else ["streamed"]
    row = {"model": name, "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "load_average": os.getloadavg(), "whole_estimate_bytes": estimate,
           "available_bytes": avail, "runs": {m: [] for m in modes}}
    for r in range(rounds):
        for mode in modes if r % 2 == 0 else modes[::-1]:
            wall, peak, rc = measure(verify_cmd(src, ms_dir, mode))
            row["runs"][mode].append({"seconds": wall, "peak_rss_bytes": peak, "exit": rc})
            print(f"  {name} {mode} round {r + 1}: {wall:.1f} s, {peak / GIB:.2f} GiB, exit {rc}", flush=True)
    return row


def bench_big(name: str, cache: Path, keep: bool) -> dict:
    src = make(name, cache)
    row = {"model": name, "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "load_average": os.getloadavg(), "whole_estimate_bytes": whole_estimate(src),
           "input_bytes": sum(p.stat().st_size for p in src.glob("*.safetensors"))}
    out = cache / f"{name}-verify-ms"
    shutil.rmtree(out, ignore_errors=True)
    _, row["hf2ms"] = converted(src, out)
    print(f"  {name} hf2ms --no-hash: {row['hf2ms']['seconds']:.1f} s, "
          f"{row['hf2ms']['peak_rss_bytes'] / GIB:.2f} GiB", flush=True)
    wall, peak, rc = measure(verify_cmd(src, out, "streamed"))
    row["runs"] = {"streamed": [{"seconds": wall, "peak_rss_bytes": peak, "exit": rc}]}
    print(f"  {name} streamed: {wall:.1f} s, {peak / GIB:.2f} GiB, exit {rc}", flush=True)
    if not keep:
        shutil.rmtree(out, ignore_errors=True)
    return row


def best(runs: list[dict]) -> dict | None:
    ok = [r for r in runs if r["exit"] == 0]
    return min(ok, key=lambda r: r["seconds"]) if ok else None


def table(rows: list[dict]) -> str:
    lines = ["| model | verify whole-model s | peak RSS GiB | verify streamed s | peak RSS GiB | streamed / whole "
             "| hf2ms --no-hash s, RSS GiB | load avg |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        whole = best(row["runs"].get("whole", []))
        streamed = best(row["runs"]["streamed"])
        if whole:
            w = f"{whole['seconds']:.0f} | {whole['peak_rss_bytes'] / GIB:.1f}"
        else:
            w = f"not run: needs ~{row['whole_estimate_bytes'] / GIB:.0f} GiB | -"
        s = f"{streamed['seconds']:.0f} | {streamed['peak_rss_bytes'] / GIB:.1f}" if streamed else "failed | -"
        ratio = f"{streamed['seconds'] / whole['seconds']:.2f}" if whole and streamed else "-"
        conv = row.get("hf2ms")
        c = f"{conv['seconds']:.0f} s, {conv['peak_rss_bytes'] / GIB:.2f}" if conv else "-"
        load = "/".join(f"{x:.1f}" for x in row["load_average"])
        lines.append(f"| {row['model']} | {w} | {s} | {ratio} | {c} | {load} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, default=HERE / "cache")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--models", nargs="*", default=["llama-3.2-1b", "llama-3.2-3b"])
    ap.add_argument("--big", default="llama-3.1-8b")
    ap.add_argument("--no-big", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the 8B conversion output")
    args = ap.parse_args()
    rows = [bench_small(name, args.cache, args.rounds) for name in args.models]
    if not args.no_big:
        rows.append(bench_big(args.big, args.cache, args.keep))
    # Rows of models not measured in this run are kept from earlier runs (each row has its own load
    # average and time), so the 8B shape and the small ones can be measured separately.
    results = HERE / "verify_results.json"
    earlier = json.loads(results.read_text())["rows"] if results.exists() else []
    measured = {row["model"] for row in rows}
    order = ["llama-3.2-1b", "llama-3.2-3b", args.big]
    rows = sorted([r for r in earlier if r["model"] not in measured] + rows,
                  key=lambda r: order.index(r["model"]) if r["model"] in order else len(order))
    header = (f"Measured on {platform.node()} "
              f"{platform.machine()}, {os.cpu_count()} cores, {os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / GIB:.0f} GiB RAM, "
              f"verify on CPU (float32), batch 2 x 64, fastest of {args.rounds} interleaved rounds for the small shapes.")
    text = header + "\n\n" + table(rows) + "\n"
    results.write_text(json.dumps({"header": header, "rows": rows}, indent=2))
    (HERE / "verify_results.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
