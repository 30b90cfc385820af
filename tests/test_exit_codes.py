"""Exit 3 means a bug of ours and nothing else. What users' machines do to a run is bad input (exit 2, one
line naming the path) or, where it can be, simply works: a symlink loop as SRC or OUT, a source path that
is not UTF-8, a shard truncated while it is copied, an optional dependency that is not installed.

Real files and real processes: the missing dependency is genuinely missing from the Python that runs the
CLI (a path that leaves its package out), not mocked away.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import FIXTURES, REPO, refused, run_cli, synthetic_llama, tree_hash

EXE = str(Path(sys.executable).parent / "llama-convert")
MHA = FIXTURES / "mha-untied-fp32"
SHARDED = FIXTURES / "gqa-tied-bf16-sharded"
BIN = FIXTURES / "mqa-bias-fp16-bin"
HOST = socket.gethostname()


# ---------------------------------------------------------------- symlink loops

def loop(where: Path) -> Path:
    where.symlink_to(where.name)  # where -> where
    return where


@pytest.mark.parametrize("command", ["hf2ms", "ms2hf"])
def test_a_symlink_loop_as_the_source_is_named_as_one(tmp_path, command):
    src = loop(tmp_path / "src")
    refused(run_cli(command, src, tmp_path / "out"), str(src), "symbolic link loop")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


@pytest.mark.parametrize("force", [(), ("--force",)], ids=["plain", "force"])
def test_a_symlink_loop_as_out_dir_is_named_as_one_and_left_alone(tmp_path, force):
    out = loop(tmp_path / "out")
    refused(run_cli("hf2ms", MHA, out, *force), str(out), "symbolic link loop")
    assert out.is_symlink() and os.readlink(out) == "out"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_symlink_loop_in_a_parent_of_out_dir_is_named_as_one(tmp_path):
    parent = loop(tmp_path / "runs")
    refused(run_cli("hf2ms", MHA, parent / "llama"), "runs", "symbolic link loop")


# ---------------------------------------------------------------- paths that are not UTF-8

NOT_UTF8 = os.fsdecode(b"caf\xe9-\xff")  # Latin-1 bytes: how Python holds them (lone surrogates)
SHOWN = r"caf\xe9-\xff"                  # how messages show them


def strict_utf8_env() -> dict:
    # A UTF-8 locale whose standard streams refuse what is not UTF-8 (a C locale would let it through).
    return {**os.environ, "PYTHONIOENCODING": "utf-8:strict"}


def test_a_source_path_that_is_not_utf8_converts_and_every_record_of_it_is_readable(tmp_path):
    src = Path(shutil.copytree(FIXTURES / "gqa-llama3-rope", tmp_path / NOT_UTF8 / "model"))
    out = tmp_path / "out"
    proc = subprocess.run([EXE, "hf2ms", src, out], capture_output=True, text=True, timeout=120, env=strict_utf8_env())
    assert proc.returncode == 0, proc.stderr
    assert SHOWN in proc.stdout  # the summary names the source, shown rather than crashing the print
    text = (out / "llama_config.yaml").read_bytes().decode("utf-8")  # the YAML stays UTF-8: MindFormers reads it
    assert f"# from {tmp_path.resolve()}/{SHOWN}/model with" in text
    yaml.safe_load(text)
    record = json.loads((out / "conversion.json").read_text())
    assert os.fsencode(record["source"]["dir"]) == os.fsencode(src.resolve())  # the exact bytes, recoverable


def test_an_out_dir_that_is_not_utf8_converts_and_its_yaml_names_it_exactly(tmp_path):
    out = tmp_path / NOT_UTF8 / "out"
    proc = subprocess.run([EXE, "hf2ms", FIXTURES / "gqa-llama3-rope", out, "--json"], capture_output=True, text=True,
                          timeout=120, env=strict_utf8_env())
    assert proc.returncode == 0, proc.stderr
    assert os.fsencode(json.loads(proc.stdout)["out_dir"]) == os.fsencode(out)
    config = yaml.safe_load((out / "llama_config.yaml").read_bytes().decode("utf-8"))
    assert Path(config["load_checkpoint"]) == out / "model.ckpt" and Path(config["load_checkpoint"]).is_file()


def test_ms2hf_from_and_to_paths_that_are_not_utf8(tmp_path):
    ms = tmp_path / NOT_UTF8 / "ms"
    assert run_cli("hf2ms", MHA, ms, "--format", "safetensors").returncode == 0
    back = tmp_path / NOT_UTF8 / "hf"
    proc = subprocess.run([EXE, "ms2hf", ms, back], capture_output=True, text=True, timeout=120, env=strict_utf8_env())
    assert proc.returncode == 0, proc.stderr
    assert os.fsencode(json.loads((back / "conversion.json").read_text())["source"]["dir"]) == os.fsencode(ms)


def test_a_refusal_naming_a_path_that_is_not_utf8_is_one_printable_line(tmp_path):
    src = Path(shutil.copytree(MHA, tmp_path / NOT_UTF8))
    (src / "config.json").unlink()
    proc = subprocess.run([EXE, "hf2ms", src, tmp_path / "out"], capture_output=True, timeout=120,
                          env=strict_utf8_env())
    err = proc.stderr.decode("utf-8")  # valid UTF-8, whatever the path held
    assert proc.returncode == 2 and len(err.splitlines()) == 1 and f"{SHOWN}/config.json" in err, err


# ---------------------------------------------------------------- a source that changes under us

LAYERS = 8  # float32, one shard per decoder layer and a last one for the rest: 112 MB


@pytest.fixture(scope="module")
def layered(tmp_path_factory) -> Path:
    """A checkpoint big enough to be caught in the middle of its copy, its embedding shard copied last."""
    return synthetic_llama(tmp_path_factory.mktemp("layered") / "llama", hidden=512, ffn=1024, layers=LAYERS,
                           vocab=8192, heads=8, values=lambda shape: np.ones(shape, np.float32), sharded=True)


def test_a_shard_truncated_while_the_run_copies_is_named_and_nothing_is_left(layered, tmp_path):
    src = Path(shutil.copytree(layered, tmp_path / "src"))
    last = src / f"model-{LAYERS + 1:05d}-of-{LAYERS + 1:05d}.safetensors"
    out = tmp_path / "out"
    proc = subprocess.Popen([EXE, "hf2ms", src, out], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    partial = tmp_path / f".out.partial-{HOST}-{proc.pid}"
    while proc.poll() is None and not partial.exists():  # planned from the headers, about to copy
        time.sleep(0.002)
    proc.send_signal(signal.SIGSTOP)
    try:
        with open(last, "r+b") as f:
            f.truncate(last.stat().st_size // 2)
    finally:
        proc.send_signal(signal.SIGCONT)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the conversion finished before the shard could be truncated")
    refused(subprocess.CompletedProcess(proc.args, proc.returncode, "", err), str(last), "changed",
            "while being copied")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


# ---------------------------------------------------------------- optional dependencies

def python_without(tmp: Path, *hidden: str) -> list[str]:
    """The CLI in a Python that lacks the `hidden` packages: `-S` leaves site-packages off sys.path, and a
    directory of links to every other installed top-level entry (and this checkout) goes on it instead."""
    site = Path(sysconfig.get_paths()["purelib"])
    shadow = tmp / "site-packages"
    shadow.mkdir()
    for entry in site.iterdir():
        top = entry.name.split("-")[0].split(".")[0].lower()  # ray, ray-2.58.0.dist-info -> ray
        if top not in hidden:
            (shadow / entry.name).symlink_to(entry)
    code = (f"import sys; sys.path[:0] = [{str(shadow)!r}, {str(REPO)!r}]; sys.argv[0] = 'llama-convert'; "
            "from llama_convert.cli import main; main()")
    return [sys.executable, "-S", "-c", code]


def run_without(tmp: Path, hidden: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([*python_without(tmp, hidden), *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def test_the_python_without_a_package_really_lacks_it_and_still_converts(tmp_path):
    python = python_without(tmp_path, "torch")
    assert subprocess.run([python[0], "-S", "-c", f"import sys; sys.path[:0] = [{str(tmp_path / 'site-packages')!r}]; "
                           "import torch"], capture_output=True).returncode == 1
    proc = subprocess.run([*python, "hf2ms", MHA, tmp_path / "out"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_a_pytorch_bin_without_torch_names_the_torch_extra(tmp_path):
    refused(run_without(tmp_path, "torch", "hf2ms", BIN, tmp_path / "out"), "reading pytorch_model.bin",
            "torch, which is not installed", "pip install '.[torch]'", absent=("internal error",))
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def converted_for_cpu(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("verify") / "ms"
    assert run_cli("hf2ms", MHA, out, "--device", "CPU").returncode == 0
    return out


@pytest.mark.parametrize("hidden", ["torch", "transformers", "mindformers", "mindspore"])
def test_verify_without_a_framework_names_the_verify_extra(tmp_path, converted_for_cpu, hidden):
    proc = run_without(tmp_path, hidden, "verify", MHA, converted_for_cpu, "--seq-len", "4")
    # The last line: MindFormers, when it imports, logs warnings of its own that verify does not yet keep quiet.
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    for needle in (f"verify needs the Python package {hidden}, which is not installed", "pip install '.[verify]'"):
        assert needle in last, last


def test_bulk_on_ray_without_ray_names_the_ray_extra(tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"src": str(MHA), "out": "out"}) + "\n")
    before = tree_hash(tmp_path)
    refused(run_without(tmp_path, "ray", "bulk", manifest, "--executor", "ray"), "bulk --executor ray",
            "ray, which is not installed", "pip install '.[ray]'")
    assert not (tmp_path / "out").exists()
