"""A bulk manifest is input like any other: what one row gets wrong fails that row alone, what the whole
manifest gets wrong (outputs that nest, a report that would overwrite an input, a file that is a bomb)
stops the run before anything runs, and nothing a run writes ever lands on a source, the manifest or
another row's output. Real CLI subprocesses on the tiny fixtures; no mocks."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import FIXTURES, refused, run_cli

EXE = str(Path(sys.executable).parent / "llama-convert")
TINY = FIXTURES / "qwen2-tied-bf16"
OTHER = FIXTURES / "gqa-tied-bf16-sharded"


def write_manifest(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def report_of(path: Path) -> dict:
    return json.loads(path.read_text())


def by_id(report: dict) -> dict[str, dict]:
    return {r["id"]: r for r in report["rows"]}


def linked_copy(src: Path, dst: Path) -> Path:
    """A model directory of hard links: a copy of the fixture that costs no disk and may be written near."""
    dst.mkdir(parents=True)
    for f in src.iterdir():
        os.link(f, dst / f.name)
    return dst


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- outputs of one manifest are disjoint


def test_outputs_that_repeat_or_nest_are_refused_naming_both_rows_before_anything_runs(tmp_path):
    src = linked_copy(TINY, tmp_path / "hf" / "tiny")
    m = write_manifest(tmp_path / "m.jsonl", [
        {"src": str(src), "out": "ms"},
        {"src": str(src), "out": "ms/sub"},           # inside line 1's output: redoing line 1 would delete it
        {"src": str(src), "out": "other"},
        {"src": str(src), "out": "other"},            # the same output twice
        {"src": str(src), "out": str(src / "out")},   # inside its own source
        {"src": str(src), "out": str(tmp_path / "hf")},  # would hold the sources (and line 5's out)
    ])
    err = refused(run_cli("bulk", m), str(m), "line 2: out", "lies inside the out of line 1",
                  "line 4: out", "is also the out of line 3", "line 5: out", "lies inside its own source",
                  "lies inside the out of line 6", "line 6: out", "would hold its own source", "nothing was run")
    assert err.index("line 2:") < err.index("line 4:") < err.index("line 5:")  # in the manifest's order
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "m.jsonl"]   # no output, report or journal
    assert sorted(p.name for p in src.iterdir()) == sorted(p.name for p in TINY.iterdir())


def test_the_report_and_journal_may_not_be_a_source_an_output_or_the_manifest(tmp_path):
    src = linked_copy(TINY, tmp_path / "a")
    m = write_manifest(tmp_path / "m.jsonl", [{"src": str(src), "out": "ms/one"}])
    manifest_text, sources = m.read_text(), tree_digest(src)
    for report, needles in ((src / "config.json", ("--report", "lies inside the source of line 1")),
                            (src / "new-report.json", ("lies inside the source of line 1",)),
                            (m, ("--report", "is also the manifest")),
                            (tmp_path / "ms" / "one" / "r.json", ("lies inside the out of line 1",))):
        refused(run_cli("bulk", m, "--report", report), *needles)
    assert m.read_text() == manifest_text and tree_digest(src) == sources
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "m.jsonl"]


def test_a_report_that_is_a_directory_is_refused_before_a_row_runs(tmp_path):
    m = write_manifest(tmp_path / "m.jsonl", [{"src": str(TINY), "out": "ms/one"}])
    (tmp_path / "reports").mkdir()
    refused(run_cli("bulk", m, "--report", tmp_path / "reports"), "--report is a directory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.jsonl", "reports"]  # nothing converted
    assert list((tmp_path / "reports").iterdir()) == []                         # no .reports.PID.tmp


# ---------------------------------------------------------------- a bad row fails alone


def test_a_row_with_a_problem_of_its_own_is_invalid_with_its_line_and_key_and_the_others_run(tmp_path):
    (tmp_path / "afile").write_text("not a directory")
    deep_note = json.loads("[" * 200 + "]" * 200)
    rows = [{"src": str(TINY), "out": "out/good"},
            {"src": str(TINY), "out": "out/x1", "dtyp": "float16"},           # unknown key
            {"src": str(TINY), "out": "out/x2", "dtype": "float8"},           # bad value
            {"src": str(TINY), "out": "out/x3", "seq_length": 0},             # bad value
            {"src": "no-such-model", "out": "out/x4"},                        # missing source
            {"src": str(TINY), "out": "afile/x5"},                            # under a regular file
            {"src": str(TINY), "out": "out/x6\0evil"},                        # a NUL byte
            {"src": str(TINY), "out": "out/x7", "note": deep_note},           # a note is text
            {"src": str(TINY), "out": "out/x8", "direction": "ms2hf", "qkv_concat": True},
            {"src": str(TINY), "out": "out/good2", "format": "safetensors"}]
    m = write_manifest(tmp_path / "m.jsonl", rows)
    dry = run_cli("bulk", m, "--dry-run", "--json")
    assert dry.returncode == 2 and dry.stderr == ""   # the run would fail those rows: the dry run says so
    assert [r["action"] for r in json.loads(dry.stdout)["rows"]] == ["convert"] + ["invalid"] * 8 + ["convert"]

    proc = run_cli("bulk", m, "--jobs", "1")
    assert proc.returncode == 2, proc.stderr
    report = report_of(tmp_path / "bulk-report.json")
    statuses = [r["status"] for r in report["rows"]]
    assert statuses == ["converted"] + ["invalid"] * 8 + ["converted"]
    reasons = [r["reason"] for r in report["rows"][1:-1]]
    expected = ["line 2: unknown key 'dtyp' (did you mean 'dtype'?)", "line 3: dtype is 'float8'; choose one of keep", "line 4: seq_length must be between 1",
                "line 5: source no-such-model does not exist", "line 6: out", "line 7: out holds a NUL byte",
                "line 8: note must be a non-empty string", "line 9: qkv_concat is not an option of ms2hf"]
    for reason, needle in zip(reasons, expected):
        assert reason.startswith(f"{m}: ") and needle in reason, reason
    assert "afile is a file, not a directory" in reasons[4]
    invalid_lines = [ln for ln in proc.stderr.splitlines() if " invalid " in ln]
    assert len(invalid_lines) == 8 and all(str(m) in ln and "line " in ln for ln in invalid_lines)
    assert (tmp_path / "afile").read_text() == "not a directory"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good", "good2"]


def test_a_problem_in_the_defaults_is_every_rows_problem_and_stops_the_run(tmp_path):
    m = tmp_path / "m.jsonl"
    m.write_text(json.dumps({"defaults": {"dtype": "float8"}}) + "\n" + json.dumps({"src": str(TINY), "out": "o"}) + "\n")
    refused(run_cli("bulk", m), "defaults: dtype", "nothing was run")
    refused(run_cli("bulk", write_manifest(tmp_path / "n.jsonl", [{"src": str(TINY), "out": "o"}]),
                    "--set", "dtyp=float16"), "--set unknown key 'dtyp' (did you mean 'dtype'?)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.jsonl", "n.jsonl"]


# ---------------------------------------------------------------- files that are bombs or not files


def test_a_yaml_manifest_with_aliases_is_refused_before_they_expand(tmp_path):
    laughs = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    laughs += [f"{chr(98 + i)}: &{chr(98 + i)} [" + ", ".join([f"*{chr(97 + i)}"] * 10) + "]" for i in range(9)]
    m = tmp_path / "m.yaml"
    m.write_text(f"jobs:\n  - src: {TINY}\n    out: o\n    note: &n hello\n  - {{src: {TINY}, out: p, note: *n}}\n")
    refused(run_cli("bulk", m, "--dry-run"), str(m), "line 5: a YAML alias (*n)")
    bomb = tmp_path / "bomb.yaml"   # a billion x's from 400 bytes, if the aliases were expanded
    bomb.write_text(f"jobs:\n  - src: {TINY}\n    out: o\n    note:\n" + "".join(f"      {ln}\n" for ln in laughs))
    refused(run_cli("bulk", bomb, "--dry-run", timeout=60), str(bomb), "YAML alias")
    merge = tmp_path / "merge.yaml"
    merge.write_text(f"defaults: &d {{format: ckpt}}\njobs:\n  - {{<<: *d, src: {TINY}, out: o}}\n")
    refused(run_cli("bulk", merge, "--dry-run"), "line 3: a YAML alias (*d)")


def test_manifests_and_earlier_reports_are_read_only_when_they_are_small_regular_files(tmp_path):
    good = write_manifest(tmp_path / "m.jsonl", [{"src": str(TINY), "out": "o"}])
    zero = tmp_path / "zero.jsonl"
    zero.symlink_to("/dev/zero")
    big = tmp_path / "big.jsonl"
    with open(big, "wb") as f:
        f.truncate(100 << 20)   # sparse: 100 MiB of NULs that cost no disk
    refused(run_cli("bulk", "/dev/zero", "--dry-run", timeout=60), "/dev/zero", "not a regular file")
    refused(run_cli("bulk", zero, "--dry-run", timeout=60), "zero.jsonl", "not a regular file")
    refused(run_cli("bulk", big, "--dry-run", timeout=60), "big.jsonl", "more than the 32 MiB")
    refused(run_cli("bulk", good, "--retry-failed", "/dev/zero", timeout=60), "/dev/zero", "not a regular file")
    refused(run_cli("bulk", good, "--retry-failed", big, timeout=60), "big.jsonl", "more than the 64 MiB")
    (tmp_path / "nested.json").write_text('{"rows": ' + "[" * 100_000 + "]" * 100_000 + "}")
    refused(run_cli("bulk", good, "--retry-failed", tmp_path / "nested.json"), "nested too deeply")
    assert not (tmp_path / "o").exists()


def test_a_deeply_nested_json_row_is_refused_with_its_line(tmp_path):
    m = tmp_path / "m.jsonl"
    m.write_text(json.dumps({"src": str(TINY), "out": "o"}) + "\n" +
                 '{"src": "x", "out": "y", "note": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    refused(run_cli("bulk", m, "--dry-run"), str(m), "line 2: nested too deeply")


def test_a_csv_manifest_saved_by_a_spreadsheet_with_a_byte_order_mark_is_read(tmp_path):
    text = f"src,out,format,\n{TINY},a,safetensors,\n{OTHER},b,,\n"
    plain = tmp_path / "plain.csv"
    plain.write_text(text)
    for name, data in (("bom.csv", b"\xef\xbb\xbf" + text.encode()), ("utf16.csv", text.encode("utf-16"))):
        (tmp_path / name).write_bytes(data)
        proc = run_cli("bulk", tmp_path / name, "--dry-run", "--json")
        assert proc.returncode == 0, proc.stderr
        want = json.loads(run_cli("bulk", plain, "--dry-run", "--json").stdout)["rows"]
        assert json.loads(proc.stdout)["rows"] == want


# ---------------------------------------------------------------- interrupted runs still leave a report


def _first_child(pid: int, seconds: float = 60) -> int:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                if kids := (task / "children").read_text().split():
                    return int(kids[0])
            except OSError:
                pass
        time.sleep(0.005)
    raise AssertionError("the driver started no runner")


def test_ctrl_c_before_any_row_finishes_leaves_a_report_of_every_row_and_retry_failed_runs_them(tmp_path):
    m = write_manifest(tmp_path / "m.jsonl", [{"src": str(p), "out": f"out/{p.name}"} for p in (OTHER, TINY)])
    driver = subprocess.Popen([EXE, "bulk", str(m), "--jobs", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    _first_child(driver.pid)
    driver.send_signal(signal.SIGINT)
    _, err = driver.communicate(timeout=120)
    assert driver.returncode == 130, err
    report = report_of(tmp_path / "bulk-report.json")
    assert report["exit_code"] == 130 and report["stopped"] == "interrupted (SIGINT)"
    assert report["rows_finished"] == 0 and report["rows_total"] == 2
    assert [r["status"] for r in report["rows"]] == ["interrupted", "not_started"]
    assert not (tmp_path / "out").exists() or [p.name for p in (tmp_path / "out").iterdir()] == []
    again = run_cli("bulk", m, "--retry-failed", tmp_path / "bulk-report.json")
    assert again.returncode == 0, again.stderr
    assert [r["status"] for r in report_of(tmp_path / "bulk-report.json")["rows"]] == ["converted", "converted"]


# ---------------------------------------------------------------- many rows


def test_rows_whose_sources_are_the_same_files_are_planned_once(tmp_path):
    srcs = [linked_copy(TINY, tmp_path / "hf" / f"m{i}") for i in range(20)]
    copied = tmp_path / "hf" / "copied"   # the same bytes in new files: planned on its own
    copied.mkdir()
    for f in TINY.iterdir():
        (copied / f.name).write_bytes(f.read_bytes())
    m = write_manifest(tmp_path / "m.jsonl", [{"src": str(s), "out": f"ms/{s.name}"} for s in [*srcs, copied]] +
                       [{"src": str(srcs[0]), "out": "ms/st", "format": "safetensors"}])
    from llama_convert import BulkOptions, plan_bulk
    plan = plan_bulk(m, BulkOptions())
    assert plan["plans"] == {"built": 3, "shared": 19}   # the links, the copy, other options
    assert {r["memory_estimate"] for r in plan["rows"][:21]} == {plan["rows"][0]["memory_estimate"]}
    assert all(r["action"] == "convert" for r in plan["rows"])


def test_sources_may_repeat_and_nest_but_nothing_may_overlap_an_output_or_the_report():
    from llama_convert.bulk.overlap import MANIFEST, OUT, REPORT, RETRY, SOURCE, Named, conflicts

    def at(path: str, kind: str, role: str, where: str | None = None) -> Named:
        return Named(path.replace("/", "\0"), kind, role, path, where)
    fine = [at("/m/models", SOURCE, "source", "line 1"), at("/m/models", SOURCE, "source", "line 2"),
            at("/m/models/inner", SOURCE, "source", "line 3"), at("/m/models/list.jsonl", MANIFEST, "the manifest"),
            at("/m/r.json", REPORT, "--report"), at("/m/r.json", RETRY, "--retry-failed"),
            at("/m/out/a", OUT, "out", "line 1"), at("/m/out/ab", OUT, "out", "line 2")]
    assert conflicts(fine) == []
    assert conflicts([*fine, at("/m/out", OUT, "out", "line 9")]) == [
        "line 1: out /m/out/a lies inside the out of line 9", "line 2: out /m/out/ab lies inside the out of line 9"]
    assert conflicts([*fine, at("/m/models/list.jsonl.journal", REPORT, "the journal")]) == [
        "the journal /m/models/list.jsonl.journal lies inside the source of line 1"]
    # 10,000 rows reading one source, writing side by side: no pair is compared twice over
    many = [at("/m/models", SOURCE, "source", f"line {i}") for i in range(10_000)]
    many += [at(f"/m/out/{i}", OUT, "out", f"line {i}") for i in range(10_000)]
    assert conflicts(many) == []
