"""`bulk --dry-run` of large manifests: time and peak RSS from 1,000 to 10,000 rows, against the code of
another git revision (default: main) in the same run.

    .venv/bin/python bench/bulk_dryrun_bench.py [--rows 1000 2000 10000] [--baseline main]
                                                [--baseline-rows 500 1000 2000] [--rounds 3]

Each row's source is its own directory of hard links to fixtures/mha-untied-fp32 (no disk), each output
is new (every row: convert, not converted yet). Rows whose sources are the same files share one plan,
so this measures the driver's own cost per row: reading and checking the manifest, the outputs'
overlap check, a directory listing per source, the done-check. Two more manifests measure what
sharing does not cover: "distinct configs" gives every row its own copy of config.json (the same bytes
in a new file, so every row is planned: headers read, config translated), and "all invalid" is a real
run (not a dry run) of rows whose sources do not exist, which journals and reports every row.

The baseline is `git archive REV llama_convert mappings` unpacked into a temporary directory and run by the
same interpreter (PYTHONPATH first), on the same manifests, interleaved round by round with the current
code. Its pairwise overlap check is quadratic, so it runs only --baseline-rows; ratios are taken at
equal sizes. The fastest round of each is reported (the machine is shared). Writes
bench/bulk_dryrun_results.json and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bulk_bench import link_copies  # noqa: E402
from run import REPO, measure  # noqa: E402  (the same process-tree RSS poller as bench/run.py)

FIXTURE = REPO / "fixtures" / "mha-untied-fp32"


def manifest(work: Path, name: str, srcs: list[Path] | list[str]) -> Path:
    path = work / f"{name}.jsonl"
    path.write_text("".join(json.dumps({"src": str(s), "out": f"out/{i}"}) + "\n" for i, s in enumerate(srcs)))
    return path


def baseline_tree(rev: str, into: Path) -> Path:
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "llama_convert", "mappings"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def run_cases(cases: dict[str, tuple[list[str], dict | None, Path]], rounds: int) -> dict[str, list[tuple]]:
    samples: dict[str, list[tuple]] = {name: [] for name in cases}
    for r in range(rounds):
        for name, (cmd, env, work) in cases.items():
            for f in work.glob("*report.json*"):
                f.unlink()
            wall, peak, code = measure(cmd, env)
            if code not in (0, 2):
                raise SystemExit(f"{name} failed (exit {code})")
            samples[name].append((wall, peak))
            print(f"round {r + 1}: {name}: {wall:.2f} s, {peak / 2**20:.0f} MiB", file=sys.stderr)
    return samples


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[1000, 2000, 10000])
    ap.add_argument("--baseline", default="main", help="git revision to compare with ('' for none)")
    ap.add_argument("--baseline-rows", type=int, nargs="*", default=[500, 1000, 2000])
    ap.add_argument("--distinct-rows", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--work", type=Path, default=HERE / "cache" / "bulk-dryrun")
    args = ap.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    sizes = sorted(set(args.rows) | set(args.baseline_rows if args.baseline else []))
    srcs = link_copies(FIXTURE, work, max(sizes))
    # -P: the working directory (this checkout) does not go first on sys.path, PYTHONPATH does
    new = [sys.executable, "-P", "-m", "llama_convert.cli", "bulk"]
    env_new = {**os.environ, "PYTHONPATH": str(REPO)}
    cases: dict[str, tuple[list[str], dict | None, Path]] = {}
    with tempfile.TemporaryDirectory(prefix="bulk-baseline-") as tmp:
        env_old = {**os.environ, "PYTHONPATH": str(baseline_tree(args.baseline, Path(tmp)))} if args.baseline else None
        for env, want in ((env_new, REPO), (env_old, Path(tmp))):
            if env is not None:
                where = subprocess.run([sys.executable, "-P", "-c", "import llama_convert; print(llama_convert.__file__)"],
                                       env=env, capture_output=True, text=True, check=True).stdout.strip()
                assert Path(where).is_relative_to(want), f"{where} is not the code under {want}"
        for n in sizes:
            m = manifest(work, f"linked-{n}", srcs[:n])
            if n in args.rows:
                cases[f"{n} rows"] = ([*new, str(m), "--dry-run"], env_new, work)
            if env_old and n in args.baseline_rows:
                cases[f"{n} rows, {args.baseline}"] = ([*new, str(m), "--dry-run"], env_old, work)
        if args.distinct_rows:
            distinct = link_copies(FIXTURE, work, args.distinct_rows, "distinct", copied=("config.json",))
            m = manifest(work, f"distinct-{args.distinct_rows}", distinct)
            cases[f"{args.distinct_rows} rows, distinct configs"] = ([*new, str(m), "--dry-run"], env_new, work)
        n = max(args.rows)
        m = manifest(work, f"missing-{n}", [f"missing/m{i}" for i in range(n)])
        # A line per row on stderr, which measure() reads only at the end: to /dev/null, or the pipe fills.
        quiet = ["sh", "-c", 'exec "$@" 2>/dev/null', "sh"]
        cases[f"{n} rows, all invalid, real run"] = ([*quiet, *new, str(m), "--jobs", "1"], env_new, work)
        samples = run_cases(cases, args.rounds)
    rows = []
    for name, runs in samples.items():
        wall = min(w for w, _ in runs)
        rows.append({"case": name, "seconds": round(wall, 2), "peak_rss_mib": round(max(p for _, p in runs) / 2**20)})
    by_name = {r["case"]: r for r in rows}
    for r in rows:
        old = by_name.get(f"{r['case']}, {args.baseline}")
        r["x_baseline"] = round(old["seconds"] / r["seconds"], 1) if old else None
    load = os.getloadavg()
    result = {"measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "host": platform.node(),
              "cpus": os.cpu_count(), "python": platform.python_version(), "rounds": args.rounds,
              "baseline": args.baseline, "load_avg_at_end": [round(x, 1) for x in load], "rows": rows}
    (HERE / "bulk_dryrun_results.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"bulk --dry-run, fastest of {args.rounds} interleaved rounds, {os.cpu_count()} cores, "
          f"load {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f} at the end")
    print(f"| case | seconds | peak RSS MiB | {args.baseline or 'baseline'} / this |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['seconds']} | {r['peak_rss_mib']} | {r['x_baseline'] or '-'} |")


if __name__ == "__main__":
    main()
