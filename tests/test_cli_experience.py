"""What a person sees: progress on a terminal, a line per file in a log, nothing with --quiet; clean
--json; -q/-v everywhere; library log noise kept out; --version; OUT_DIR's parents made like mkdir -p."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FIXTURES, refused, run_cli

EXE = Path(sys.executable).parent / "llama-convert"
SHARDED = FIXTURES / "gqa-tied-bf16-sharded"


def in_terminal(*args: str, cwd: Path | None = None) -> str:
    """The screen text of a run in a real pseudo-terminal (util-linux `script`), carriage returns as
    line breaks so that every redraw of the bar is one line."""
    command = " ".join(map(str, [EXE, *args]))
    # tqdm redraws at most every 0.1 s; a fixture converts faster than that, so every update is drawn.
    env = {**os.environ, "TQDM_MININTERVAL": "0"}
    proc = subprocess.run(["script", "-q", "-e", "-c", command, "/dev/null"], capture_output=True, text=True,
                          timeout=120, cwd=cwd, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:]
    return proc.stdout.replace("\r", "\n")


@pytest.mark.skipif(shutil.which("script") is None, reason="util-linux script is not installed")
def test_a_terminal_shows_a_byte_bar_that_advances_to_100_percent(tmp_path):
    screen = in_terminal("hf2ms", SHARDED, tmp_path / "out", "--format", "safetensors")

    percents = [int(p) for p in re.findall(r"^hf2ms out:\s+(\d+)%\|", screen, re.M)]
    assert len(set(percents)) >= 3, screen            # it moved, not just 0 % then 100 %
    assert percents == sorted(percents), screen
    assert percents[-1] == 100
    last = [line for line in screen.splitlines() if line.startswith("hf2ms out: 100%")][-1]
    assert re.search(r"177k/177k \[\d\d:\d\d<\d\d:\d\d, .*B/s\]", last), last   # bytes, ETA, rate
    assert "wrote model-00004-of-00004.safetensors" in screen


def test_a_log_gets_one_line_per_finished_file_and_json_stays_clean(tmp_path):
    proc = run_cli("hf2ms", SHARDED, tmp_path / "out", "--format", "safetensors", "--json")

    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["ok"] is True
    assert proc.stderr.splitlines() == [f"llama-convert: wrote model-0000{k}-of-00004.safetensors ({size})"
                                        for k, size in enumerate(["56.5 KiB", "61.0 KiB", "48.5 KiB", "21.0 KiB"], 1)]


def test_quiet_prints_nothing_at_all(tmp_path):
    proc = run_cli("hf2ms", SHARDED, tmp_path / "out", "-q")
    assert proc.returncode == 0 and proc.stdout == "" and proc.stderr == ""
    assert (tmp_path / "out" / "model.ckpt").is_file()


@pytest.mark.parametrize("command", ["hf2ms", "ms2hf", "inspect", "diff", "verify"])
def test_every_command_takes_quiet_and_verbose(command):
    proc = run_cli(command, "--help")
    assert "-q, --quiet" in proc.stdout and "-v, --verbose" in proc.stdout


def test_quiet_and_verbose_together_are_refused(tmp_path):
    refused(run_cli("inspect", "-q", "-v", SHARDED), "--quiet", "--verbose")


def test_version_names_ours_and_the_libraries(tmp_path):
    from importlib import metadata
    proc = run_cli("--version")
    assert proc.returncode == 0
    assert proc.stdout.splitlines()[0] == "llama-convert 0.1.0"
    assert f"mindspore {metadata.version('mindspore')}" in proc.stdout
    assert f"mindformers {metadata.version('mindformers')}" in proc.stdout
    assert f"transformers {metadata.version('transformers')}" in proc.stdout


def test_missing_parents_of_out_dir_are_created(tmp_path):
    out = tmp_path / "runs" / "2024" / "llama"
    proc = run_cli("hf2ms", SHARDED, out)
    assert proc.returncode == 0, proc.stderr
    assert (out / "model.ckpt").is_file()


def test_a_file_where_a_parent_should_be_is_refused(tmp_path):
    (tmp_path / "runs").write_text("not a directory")
    refused(run_cli("hf2ms", SHARDED, tmp_path / "runs" / "llama"), "runs", "not a directory")
    assert (tmp_path / "runs").read_text() == "not a directory"


def test_out_dir_with_new_parents_inside_the_source_is_refused(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(SHARDED, src)
    refused(run_cli("hf2ms", src, src / "new" / "out"))
    assert not (src / "new").exists()


def test_verify_keeps_mindspore_and_mindformers_logs_out_of_the_terminal(tmp_path):
    """Nor MindFormers' import warnings (`hyper_parallel`), nor transformers' "Loading checkpoint shards" bar
    of a sharded source in whole-model mode (-v shows them: test_newcomer.py)."""
    out = tmp_path / "out"
    assert run_cli("hf2ms", SHARDED, out, "--device", "CPU").returncode == 0
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_DEFAULT_PATH", "GLOG_v")}
    proc = subprocess.run([str(EXE), "verify", SHARDED, out, "--seq-len", "8", "--no-stream"], cwd=cwd,
                          capture_output=True, text=True, timeout=300, env=env)

    assert proc.returncode == 0, proc.stderr[-2000:]
    for noise in (" INFO ", "[WARNING]", " - WARNING - ", "hyper_parallel", "Loading checkpoint shards"):
        assert noise not in proc.stderr, proc.stderr[-2000:]
    assert list(cwd.iterdir()) == []   # no ./output log directory either
