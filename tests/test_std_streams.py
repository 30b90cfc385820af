"""stdout and stderr are the caller's: a reader that goes away (`| head -1`) or a stream closed before the
start (`2>&-`) is not bad input. The work finishes, the command exits as the work ended (0 done, 1 a
difference found) with nothing said about the pipe, and stdout carries the JSON alone, always.

Real processes with real pipes: the reading end is closed before the command writes a byte, so every
write finds no reader.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FIXTURES

EXE = str(Path(sys.executable).parent / "llama-convert")
MHA = FIXTURES / "mha-untied-fp32"
SHARDED = FIXTURES / "gqa-tied-bf16-sharded"


def with_reader_gone(*args, stream: str = "stdout") -> tuple[int, str]:
    """Run the CLI with the reading end of `stream`'s pipe closed before it starts writing; returns the
    exit status and what the other stream carried."""
    proc = subprocess.Popen([EXE, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    gone, kept = (proc.stdout, proc.stderr) if stream == "stdout" else (proc.stderr, proc.stdout)
    gone.close()
    text = kept.read()
    return proc.wait(timeout=120), text


def complete(out: Path) -> bool:
    record = json.loads((out / "conversion.json").read_text())
    return {p.name: p.stat().st_size for p in out.iterdir() if p.name != "conversion.json"} == \
        {f["name"]: f["size"] for f in record["outputs"]}


def test_hf2ms_whose_stdout_reader_has_gone_finishes_and_exits_0_saying_nothing_of_the_pipe(tmp_path):
    code, err = with_reader_gone("hf2ms", SHARDED, tmp_path / "out")
    assert code == 0, err
    assert complete(tmp_path / "out")
    assert "pipe" not in err.lower() and "error" not in err, err


def test_hf2ms_into_head_exits_0_with_a_complete_output(tmp_path):
    # The shell's own pipeline, as a user types it.
    for cut in ("-c1", "-1"):
        out = tmp_path / f"out{cut}"
        proc = subprocess.run(["bash", "-c", f'"$@" | head {cut} >/dev/null; exit "${{PIPESTATUS[0]}}"', "_",
                               EXE, "hf2ms", SHARDED, out], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and "pipe" not in proc.stderr.lower(), proc.stderr
        assert complete(out)


@pytest.mark.parametrize("args,status", [
    (("inspect", SHARDED), 0),
    (("diff", MHA, MHA), 0),
    (("diff", MHA, SHARDED), 1),
], ids=["inspect", "diff-same", "diff-different"])
def test_a_reader_gone_from_stdout_leaves_the_exit_status_of_the_work(args, status):
    code, err = with_reader_gone(*args)
    assert code == status and err == "", (code, err)


def test_a_reader_gone_from_stderr_does_not_stop_the_work_and_stdout_keeps_the_json(tmp_path):
    code, out = with_reader_gone("hf2ms", SHARDED, tmp_path / "out", "--format", "safetensors", "--json",
                                 stream="stderr")
    assert code == 0
    assert json.loads(out)["ok"] is True and complete(tmp_path / "out")


def closed(redirect: str, *args) -> subprocess.CompletedProcess:
    """The CLI started with a standard stream closed by the shell (`2>&-`, `>&-`)."""
    return subprocess.run(["bash", "-c", f'exec "$@" {redirect}', "_", EXE, *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def test_with_stderr_closed_stdout_carries_only_the_json(tmp_path):
    proc = closed("2>&-", "hf2ms", SHARDED, tmp_path / "out", "--format", "safetensors", "--json")
    assert proc.returncode == 0
    summary = json.loads(proc.stdout)  # no progress line mixed in
    assert summary["ok"] is True and complete(tmp_path / "out")
    assert all(f["sha256"] for f in summary["files"])


def test_with_stderr_closed_bad_input_still_exits_2_and_writes_nowhere(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("keep")
    proc = closed("2>&-", "hf2ms", MHA, tmp_path / "out")
    assert proc.returncode == 2 and proc.stdout == ""
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["mine.txt"]


def test_with_stdout_closed_the_work_finishes_and_exits_0(tmp_path):
    proc = closed(">&-", "hf2ms", SHARDED, tmp_path / "out", "--json")
    assert proc.returncode == 0 and "error" not in proc.stderr, proc.stderr
    assert complete(tmp_path / "out")
