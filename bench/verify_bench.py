"""Benchmark `verify` on model shapes with a trained model's logits: its verdict numbers (distance from
the float64 reference, the float32 noise, their ratio), its time and memory, whole-model against
streamed, and against an earlier version's verify (the fixed-tolerance gate) on the same shapes.

    .venv/bin/python bench/verify_bench.py [--cache bench/cache] [--rounds 2]
        [--models llama-3.2-1b-x16 llama-3.2-3b-x16] [--big llama-3.1-8b-x16 | --no-big]
        [--baseline DIR] [--keep] [--no-whole] [--out verify_results]

The checkpoints come from bench/make_checkpoints.py (seeded, cached; NAME-x16 has its embedding and
lm_head scaled by 16, so logits have a trained model's size; the 8B one is 15 GiB) and are converted
once with `hf2ms --no-hash` beside them. Each verify runs as a fresh CLI process with --json; wall
time and the peak RSS of its process tree are measured as bench/run.py does. The small shapes run
their modes interleaved, round by round, and the fastest round of each is reported, because the
machine is shared and noisy; the load average before each model is recorded with the numbers.
Whole-model mode is skipped (and said to be) where verify's own estimate of it exceeds the memory
available. --baseline DIR times the verify of another checkout (e.g. `git archive main converter
mappings | tar -x -C DIR`: the fixed 1e-4 gate) streamed on the same converted model, interleaved;
its exit status is its verdict, recorded. The 8B conversion output is deleted after unless --keep.
Every run's CPU seconds (user + sys) are recorded beside its wall seconds: on a shared machine they
carry much less of the other processes' load. With --baseline a second table sets the two side by
side and says whether every reported number is the same in every run of both.
Writes bench/verify_results.json and bench/verify_results.md (--out NAME: bench/NAME.json, .md).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

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


def run_verify(cmd: list[str]) -> dict:
    """One verify process: seconds, peak RSS of its tree, exit status, and its JSON report (if any)."""
    with tempfile.NamedTemporaryFile("w+", suffix=".json") as out:
        start, peak = time.perf_counter(), 0
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.DEVNULL)
        root = psutil.Process(proc.pid)
        while True:
            # wait4 reaps it with its CPU time (user + sys, its waited-for children included): on this
            # shared machine the wall seconds carry the other engineers' load, the CPU seconds much less.
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            try:
                peak = max(peak, sum(p.memory_info().rss for p in [root] + root.children(recursive=True)
                                     if p.is_running()))
            except psutil.Error:
                pass
            time.sleep(0.01)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        try:
            report = json.loads(out.read())
        except ValueError:
            report = None
    run = {"seconds": wall, "cpu_seconds": usage.ru_utime + usage.ru_stime, "peak_rss_bytes": peak,
           "exit": proc.returncode}
    if report:
        worst = max((r for r in report.get("layers") or [] if isinstance(r.get("ratio"), (int, float))),
                    key=lambda r: r["ratio"], default=None)
        run |= {k: report.get(k) for k in ("passed", "max_abs_diff", "logits_distance", "logits_noise", "logits_ratio",
                                             "reference_seconds", "first_divergent_layer", "failures")}
        run["worst_place"] = worst and {"place": worst["place"], "ratio": worst["ratio"]}
        run["layers"] = report.get("layers")
    return run


def verify_cmd(src: Path, ms_dir: Path, mode: str, baseline: Path | None = None) -> list[str]:
    args = ["verify", str(src), str(ms_dir), "--stream" if mode != "whole" else "--no-stream", "--json"]
    if mode == "baseline":
        # the package of that revision: converter/ before it became llama_convert/
        package = "llama_convert" if (baseline / "llama_convert").is_dir() else "converter"
        boot = (f"import sys; sys.path.insert(0, {str(baseline)!r}); sys.argv[0] = 'llama-convert'; "
                f"from {package}.cli import main; main()")
        return [sys.executable, "-c", boot, *args]
    return [CLI, *args]


def bench_model(name: str, cache: Path, rounds: int, baseline: Path | None, big: bool, keep: bool,
                whole: bool = True) -> dict:
    src = make(name, cache)
    out = cache / f"{name}-verify-ms"
    if big:
        shutil.rmtree(out, ignore_errors=True)
    ms_dir, conversion = converted(src, out)
    estimate, avail = whole_estimate(src), available()
    modes = (["whole"] if whole and estimate <= avail and not big else []) + ["streamed"] + (["baseline"] if baseline else [])
    row = {"model": name, "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "load_average": os.getloadavg(), "whole_estimate_bytes": estimate, "available_bytes": avail,
           "hf2ms": conversion if big else None, "runs": {m: [] for m in modes}}
    for r in range(1 if big else rounds):
        for mode in modes if r % 2 == 0 else modes[::-1]:
            run = run_verify(verify_cmd(src, ms_dir, mode, baseline))
            row["runs"][mode].append(run)
            print(f"  {name} {mode} round {r + 1}: {run['seconds']:.1f} s, CPU {run['cpu_seconds']:.1f} s, "
                  f"{run['peak_rss_bytes'] / GIB:.2f} GiB, "
                  f"exit {run['exit']}, logits ratio {run.get('logits_ratio')}", flush=True)
    if big and not keep:
        shutil.rmtree(out, ignore_errors=True)
    return row


def best(runs: list[dict], verdicts=(0,)) -> dict | None:
    ok = [r for r in runs if r["exit"] in verdicts]
    return min(ok, key=lambda r: r["seconds"]) if ok else None


def _f(x, spec: str) -> str:
    return format(x, spec) if isinstance(x, (int, float)) else "-"


def table(rows: list[dict]) -> str:
    lines = ["| model | logits distance | noise | ratio | worst stage (ratio) | max_abs_diff vs HF f32 | verdict "
             "| streamed s | peak RSS GiB | of which float64 reference s | baseline streamed s, RSS GiB, exit "
             "| whole-model s, RSS GiB | load avg |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        s = best(row["runs"]["streamed"], (0, 1))
        whole = best(row["runs"].get("whole", []), (0, 1))
        base = best(row["runs"].get("baseline", []), (0, 1))
        worst = s and s.get("worst_place")
        w = f"{whole['seconds']:.0f}, {whole['peak_rss_bytes'] / GIB:.1f}" if whole else \
            (f"not run: needs ~{row['whole_estimate_bytes'] / GIB:.0f} GiB"
             if row["whole_estimate_bytes"] > row["available_bytes"] else "not run")
        b = f"{base['seconds']:.0f}, {base['peak_rss_bytes'] / GIB:.1f}, {base['exit']}" if base else "-"
        load = "/".join(f"{x:.1f}" for x in row["load_average"])
        if not s:
            lines.append(f"| {row['model']} | failed | | | | | | | | | {b} | {w} | {load} |")
            continue
        lines.append(f"| {row['model']} | {_f(s.get('logits_distance'), '.2e')} | {_f(s.get('logits_noise'), '.2e')} "
                     f"| {_f(s.get('logits_ratio'), '.2f')} | {worst['place'] if worst else '-'} "
                     f"({_f(worst and worst['ratio'], '.2f')}) | {_f(s.get('max_abs_diff'), '.2e')} "
                     f"| {'PASS' if s['exit'] == 0 else 'FAIL'} | {s['seconds']:.0f} | {s['peak_rss_bytes'] / GIB:.1f} "
                     f"| {_f(s.get('reference_seconds'), '.0f')} | {b} | {w} | {load} |")
    return "\n".join(lines)


_NUMBERS = ("passed", "max_abs_diff", "logits_distance", "logits_noise", "logits_ratio", "first_divergent_layer",
            "failures", "layers")


def same_numbers(a: dict, b: dict) -> bool:
    """Whether two verify runs reported the same verdict and every number bit for bit (times aside)."""
    return all(a.get(k) == b.get(k) for k in _NUMBERS)


def speed_table(rows: list[dict]) -> str:
    """This checkout's streamed verify beside the baseline's, run for run: wall and CPU seconds (user +
    sys of the process tree), peak RSS, and whether every reported number is the same."""
    lines = ["| model | streamed: fastest wall s (all) | CPU s (all) | peak RSS GiB | baseline: fastest wall s (all) "
             "| CPU s (all) | peak RSS GiB | logits ratio | same verdict and numbers | load avg |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        runs, base = row["runs"]["streamed"], row["runs"].get("baseline", [])
        if not runs or not base:
            continue

        def cells(rs):
            wall = ", ".join(f"{r['seconds']:.0f}" for r in rs)
            cpu = ", ".join(_f(r.get("cpu_seconds"), ".0f") for r in rs)
            fastest = min(rs, key=lambda r: r["seconds"])
            return (f"{fastest['seconds']:.0f} ({wall}) | {_f(min((r.get('cpu_seconds') or 0 for r in rs)), '.0f')} "
                    f"({cpu}) | {max(r['peak_rss_bytes'] for r in rs) / GIB:.1f}")
        same = all(same_numbers(runs[0], r) for r in runs + base)
        ratios = sorted({_f(r.get("logits_ratio"), ".17g") for r in runs + base})
        load = "/".join(f"{x:.1f}" for x in row["load_average"])
        lines.append(f"| {row['model']} | {cells(runs)} | {cells(base)} | {', '.join(ratios)} "
                     f"| {'yes' if same else 'NO'} | {load} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, default=HERE / "cache")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--models", nargs="*", default=["llama-3.2-1b-x16", "llama-3.2-3b-x16"])
    ap.add_argument("--big", default="llama-3.1-8b-x16")
    ap.add_argument("--no-big", action="store_true")
    ap.add_argument("--baseline", type=Path, default=None, help="a checkout whose verify is timed beside this one")
    ap.add_argument("--keep", action="store_true", help="keep the 8B conversion output")
    ap.add_argument("--no-whole", action="store_true", help="streamed runs only (and the baseline's)")
    ap.add_argument("--out", default="verify_results",
                    help="results as bench/OUT.json and bench/OUT.md (e.g. verify_speed_results for a --baseline run)")
    args = ap.parse_args()
    rows = [bench_model(name, args.cache, args.rounds, args.baseline, False, args.keep, not args.no_whole)
            for name in args.models]
    if not args.no_big:
        rows.append(bench_model(args.big, args.cache, 1, args.baseline, True, args.keep, False))
    # Rows of models not measured in this run are kept from earlier runs (each row has its own load
    # average and time), so the 8B shape and the small ones can be measured separately.
    results = HERE / f"{args.out}.json"
    earlier = json.loads(results.read_text())["rows"] if results.exists() else []
    measured = {row["model"] for row in rows}
    order = ["llama-3.2-1b-x16", "llama-3.2-3b-x16", "llama-3.1-8b-x16"]
    rows = sorted([r for r in earlier if r["model"] not in measured and "streamed" in r["runs"]
                   and "logits_ratio" in (r["runs"]["streamed"] or [{}])[0]] + rows,
                  key=lambda r: order.index(r["model"]) if r["model"] in order else len(order))
    header = (f"Measured on {platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
              f"{os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / GIB:.0f} GiB RAM, verify on CPU (float32), "
              f"batch 2 x 64, fastest of the interleaved rounds for the small shapes ({args.rounds} in the latest run; "
              "every round is in the side-by-side table), one run of the big one.")
    text = header + "\n\n" + table(rows) + "\n"
    if args.baseline:
        text += (f"\nThis checkout against the baseline {args.baseline}, streamed, on the same conversion, rounds "
                 "interleaved (peak RSS: the largest of the runs):\n\n" + speed_table(rows) + "\n")
    results.write_text(json.dumps({"header": header, "rows": rows}, indent=2))
    (HERE / f"{args.out}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
