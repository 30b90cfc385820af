"""The rough edges a newcomer hit on the first day (issue 24): paths relative to where they stand, a word
when the output cannot run on text, a one-command smoke test, quiet frameworks, an identical rerun that
is not an error, and option values in any letter case."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FIXTURES, REPO, run_cli
from test_mindformers_run import hf_greedy

EXE = Path(sys.executable).parent / "llama-convert"
PLAIN = FIXTURES / "mha-untied-fp32"          # no tokenizer files
TOKENIZED = FIXTURES / "gqa-llama3-rope"      # tokenizer.json
SHARDED = FIXTURES / "gqa-tied-bf16-sharded"  # 4 shards: transformers shows "Loading checkpoint shards"


def test_run_sh_reads_paths_relative_to_the_callers_directory(tmp_path):
    """(run.sh sets up .venv first when pyproject.toml changed since; ./test.sh has done so.)"""
    shutil.copytree(PLAIN, tmp_path / "models" / "mine")
    proc = subprocess.run([str(REPO / "run.sh"), "models/mine", "out/mine", "-q"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out" / "mine" / "model.ckpt").is_file()
    assert not (REPO / "out" / "mine").exists()


def test_a_source_without_a_tokenizer_is_told_at_conversion_what_that_means(tmp_path):
    proc = run_cli("hf2ms", PLAIN, tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    (line,) = [x for x in proc.stderr.splitlines() if "warning" in x]
    assert line.startswith("llama-convert: warning: ") and "has no tokenizer" in line
    assert "Trainer.predict(input_data=...)" in line and "convert again" in line
    assert json.loads(run_cli("hf2ms", PLAIN, tmp_path / "o2", "--json").stdout)["warnings"] == [line[24:]]


def test_a_source_with_a_tokenizer_gets_no_such_warning(tmp_path):
    proc = run_cli("hf2ms", TOKENIZED, tmp_path / "out")
    assert proc.returncode == 0 and "warning" not in proc.stderr, proc.stderr


def test_an_identical_rerun_is_already_converted_and_exit_0_touching_nothing(tmp_path):
    out = tmp_path / "out"
    assert run_cli("hf2ms", TOKENIZED, out).returncode == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    proc = run_cli("hf2ms", TOKENIZED, out)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"already converted: {out} holds the conversion of {TOKENIZED}")
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    assert json.loads(run_cli("hf2ms", TOKENIZED, out, "--json").stdout)["already_converted"] is True


def test_a_rerun_with_other_options_or_a_changed_source_still_needs_force(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    shutil.copytree(TOKENIZED, src)
    assert run_cli("hf2ms", src, out).returncode == 0
    assert "already exists" in run_cli("hf2ms", src, out, "--qkv-concat").stderr
    data = bytearray((src / "model.safetensors").read_bytes())
    data[-1] ^= 1    # same size, other bytes: only the sha256 tells
    (src / "model.safetensors").write_bytes(bytes(data))
    assert run_cli("hf2ms", src, out).returncode == 2


def test_a_rerun_of_a_no_hash_conversion_cannot_prove_the_sources_the_same(tmp_path):
    out = tmp_path / "out"
    assert run_cli("hf2ms", TOKENIZED, out, "--no-hash").returncode == 0
    assert "already exists" in run_cli("hf2ms", TOKENIZED, out, "--no-hash").stderr


@pytest.mark.parametrize("device", ["cpu", "CPU", "Cpu"])
def test_device_is_read_in_any_letter_case(tmp_path, device):
    proc = run_cli("hf2ms", PLAIN, tmp_path / "out", "--device", device, "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "device_target: CPU" in proc.stdout


@pytest.fixture(scope="module")
def sharded_for_cpu(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("quiet") / "ms"
    assert run_cli("hf2ms", SHARDED, out, "--device", "CPU").returncode == 0
    return out


def _verify(*args, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_DEFAULT_PATH", "GLOG_v")}
    return subprocess.run([str(EXE), "verify", SHARDED, *map(str, args), "--seq-len", "8", "--no-stream"],
                          cwd=cwd, capture_output=True, text=True, timeout=600, env=env)





def test_verify_verbose_shows_what_is_kept_quiet_by_default(sharded_for_cpu, tmp_path):
    """Quiet by default: test_cli_experience.py::test_verify_keeps_mindspore_and_mindformers_logs_out_of_the_terminal."""
    loud = _verify(sharded_for_cpu, "-v", cwd=tmp_path)
    assert loud.returncode == 0, loud.stderr[-2000:]
    assert "hyper_parallel" in loud.stderr and "Loading checkpoint shards" in loud.stderr


def test_the_library_verify_writes_nothing_to_the_terminal(sharded_for_cpu, tmp_path):
    """verify_conversion in a fresh interpreter, as a script calls it: not one line of MindFormers' logging."""
    code = ("import sys; from llama_convert import verify_conversion; from llama_convert.verify import VerifyOptions; "
            "r = verify_conversion(sys.argv[1], sys.argv[2], VerifyOptions(seq_len=8, stream=False)); "
            "sys.exit(0 if r.passed else 1)")
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_DEFAULT_PATH", "GLOG_v")}
    proc = subprocess.run([sys.executable, "-c", code, str(SHARDED), str(sharded_for_cpu)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout == "" and proc.stderr == "", proc.stderr[-2000:]


def test_generate_prints_what_transformers_generates_greedily_and_leaves_the_cwd_alone(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(TOKENIZED, src)
    (src / "generation_config.json").write_text(json.dumps({"max_length": 64}))   # greedy
    out = tmp_path / "out"
    assert run_cli("hf2ms", src, out, "--device", "CPU").returncode == 0
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    proc = subprocess.run([str(EXE), "generate", out, "--prompt", "w5 w9 w17", "--max-new-tokens", "4"], cwd=cwd,
                          capture_output=True, text=True, timeout=600)

    assert proc.returncode == 0, proc.stderr[-2000:]
    expected = hf_greedy(src, [1, 5, 9, 17], max_length=8)   # <s> and the prompt, then 4 new tokens
    assert proc.stdout.split() == [f"w{i}" for i in expected[1:]]
    assert list(cwd.iterdir()) == []


def test_generate_without_a_tokenizer_says_why_and_what_to_do(tmp_path):
    out = tmp_path / "out"
    assert run_cli("hf2ms", PLAIN, out, "--device", "CPU").returncode == 0
    proc = run_cli("generate", out, "--prompt", "hello")
    assert proc.returncode == 2 and "has no tokenizer" in proc.stderr and "Traceback" not in proc.stderr
