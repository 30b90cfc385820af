"""Killed at any moment, hf2ms leaves no half-written output that looks complete, loses no earlier output,
and leaves nothing the next run does not reclaim; of two runs racing into one new OUT_DIR exactly one wins.

The checkpoint is synthetic (a few hundred MB, deterministic) so that a conversion lasts long enough to be
killed in the middle of its writing.
"""
from __future__ import annotations

import json
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import synthetic_llama, without_progress

EXE = Path(sys.executable).parent / "llama-convert"
HOST = socket.gethostname()
HIDDEN, FFN, LAYERS, VOCAB = 256, 512, 96, 32000  # float32: 317 MB of weights in 867 tensors


@pytest.fixture(scope="module")
def big_src(tmp_path_factory) -> Path:
    rng = np.random.default_rng(10)
    return synthetic_llama(tmp_path_factory.mktemp("synthetic") / "llama", HIDDEN, FFN, LAYERS, VOCAB, heads=4,
                           values=lambda shape: rng.standard_normal(shape, dtype=np.float32))


def start(*args) -> subprocess.Popen:
    return subprocess.Popen([str(EXE), *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


def complete(out: Path) -> bool:
    """Looks complete (holds conversion.json) and is: every listed output exists with its size, nothing else."""
    record = json.loads((out / "conversion.json").read_text())
    listed = {f["name"]: f["size"] for f in record["outputs"]}
    present = {p.name: p.stat().st_size for p in out.iterdir() if p.name != "conversion.json"}
    return present == listed


def identity(out: Path) -> tuple[int, int]:
    """Which run wrote OUT_DIR. Not its text: two runs within one second write the same conversion.json. A run
    creates its files while the earlier output still exists, so a new output never has the earlier's inode."""
    st = (out / "conversion.json").stat()
    return st.st_dev, st.st_ino


def debris(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name != "out")


def wait_for_partial(parent: Path, proc: subprocess.Popen) -> None:
    """Until the run is writing (its partial directory exists), or has ended."""
    name = f".out.partial-{HOST}-{proc.pid}"
    while proc.poll() is None and not (parent / name).exists():
        time.sleep(0.005)


EXIT_ON = {signal.SIGKILL: -9, signal.SIGTERM: 143, signal.SIGINT: 130}


def test_killed_runs_leave_no_false_output_lose_nothing_and_are_cleaned_up_after(big_src, tmp_path):
    parent = tmp_path / "runs"
    parent.mkdir()
    out = parent / "out"
    assert start("hf2ms", big_src, out).wait(timeout=120) == 0
    earlier = identity(out)

    rng = random.Random(10)
    kills = [signal.SIGKILL] * 5 + [signal.SIGTERM] * 5 + [signal.SIGINT] * 5
    rng.shuffle(kills)
    killed: set[str] = set()  # debris a SIGKILL may leave until a later run gets far enough to reclaim it
    for sig in kills:
        proc = start("hf2ms", big_src, out, "--force")
        # TERM and INT need the interpreter up to be handled at all; KILL lands anywhere, start-up included.
        if sig != signal.SIGKILL or rng.random() < 0.6:
            wait_for_partial(parent, proc)
        time.sleep(rng.uniform(0, 1.5))
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
        if sig != signal.SIGKILL and proc.returncode == -sig:  # only after the run, its output in place
            assert complete(out) and identity(out) != earlier
        else:
            assert proc.returncode in (0, EXIT_ON[sig]), (sig, proc.returncode, err)
        assert "Traceback" not in err, err
        aside = parent / f".out.old-{HOST}-{proc.pid}"
        if out.exists():
            assert complete(out), (sig, proc.returncode)
            if proc.returncode != 0:  # killed before its commit: the earlier output, or killed just after
                assert identity(out) == earlier or complete(out)
        else:  # killed between moving the earlier output aside and renaming the new one in
            assert sig == signal.SIGKILL and aside.is_dir(), debris(parent)
        if sig != signal.SIGKILL:  # cleaned up on its way out: nothing but OUT_DIR
            assert debris(parent) == [], (sig, debris(parent))
        else:  # only what killed runs left: a partial directory or the earlier output moved aside
            killed |= {f".out.partial-{HOST}-{proc.pid}", aside.name}
            assert set(debris(parent)) <= killed, debris(parent)
        if out.exists():
            earlier = identity(out)

    final = start("hf2ms", big_src, out, "--force")
    assert final.wait(timeout=120) == 0
    assert debris(parent) == [] and complete(out)


def test_two_runs_into_one_new_out_dir_never_both_succeed(big_src, tmp_path):
    for attempt in range(3):
        parent = tmp_path / f"race{attempt}"
        parent.mkdir()
        out = parent / "out"
        # Different formats, so OUT_DIR's content says which run it came from.
        runs = {"ckpt": start("hf2ms", big_src, out, "--format", "ckpt", "--json"),
                "safetensors": start("hf2ms", big_src, out, "--format", "safetensors", "--json")}
        done = {fmt: finish(p) for fmt, p in runs.items()}
        codes = sorted(code for code, _, _ in done.values())
        assert codes == [0, 2], done
        winner = next(fmt for fmt, (code, _, _) in done.items() if code == 0)
        loser_err = without_progress(next(v for v in done.values() if v[0] == 2)[2])
        assert len(loser_err.strip().splitlines()) == 1 and str(out) in loser_err, loser_err
        assert "was created by another run" in loser_err or "already exists" in loser_err, loser_err
        record = json.loads((out / "conversion.json").read_text())
        assert record["options"]["format"] == winner and complete(out)
        summary = json.loads(done[winner][1])
        assert {f["name"]: f["sha256"] for f in summary["files"]} == \
            {f["name"]: f["sha256"] for f in record["outputs"]}
        assert debris(parent) == []


def test_sigterm_during_a_library_conversion_removes_the_partial_output_and_ends_the_process(big_src, tmp_path):
    # A script calling the API, with SIGTERM at its default: the process still dies by SIGTERM, cleaned up.
    code = f"from llama_convert import convert_hf2ms; convert_hf2ms({str(big_src)!r}, {str(tmp_path / 'out')!r})"
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
    wait_for_partial(tmp_path, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the conversion finished before the signal arrived")
    assert proc.returncode == -signal.SIGTERM and err == "", (proc.returncode, err)
    assert list(tmp_path.iterdir()) == []
