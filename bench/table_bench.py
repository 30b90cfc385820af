"""What reading the mapping tables costs: importing the table code, the first load of every shipped
table (what choosing the table for a model costs at the start of every command), and every later
load of one (what bulk pays per planned row).

    .venv/bin/python bench/table_bench.py [--rounds 15] [--against DIR ...]

Each probe is a fresh interpreter, so imports are not shared; rounds interleave the checkouts;
medians are reported, with the fastest round in parentheses.
`--against` measures other checkouts the same way (e.g. `git archive main | tar -x -C /tmp/main`), with
this interpreter, so that two versions of the table code can be compared on one machine at one time.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PROBE = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
t0 = time.perf_counter()
import llama_convert.table.loader as mapping
t1 = time.perf_counter()
mapping.shipped_tables()  # what choosing the table for a model loads: every shipped table
t2 = time.perf_counter()
n = 200
for _ in range(n):
    mapping.load_table("qwen2")
t3 = time.perf_counter()
heavy = sorted(m for m in ("numpy", "torch", "mindspore", "pydantic", "msgspec", "cattrs") if m in sys.modules)
print(json.dumps({"import_ms": (t1 - t0) * 1e3, "load_shipped_ms": (t2 - t1) * 1e3,
                  "import_and_load_ms": (t2 - t0) * 1e3, "repeat_load_us": (t3 - t2) / n * 1e6,
                  "heavy": heavy}))
"""


def probe(checkout: Path, pycache: str) -> dict:
    # Compiled bytecode as an installed package has it (kept outside the checkouts); without it every
    # probe would compile every module, which users do not pay.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = pycache
    out = subprocess.run([sys.executable, "-c", PROBE, str(checkout)], capture_output=True, text=True,
                         check=True, cwd="/", env=env)
    return json.loads(out.stdout)


def summary(runs: list[dict]) -> dict:
    """Median (fastest) of each number: other tenants of a shared machine only ever add time."""
    result = {k: f"{statistics.median(r[k] for r in runs):.2f} ({min(r[k] for r in runs):.2f})"
              for k in runs[0] if k != "heavy"}
    result["heavy_modules_imported"] = runs[0]["heavy"]
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--against", type=Path, nargs="*", default=[])
    args = ap.parse_args()
    checkouts = {"this checkout": ROOT, **{str(o): o.resolve() for o in args.against}}
    runs: dict[str, list[dict]] = {name: [] for name in checkouts}
    with tempfile.TemporaryDirectory() as pycache:
        for path in checkouts.values():
            probe(path, pycache)  # writes the bytecode
        for _ in range(args.rounds):  # interleaved: the machine's other load falls on every checkout alike
            for name, path in checkouts.items():
                runs[name].append(probe(path, pycache))
    rows = {name: summary(r) for name, r in runs.items()}
    keys = list(next(iter(rows.values())))
    print("| checkout | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for name, row in rows.items():
        print(f"| {name} | " + " | ".join(str(row[k]) for k in keys) + " |")


if __name__ == "__main__":
    main()
