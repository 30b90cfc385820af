"""Benchmark llama-convert against `cp -r` and MindFormers' own converters, on the same input.

    .venv/bin/python bench/run.py [--rounds 3] [--models llama-3.2-1b llama-3.2-3b] [--no-mindformers] [--verify]
    .venv/bin/python bench/run.py --only "sha256 floor (2 x input)" "hf2ms ckpt" --rounds 10 --out bench/floor_results.json
    .venv/bin/python bench/run.py --only "hf2ms ckpt" ms2hf --against ../before --models llama-3.2-1b --out bench/house_results.json

Generates the synthetic checkpoints first (bench/make_checkpoints.py, cached in bench/cache).
Each command runs in a fresh output directory after `sync` (so no command pays for another's
dirty pages) and right after an unmeasured copy of the input is deleted (see bench_model); the
commands are interleaved round by round, in an order rotated each round, and the medians reported,
because the machine is shared and noisy. Peak RSS is summed over the whole process tree, polled every 10 ms.
Beside `cp -r` runs the sha256 floor (bench/sha256_floor.py): two processes side by side hashing
the input at OpenSSL speed, the sha256 work of a default conversion, which hashes every input and
output byte. A hashing conversion is compared with the slower of the two.
Writes bench/results.json and prints a table of ratios.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CLI = str(Path(sys.executable).parent / "llama-convert")
# Two processes side by side hashing the input at OpenSSL speed: the sha256 work of a default conversion.
FLOOR = "sha256 floor (2 x input)"


def measure(cmd: list[str], env: dict | None = None) -> tuple[float, int, int]:
    """(wall seconds, peak RSS bytes of the process tree, exit code)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    root, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:
            procs = [root] + root.children(recursive=True)
            peak = max(peak, sum(p.memory_info().rss for p in procs if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.01)
    wall = time.perf_counter() - start
    err = proc.stderr.read().decode(errors="replace")
    if proc.returncode:
        print(f"  ! {' '.join(cmd[:3])} exited {proc.returncode}: {err.strip().splitlines()[-1:]}", file=sys.stderr)
    return wall, peak, proc.returncode


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def largest_output_tensor(src: Path) -> int:
    from llama_convert import HF2MSOptions, plan_hf2ms
    return max(t.nbytes for t in plan_hf2ms(src, HF2MSOptions(qkv_concat=True)).tensors)


def commands(src: Path, out: Path, ms_dir: Path, with_mf: bool) -> dict[str, list[str]]:
    cmds = {
        "cp -r": ["cp", "-r", str(src), str(out)],
        FLOOR: [sys.executable, str(HERE / "sha256_floor.py"), str(src)],
        # The same work done by the openssl tool, which reads in small buffers: a looser reference.
        "2 x openssl dgst -sha256 (input)": ["sh", "-c", 'openssl dgst -sha256 "$@" >/dev/null & '
                                             'openssl dgst -sha256 "$@" >/dev/null; wait', "sh",
                                             *map(str, sorted(src.glob("*.safetensors")))],
        "hf2ms safetensors": [CLI, "hf2ms", str(src), str(out), "--format", "safetensors"],
        "hf2ms ckpt": [CLI, "hf2ms", str(src), str(out)],
        "hf2ms safetensors --qkv-concat": [CLI, "hf2ms", str(src), str(out), "--format", "safetensors", "--qkv-concat"],
        "hf2ms ckpt --qkv-concat": [CLI, "hf2ms", str(src), str(out), "--qkv-concat"],
        "hf2ms safetensors --no-hash": [CLI, "hf2ms", str(src), str(out), "--format", "safetensors", "--no-hash"],
        "hf2ms ckpt --no-hash": [CLI, "hf2ms", str(src), str(out), "--no-hash"],
        "hf2ms ckpt --qkv-concat --no-hash": [CLI, "hf2ms", str(src), str(out), "--qkv-concat", "--no-hash"],
        "ms2hf": [CLI, "ms2hf", str(ms_dir), str(out)],
        "ms2hf --no-hash": [CLI, "ms2hf", str(ms_dir), str(out), "--no-hash"],
    }
    if with_mf:
        py = sys.executable
        cmds["mindformers convert_pt_to_ms"] = [py, str(HERE / "mf_convert.py"), "pt", str(src), str(out)]
        cmds["mindformers convert_hf_safetensors"] = [py, str(HERE / "mf_convert.py"), "safetensors", str(src), str(out)]
    return cmds


def before(cmds: dict[str, list[str]], checkout: Path) -> dict[str, list[str]]:
    """The same conversions run by another checkout's CLI (its own .venv), interleaved with ours in the
    same rounds: a change's cost, measured as a ratio the machine's noise cannot fake."""
    cli = str(checkout / ".venv" / "bin" / "llama-convert")
    return {f"{label} [before]": [cli, *cmd[1:]] for label, cmd in cmds.items() if cmd[0] == CLI}


def bench_model(name: str, rounds: int, with_mf: bool, work: Path, only: list[str] | None = None,
                against: Path | None = None) -> dict:
    sys.path.insert(0, str(HERE))
    from make_checkpoints import make
    src = make(name, HERE / "cache")
    ms_dir = work / f"{name}-ms"
    if not ms_dir.exists():
        subprocess.run([CLI, "hf2ms", str(src), str(ms_dir), "--format", "safetensors", "--no-hash"], check=True,
                       stdout=subprocess.DEVNULL)
    out = work / "out"
    cmds = commands(src, out, ms_dir, with_mf)
    if only:
        unknown = set(only) - set(cmds)
        if unknown:
            sys.exit(f"--only: no command labelled {sorted(unknown)}; the labels are {list(cmds)}")
        cmds = {k: v for k, v in cmds.items() if k in only or k == "cp -r"}  # every ratio divides by cp
    if against:
        cmds.update(before(cmds, against))
    runs: dict[str, list[tuple[float, int]]] = {k: [] for k in cmds}
    sizes: dict[str, int | None] = {}
    env = {**os.environ, "GLOG_v": "3", "LOCAL_DEFAULT_PATH": str(work / "mindformers-logs")}
    labels = list(cmds)
    for r in range(rounds):
        # Rotated each round, so that no command always follows the same one.
        for label in labels[r % len(labels):] + labels[:r % len(labels)]:
            cmd = cmds[label]
            # On this VM, memory freed and left idle for a few seconds goes back to the host, and the
            # next writer pays to fault it in again: a `cp -r` of the 1B shape took 0.6 s right after
            # another and 1.4-2.3 s after a 6 s pause. So every command starts right after an
            # unmeasured copy of the same size is deleted, and writes into memory the guest holds,
            # as it would on a machine of its own.
            shutil.rmtree(out, ignore_errors=True)
            subprocess.run(["cp", "-r", str(src), str(out)], check=True)
            shutil.rmtree(out)
            subprocess.run(["sync"])
            wall, peak, code = measure(cmd, env)
            if code == 0:
                runs[label].append((wall, peak))
                sizes[label] = dir_bytes(out) if out.exists() else None
            print(f"  [{name} round {r + 1}] {label:<38} {wall:7.2f} s  {peak / 2**20:8.0f} MiB", flush=True)
    shutil.rmtree(out, ignore_errors=True)
    src_bytes = sum(p.stat().st_size for p in src.glob("*.safetensors"))
    result = {"input_bytes": src_bytes, "largest_output_tensor_bytes": largest_output_tensor(src), "commands": {}}
    for label, samples in runs.items():
        if samples:
            result["commands"][label] = {"median_s": statistics.median(s[0] for s in samples),
                                         "median_peak_rss_bytes": int(statistics.median(s[1] for s in samples)),
                                         "samples": samples, "output_bytes": sizes.get(label)}
    return result


def verify_cost(work: Path) -> dict:
    src = HERE / "cache" / "llama-3.2-1b"
    ms_dir = work / "llama-3.2-1b-ms"
    wall, peak, code = measure([CLI, "verify", str(src), str(ms_dir)],
                               {**os.environ, "GLOG_v": "3", "LOCAL_DEFAULT_PATH": str(work / "mindformers-logs")})
    return {"seconds": wall, "peak_rss_bytes": peak, "exit": code}


def _ratio(t: float, base: float | None) -> str:
    return "-" if base is None else f"{t / base:.2f}"


def _delta(out: int | None, inp: int) -> str:
    return "-" if out is None else f"{out - inp:+,}"


def table(results: dict) -> str:
    lines = []
    for name, res in results["models"].items():
        cmds = res["commands"]
        cp = cmds["cp -r"]["median_s"]
        bound = 2 * res["largest_output_tensor_bytes"] + 400 * 2**20
        mfs = {k: v["median_s"] for k, v in cmds.items() if k.startswith("mindformers")}
        lines.append(f"\n{name}: input {res['input_bytes'] / 2**30:.2f} GiB; memory bound 2 x largest output "
                     f"tensor + 400 MB = {bound / 2**20:.0f} MiB")
        cp_min = min(s[0] for s in cmds["cp -r"]["samples"])
        # What a hashing conversion is held to: the slower of copying the bytes and hashing them.
        floor = max(cp, cmds[FLOOR]["median_s"]) if FLOOR in cmds else None
        floor_min = max(cp_min, min(s[0] for s in cmds[FLOOR]["samples"])) if FLOOR in cmds else None
        head = ("| command | median s | x cp | x cp, fastest rounds | x max(cp, floor) | x max(cp, floor), fastest rounds "
                "| peak RSS MiB | within bound | out dir - input weights, bytes |"
                + "".join(f" x {k.split()[1]} |" for k in mfs))
        lines += [head, "|---" * (head.count("|") - 1) + "|"]
        for label, v in cmds.items():
            row = (f"| {label} | {v['median_s']:.2f} | {v['median_s'] / cp:.2f} | "
                   f"{min(s[0] for s in v['samples']) / cp_min:.2f} | "
                   f"{_ratio(v['median_s'], floor)} | {_ratio(min(s[0] for s in v['samples']), floor_min)} | "
                   f"{v['median_peak_rss_bytes'] / 2**20:.0f} | "
                   f"{'-' if label.startswith(('cp', 'mindformers', 'sha256', '2 x')) else 'yes' if v['median_peak_rss_bytes'] <= bound else 'NO'} | "
                   f"{_delta(v.get('output_bytes'), res['input_bytes'])} |")
            row += "".join(f" {v['median_s'] / t:.3f} |" for t in mfs.values())
            lines.append(row)
    if "verify_1b" in results:
        v = results["verify_1b"]
        lines.append(f"\nverify on llama-3.2-1b (CPU, float32, batch 2 x 64): {v['seconds']:.0f} s, "
                     f"peak RSS {v['peak_rss_bytes'] / 2**30:.1f} GiB")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--models", nargs="+", default=["llama-3.2-1b", "llama-3.2-3b"])
    ap.add_argument("--no-mindformers", action="store_true", help="skip MindFormers' converters")
    ap.add_argument("--mindformers-on", nargs="*", default=["llama-3.2-1b"],
                    help="models to run MindFormers' converters on (they need ~6x the model in RAM)")
    ap.add_argument("--verify", action="store_true", help="also time verify on the 1B shape")
    ap.add_argument("--only", nargs="+", metavar="LABEL",
                    help="run only these commands, by their label in the table (fewer commands, tighter rounds)")
    ap.add_argument("--work", type=Path, default=HERE / "cache" / "work")
    ap.add_argument("--out", type=Path, default=HERE / "results.json")
    ap.add_argument("--report", action="store_true", help="only print the table of an existing --out file")
    ap.add_argument("--against", type=Path, metavar="CHECKOUT",
                    help="also run each conversion with CHECKOUT's .venv/bin/llama-convert, labelled [before]")
    args = ap.parse_args()
    if args.report:
        results = json.loads(args.out.read_text())
        write_report(results, args.out)
        return
    args.work.mkdir(parents=True, exist_ok=True)
    import importlib.util
    have_mf = importlib.util.find_spec("mindformers") is not None and not args.no_mindformers
    results = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "machine": f"{platform.node()} {platform.machine()}, {psutil.cpu_count()} cores, "
                          f"{psutil.virtual_memory().total / 2**30:.0f} GiB RAM, Python {platform.python_version()}",
               "rounds": args.rounds, "models": {}}
    for name in args.models:
        results["models"][name] = bench_model(name, args.rounds, have_mf and name in args.mindformers_on, args.work,
                                              args.only, args.against)
    if args.verify:
        results["verify_1b"] = verify_cost(args.work)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    write_report(results, args.out)


def write_report(results: dict, out: Path) -> None:
    text = table(results)
    print(text)
    out.with_suffix(".md").write_text(f"Measured {results['date']} on {results['machine']}, "
                                      f"median of {results['rounds']} interleaved rounds.\n{text}\n")


if __name__ == "__main__":
    main()
