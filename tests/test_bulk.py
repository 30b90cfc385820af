"""`llama-convert bulk`: many conversions from one manifest, decided done by conversion.json, resumable,
one bad row isolated from the rest, retried only when a retry can help, admitted by memory.
Real CLI subprocesses on the tiny fixtures and real models; no mocks."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ALL_MODEL_DIRS, FIXTURES, make_hub_cache, run_cli

EXE = str(Path(sys.executable).parent / "llama-convert")


def write_manifest(path: Path, rows: list[dict]) -> Path:
    path.write_text("# a bulk manifest\n" + "".join(json.dumps(r) + "\n" for r in rows))
    return path


def report_of(manifest: Path) -> dict:
    return json.loads((manifest.parent / "bulk-report.json").read_text())


def by_id(report: dict) -> dict[str, dict]:
    return {r["id"]: r for r in report["rows"]}


# ---------------------------------------------------------------- the manifest (and tests/test_bulk_manifest.py)


def test_csv_and_yaml_manifests_say_the_same_as_jsonl_and_rows_beat_defaults_beat_the_command_line(tmp_path):
    src = FIXTURES / "mha-untied-fp32"
    (tmp_path / "m.csv").write_text(f"src,out,dtype,format\n{src},a,,\n{src},b,float16,safetensors\n")
    (tmp_path / "m.yaml").write_text(f"defaults:\n  format: safetensors\njobs:\n  - {{src: {src}, out: a}}\n"
                                     f"  - {{src: {src}, out: b, dtype: float16}}\n")
    write_manifest(tmp_path / "m.jsonl", [{"defaults": {"format": "safetensors"}},
                                          {"src": str(src), "out": "a"},
                                          {"src": str(src), "out": "b", "dtype": "float16"}])
    seen = {}
    for name in ("m.csv", "m.yaml", "m.jsonl"):
        proc = run_cli("bulk", tmp_path / name, "--dry-run", "--json", "--set", "dtype=bfloat16", "--set", "format=ckpt")
        assert proc.returncode == 0, proc.stderr
        seen[name] = [(r["id"], r["out"], r["action"]) for r in json.loads(proc.stdout)["rows"]]
    assert seen["m.csv"] == seen["m.yaml"] == seen["m.jsonl"]
    assert [r[1] for r in seen["m.csv"]] == [str(tmp_path / "a"), str(tmp_path / "b")]  # relative to the manifest
    from llama_convert.bulk.manifest import read_manifest
    for name, fmt in (("m.csv", "ckpt"), ("m.yaml", "safetensors"), ("m.jsonl", "safetensors")):
        a, b = read_manifest(tmp_path / name, {"dtype": "bfloat16", "format": "ckpt"})
        assert (a.options.dtype, a.options.format) == ("bfloat16", fmt), name   # defaults beat the command line
        assert (b.options.dtype, b.options.format) == ("float16", "safetensors")  # the row beats both


# ---------------------------------------------------------------- every model, then resume


@pytest.fixture(scope="module")
def all_models(tmp_path_factory):
    """One bulk run over every fixture and real model (one row also verified), and its report."""
    root = tmp_path_factory.mktemp("bulk-all")
    rows = [{"src": str(p), "out": f"out/{p.name}"} for p in ALL_MODEL_DIRS]
    rows[0]["verify"] = True
    m = write_manifest(root / "models.jsonl", rows)
    proc = run_cli("bulk", m, "--jobs", "2", timeout=600)
    return m, proc


def test_the_local_executor_converts_every_fixture_and_real_model(all_models):
    m, proc = all_models
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = report_of(m)
    assert report["counts"]["converted"] == len(ALL_MODEL_DIRS) and report["exit_code"] == 0
    for row in report["rows"]:
        record = json.loads((Path(row["out"]) / "conversion.json").read_text())
        assert row["bytes"] == sum(f["size"] for f in record["outputs"])
        assert row["attempts"] == 1 and row["node"]
    verified = report["rows"][0]["verify"]
    assert verified["passed"] is True and verified["max_abs_diff"] < 1e-4
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("[")]
    assert len(lines) == len(ALL_MODEL_DIRS) and lines[-1].startswith(f"[{len(ALL_MODEL_DIRS)}/{len(ALL_MODEL_DIRS)}]")
    assert proc.stdout.splitlines()[0].split()[:5] == ["id", "status", "secs", "attempts", "verify"]  # the table
    first = next(ln for ln in proc.stdout.splitlines() if ln.startswith(report["rows"][0]["id"] + " "))
    assert " PASS ratio " in first and " max_abs " in first and " top1 1.000" in first, first


def test_a_rerun_skips_every_done_row_and_says_why(all_models):
    m, _ = all_models
    proc = run_cli("bulk", m)
    assert proc.returncode == 0, proc.stderr
    rows = report_of(m)["rows"]
    assert {r["status"] for r in rows} == {"skipped"}
    assert rows[0]["reason"] == "done (conversion.json matches) and verified"
    assert all(r["reason"].startswith("done (conversion.json matches)") for r in rows)


def test_one_changed_option_reruns_that_row_only(all_models):
    m, _ = all_models
    rows = [json.loads(ln) for ln in m.read_text().splitlines() if ln.startswith("{")]
    rows[1]["format"] = "safetensors"
    changed = write_manifest(m, rows)
    dry = run_cli("bulk", changed, "--dry-run", "--json")
    actions = {r["id"]: (r["action"], r["reason"]) for r in json.loads(dry.stdout)["rows"]}
    assert actions[Path(rows[1]["out"]).name] == ("convert", "options differ: format")
    proc = run_cli("bulk", changed)
    assert proc.returncode == 0, proc.stderr
    statuses = [r["status"] for r in report_of(m)["rows"]]
    assert statuses[1] == "converted" and statuses.count("skipped") == len(rows) - 1
    assert (Path(m.parent / rows[1]["out"]) / "param_name_map.json").exists()


def test_a_done_row_asked_to_verify_now_is_verified_not_skipped(all_models):
    m, _ = all_models
    rows = [json.loads(ln) for ln in m.read_text().splitlines() if ln.startswith("{")]
    rows[2]["verify"] = True
    proc = run_cli("bulk", write_manifest(m, rows))
    assert proc.returncode == 0, proc.stderr
    row = by_id(report_of(m))[Path(rows[2]["out"]).name]
    assert row["status"] == "verified" and row["verify"]["passed"] is True
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith(row["id"] + " "))
    assert line.split()[1] == "verified" and " PASS " in line, line


def test_bulk_quiet_prints_nothing_and_keeps_the_exit_status(all_models):
    m, _ = all_models
    proc = run_cli("bulk", m, "-q")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")


@pytest.mark.skipif(subprocess.run(["which", "script"], capture_output=True).returncode != 0,
                    reason="util-linux script is not installed")
def test_on_a_terminal_bulk_shows_the_running_rows_and_their_phase(tmp_path):
    rows = [{"src": str(FIXTURES / "mha-untied-fp32"), "out": "out/a", "id": "a"},
            {"src": str(FIXTURES / "gqa-llama3-rope"), "out": "out/b", "id": "b"}]
    m = write_manifest(tmp_path / "m.jsonl", rows)
    proc = subprocess.run(["script", "-q", "-e", "-c", f"{EXE} bulk {m} --jobs 1", "/dev/null"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:]
    screen = proc.stdout.replace("\r", "\n")
    assert "running: a (convert)" in screen and "running: b (convert)" in screen, screen[-2000:]
    assert screen.index("running: a (convert)") < screen.index("[1/2] a converted")


# ---------------------------------------------------------------- isolation, kills, retries, memory


def _copy_model(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_a_row_with_a_corrupt_shard_does_not_stop_the_others(tmp_path):
    bad = _copy_model(FIXTURES / "gqa-tied-bf16-sharded", tmp_path / "models" / "bad")
    shard = bad / "model-00002-of-00004.safetensors"
    shard.write_bytes(shard.read_bytes()[:-7])  # a download cut short
    m = write_manifest(tmp_path / "m.jsonl", [{"src": str(FIXTURES / "mha-untied-fp32"), "out": "out/a"},
                                              {"src": str(bad), "out": "out/bad"},
                                              {"src": str(FIXTURES / "qwen2-tied-bf16"), "out": "out/c"}])
    proc = run_cli("bulk", m, "--jobs", "1")
    assert proc.returncode == 2
    rows = by_id(report_of(m))
    assert rows["a"]["status"] == rows["c"]["status"] == "converted"
    assert rows["bad"]["status"] in ("invalid", "failed") and shard.name in rows["bad"]["reason"]
    assert not (tmp_path / "out" / "bad").exists()
    assert proc.stdout.splitlines()[1].startswith("bad ")  # failures first in the table


def _children(pid: int) -> list[int]:
    kids = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids += [int(k) for k in (task / "children").read_text().split()]
        except OSError:
            pass
    return kids


def _wait_for_child(pid: int, seconds: float = 30) -> int:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if kids := _children(pid):
            return kids[0]
        time.sleep(0.005)
    raise AssertionError("the driver started no runner")


def test_a_runner_killed_once_succeeds_on_retry(tmp_path):
    m = write_manifest(tmp_path / "m.jsonl", [{"src": str(FIXTURES / "gqa-llama3-rope"), "out": "out/a"}])
    driver = subprocess.Popen([EXE, "bulk", str(m), "--jobs", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    os.kill(_wait_for_child(driver.pid), signal.SIGKILL)
    _, err = driver.communicate(timeout=120)
    assert driver.returncode == 0, err
    row = report_of(m)["rows"][0]
    assert (row["status"], row["attempts"]) == ("converted", 2)
    journal = (tmp_path / "bulk-report.json.journal").read_text()
    assert '"event": "retry"' in journal and "killed by SIGKILL" in journal


def test_exit_2_bad_input_is_final_and_not_retried(tmp_path):
    not_ours = tmp_path / "out" / "a"
    not_ours.mkdir(parents=True)
    (not_ours / "precious.txt").write_text("keep me")  # an OUT that is no llama-convert output: refused
    m = write_manifest(tmp_path / "m.jsonl", [{"src": str(FIXTURES / "gqa-llama3-rope"), "out": "out/a"}])
    proc = run_cli("bulk", m, "--retries", "3")
    assert proc.returncode == 2
    row = report_of(m)["rows"][0]
    assert (row["status"], row["attempts"], row["exit_code"]) == ("failed", 1, 2)
    assert (not_ours / "precious.txt").read_text() == "keep me"


def test_a_driver_killed_mid_run_is_finished_by_a_rerun_and_the_report_holds_every_row_once(tmp_path):
    models = [p for p in ALL_MODEL_DIRS if p.parent == FIXTURES][:6]
    m = write_manifest(tmp_path / "m.jsonl", [{"src": str(p), "out": f"out/{p.name}"} for p in models])
    driver = subprocess.Popen([EXE, "bulk", str(m), "--jobs", "1"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    journal = tmp_path / "bulk-report.json.journal"
    end = time.monotonic() + 120
    while time.monotonic() < end and (not journal.exists() or journal.read_text().count('"event": "row"') < 2):
        time.sleep(0.02)
    runner = _wait_for_child(driver.pid)
    driver.kill()
    driver.wait()
    while Path(f"/proc/{runner}").exists():  # the runner hears its driver die (SIGTERM) and cleans up
        time.sleep(0.02)
    before = journal.read_text().count('"event": "row"')
    assert 2 <= before < len(models)
    proc = run_cli("bulk", m)
    assert proc.returncode == 0, proc.stderr
    rows = report_of(m)["rows"]
    assert sorted(r["id"] for r in rows) == sorted(p.name for p in models)  # each row once
    assert [r["status"] for r in rows].count("skipped") >= before
    assert all(r["status"] in ("converted", "skipped") for r in rows)
    assert [p.name for p in (tmp_path / "out").iterdir() if p.name.startswith(".")] == []  # no partial debris


def test_a_verify_row_that_can_never_fit_the_memory_budget_fails_at_once(tmp_path):
    m = write_manifest(tmp_path / "m.jsonl", [
        {"src": str(FIXTURES / "mha-untied-fp32"), "out": "out/v", "verify": True},
        {"src": str(FIXTURES / "gqa-llama3-rope"), "out": "out/c"}])
    proc = run_cli("bulk", m, "--memory-budget", "1GiB")
    assert proc.returncode == 2
    rows = by_id(report_of(m))
    assert rows["v"]["status"] == "failed" and rows["v"]["attempts"] == 0
    assert rows["v"]["reason"].startswith("needs 1.5") and "memory budget is 1.00 GiB" in rows["v"]["reason"]
    assert not (tmp_path / "out" / "v").exists()
    assert rows["c"]["status"] == "converted"  # a conversion streams: it fits


# ---------------------------------------------------------------- manifests written for the user


def test_bulk_plan_lists_every_hub_cache_snapshot_with_its_repo_and_commit(tmp_path):
    cache = tmp_path / "hub"
    make_hub_cache(cache, FIXTURES / "mha-untied-fp32", "org/one", "a" * 40)
    make_hub_cache(cache, FIXTURES / "qwen2-tied-bf16", "org/two", "b" * 40)
    proc = run_cli("bulk", "plan", "--from-hf-cache", cache, tmp_path / "ms")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert [(r["repo"], r["commit"], r["out"]) for r in rows] == [
        ("org/one", "a" * 40, str(tmp_path / "ms" / "org--one")), ("org/two", "b" * 40, str(tmp_path / "ms" / "org--two"))]
    env_proc = subprocess.run([EXE, "bulk", "plan", "--from-hf-cache", tmp_path / "ms2"], capture_output=True, text=True,
                              env={**os.environ, "HF_HUB_CACHE": str(cache)})
    assert [json.loads(ln)["repo"] for ln in env_proc.stdout.splitlines() if ln.startswith("{")] == ["org/one", "org/two"]


def test_bulk_over_a_hub_cache_with_one_flipped_byte_fails_that_row_as_a_corrupt_download(tmp_path):
    cache = tmp_path / "hub"
    make_hub_cache(cache, FIXTURES / "mha-untied-fp32", "org/good")
    snap = make_hub_cache(cache, FIXTURES / "gqa-llama3-rope", "org/flipped")
    blob = (snap / "model.safetensors").resolve()
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0x10
    blob.write_bytes(bytes(data))
    m = tmp_path / "m.jsonl"
    assert run_cli("bulk", "plan", "--from-hf-cache", cache, tmp_path / "ms", "-o", m).returncode == 0
    proc = run_cli("bulk", m)
    assert proc.returncode == 2
    rows = by_id(report_of(m))
    assert rows["org--good"]["status"] == "converted" and rows["org--good"]["repo"] == "org/good"
    bad = rows["org--flipped"]
    assert bad["status"] == "failed" and bad["reason"].startswith("corrupt download") and "model.safetensors" in bad["reason"]
    assert not (tmp_path / "ms" / "org--flipped").exists()
    again = run_cli("bulk", m, "--retry-failed", tmp_path / "bulk-report.json", "--json")
    report = json.loads(again.stdout)
    assert again.returncode == 2 and by_id(report)["org--good"]["status"] == "converted"  # carried over
    ran = [json.loads(ln) for ln in (tmp_path / "bulk-report.json.journal").read_text().splitlines()]
    assert [e["id"] for e in ran if e["event"] == "row" and e["run"] == report["run"]] == ["org--flipped"]


def test_bulk_plan_from_a_directory_writes_one_row_per_model(tmp_path):
    m = tmp_path / "m.jsonl"
    roundabout = FIXTURES / ".." / "fixtures" / "."   # written as given would be .../fixtures/../fixtures/...
    proc = run_cli("bulk", "plan", "--from-dir", roundabout, tmp_path / "x" / ".." / "ms", "-o", m)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(ln) for ln in m.read_text().splitlines() if ln.startswith("{")]
    assert all(r["src"] == str(FIXTURES / r["id"]) and r["out"] == str(tmp_path / "ms" / r["id"]) for r in rows), rows[0]
    assert [r["id"] for r in rows] == sorted(p.name for p in FIXTURES.iterdir() if (p / "config.json").exists())
    assert run_cli("bulk", m, "--dry-run").returncode == 0
