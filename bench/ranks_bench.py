"""ms2hf of a multi-rank run directory beside ms2hf of the same model on one card: time and peak RSS.

    .venv/bin/python bench/ranks_bench.py [--model llama-3.2-3b] [--mp 4] [--rounds 3]

The run directory is the single-card conversion cut for `--mp` cards by MindFormers' legacy Llama rules
(q/k/v and gate/up by rows, wo/w2 by columns, embedding and norms whole: vocab_emb_dp), laid out as a
training run saves it (checkpoint/rank_{k}/llama_rank_{k}-1_100.ckpt, strategy/ckpt_strategy_rank_{k}.ckpt),
without optimizer state (which would triple the disk a 3B needs and is skipped unread anyway). Both
commands run interleaved, in fresh output directories after `sync`; medians reported. Writes
bench/ranks_results.json. Everything it creates under bench/cache/work/ranks is deleted at the end.
"""
from __future__ import annotations

import argparse
import fcntl
import json
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from run import CLI, measure  # noqa: E402

from llama_convert.formats import ckpt, strategy as st  # noqa: E402
from llama_convert.formats.payload import InMemory  # noqa: E402

ROWS = re.compile(r"\.(attention\.(wq|wk|wv|w_qkv)|feed_forward\.(w1|w3|w_gate_hidden))\.(weight|bias)$")
COLUMNS = re.compile(r"\.(attention\.wo|feed_forward\.w2)\.weight$")


def layout(name: str, ndim: int, mp: int) -> st.Layout:
    if ROWS.search(name):
        return st.Layout((1, mp), (0,) + (-1,) * (ndim - 1))
    if COLUMNS.search(name):
        return st.Layout((1, mp), (-1, 0))
    return st.Layout((1, mp), (-1,) * ndim)


def slice_run(single: Path, run: Path, mp: int) -> None:
    """Each rank's file written tensor by tensor from the single-card checkpoint."""
    refs, _ = ckpt.scan(single / "model.ckpt")
    layouts = {r.name: layout(r.name, len(r.shape), mp) for r in refs}
    ops = (st.OperatorStrategy("Default/network/MatMul-op0", 0, ((1, mp), (mp, 1))),)
    (run / "strategy").mkdir(parents=True)
    writers = []
    for k in range(mp):
        st.write(run / "strategy" / f"ckpt_strategy_rank_{k}.ckpt", st.StrategyMap(1, layouts, ops))
        (run / "checkpoint" / f"rank_{k}").mkdir(parents=True)
        writers.append(ckpt.CkptWriter(run / "checkpoint" / f"rank_{k}" / f"llama_rank_{k}-1_100.ckpt"))
    for ref in refs:
        full = ref.read()
        for k, w in enumerate(writers):
            part = np.ascontiguousarray(full[layouts[ref.name].held(k, ref.shape)])
            w.add(ref.name, ref.dtype, part.shape, InMemory(part))
        del full
    for w in writers:
        w.close()
    shutil.copyfile(single / "llama_config.yaml", run / "llama_config.yaml")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="llama-3.2-3b")
    ap.add_argument("--mp", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=HERE / "ranks_results.json")
    args = ap.parse_args()
    from make_checkpoints import make
    with open(HERE / "cache" / ".make.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        src = make(args.model, HERE / "cache")
    work = HERE / "cache" / "work" / "ranks"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        single, run, out = work / "single", work / "run", work / "out"
        subprocess.run([CLI, "hf2ms", str(src), str(single), "--no-hash", "-q"], check=True)
        slice_run(single, run, args.mp)
        cmds = {"ms2hf single card": [CLI, "ms2hf", str(single), str(out)],
                f"ms2hf run dir mp={args.mp}": [CLI, "ms2hf", str(run), str(out)],
                "ms2hf single card --no-hash": [CLI, "ms2hf", str(single), str(out), "--no-hash"],
                f"ms2hf run dir mp={args.mp} --no-hash": [CLI, "ms2hf", str(run), str(out), "--no-hash"]}
        samples: dict[str, list[tuple[float, int]]] = {k: [] for k in cmds}
        labels = list(cmds)
        for r in range(args.rounds):
            for label in labels[r % len(labels):] + labels[:r % len(labels)]:
                shutil.rmtree(out, ignore_errors=True)
                subprocess.run(["sync"])
                wall, peak, code = measure(cmds[label])
                if code == 0:
                    samples[label].append((wall, peak))
                print(f"  [round {r + 1}] {label:<34} {wall:7.2f} s  {peak / 2**20:8.0f} MiB", flush=True)
        shutil.rmtree(out, ignore_errors=True)
        result = {"model": args.model, "mp": args.mp, "rounds": args.rounds,
                  "weights_bytes": (single / "model.ckpt").stat().st_size, "commands": {
                      k: {"median_s": statistics.median(s[0] for s in v),
                          "median_peak_rss_bytes": int(statistics.median(s[1] for s in v)), "samples": v}
                      for k, v in samples.items() if v}}
        c = result["commands"]
        for tail in ("", " --no-hash"):
            base, ours = c.get(f"ms2hf single card{tail}"), c.get(f"ms2hf run dir mp={args.mp}{tail}")
            if base and ours:
                result[f"time_ratio{tail.replace(' --', '_').replace('-', '_')}"] = ours["median_s"] / base["median_s"]
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        for k, v in c.items():
            print(f"{k:<36} {v['median_s']:7.2f} s  {v['median_peak_rss_bytes'] / 2**20:8.0f} MiB")
        print({k: round(v, 3) for k, v in result.items() if k.startswith("time_ratio")})
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
