"""The property of bulk manifests: whatever rows, nesting, paths, encodings and sizes a manifest holds, bulk
succeeds or exits 2 naming the manifest (and the line, for a row's own problem), never changes a source
byte, and never writes anywhere but the rows' own outputs and its report. Hypothesis writes the manifests;
most examples are dry runs, a few convert the tiniest fixture for real. No row verifies: no MindSpore."""
from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import os
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import FIXTURES, run_cli

TINY = FIXTURES / "qwen2-tied-bf16"
FUZZ = settings(derandomize=True, database=None, deadline=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
_example = itertools.count()


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """models/a (with a model inside it, models/a/inner), models/b, and a regular file models/afile."""
    root = tmp_path_factory.mktemp("bulk-properties")
    for name in ("a", "a/inner", "b"):
        (root / "models" / name).mkdir(parents=True)
        for f in TINY.iterdir():
            os.link(f, root / "models" / name / f.name)
    (root / "models" / "afile").write_text("a regular file")
    return root


def digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# Mostly good rows, so that most examples run something; each kind of trouble often enough to be met.
SOURCES = st.sampled_from(["../models/a", "../models/b", "../models/a/inner"] * 4 +
                          ["../models/afile", "../nowhere", "", 7, "../models/a\0"])
SPECIAL_OUTS = st.sampled_from(["../models/a/out", "../models/afile/x", "../models", "../models/b", ".", "..",
                                "m.jsonl", "m.csv", "bulk-report.json", "bulk-report.json.journal", "", "x\0y",
                                "~nouser/x", "a" * 5000, 3])
NOTES = st.recursive(st.one_of(st.text(max_size=8), st.integers(), st.booleans()),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
                     max_leaves=12)
OPTIONS = {
    "dtype": st.sampled_from(["keep", "float16", "bfloat16", "float8", 1]),
    "format": st.sampled_from(["ckpt", "safetensors", "CKPT"]),
    "direction": st.sampled_from(["hf2ms", "hf2ms", "ms2hf", "sideways"]),
    "seq_length": st.one_of(st.integers(1, 64), st.integers(-2, 2**70), st.text(max_size=4)),
    "max_shard_size": st.sampled_from(["100KB", "1MB", "0", "inf", 10**40, "1" * 60]),
    "qkv_concat": st.sampled_from([True, "yes", "maybe"]),
    "verify": st.sampled_from([False, "no"]),   # never true: verify loads MindSpore
    "note": NOTES, "id": st.text(max_size=6), "dtyp": st.just("float16")}
EXTRA = st.lists(st.sampled_from(sorted(OPTIONS)), max_size=2, unique=True).flatmap(
    lambda keys: st.fixed_dictionaries({k: OPTIONS[k] for k in keys}))


@st.composite
def row_lists(draw) -> list[dict]:
    """Rows whose outputs are mostly fresh, sometimes the same as, inside or around an earlier row's."""
    rows: list[dict] = []
    for i in range(draw(st.integers(0, 5))):
        earlier = [r["out"] for r in rows if isinstance(r["out"], str) and r["out"]]
        how = draw(st.sampled_from(["fresh"] * 6 + ["same", "inside", "around", "special"]))
        if how == "special":
            out = draw(SPECIAL_OUTS)
        elif how == "fresh" or not earlier:
            out = draw(st.sampled_from(["out/", "", "ü n/", "deep/er/"])) + f"r{i}"
        elif how == "same":
            out = draw(st.sampled_from(earlier))
        elif how == "inside":
            out = draw(st.sampled_from(earlier)) + "/sub"
        else:
            out = os.path.dirname(draw(st.sampled_from(earlier))) or "."
        rows.append({"src": draw(SOURCES), "out": out, **draw(EXTRA)})
    return rows


def manifest_bytes(rows: list[dict], kind: str, encoding: str) -> bytes:
    rows = [{k: v for k, v in r.items() if v is not None} for r in rows]
    if kind == "jsonl":
        text = "# written by hypothesis\n" + "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    elif kind == "yaml":
        text = yaml.safe_dump({"jobs": rows}, allow_unicode=True)
    else:
        header = sorted({k for r in rows for k in r}) or ["src", "out"]
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(header)
        for r in rows:
            writer.writerow(["" if k not in r else json.dumps(r[k]) if isinstance(r[k], (list, dict)) else r[k]
                             for k in header])
        text = buf.getvalue()
    return text.encode(encoding, errors="replace") if encoding != "utf-8-sig" else b"\xef\xbb\xbf" + text.encode()


MANIFESTS = st.tuples(row_lists(), st.sampled_from(["jsonl", "csv", "yaml"]),
                      st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "latin-1"]))


def write_example(world: Path, manifest) -> Path:
    rows, kind, encoding = manifest
    work = world / f"ex{next(_example)}"
    work.mkdir()
    m = work / f"m.{kind}"
    m.write_bytes(manifest_bytes(rows, kind, encoding))
    return m


def assert_refused_or_named(proc, m: Path) -> dict | None:
    """Exit 0, or exit 2 with one line naming the manifest, or (a dry run) rows each invalid with its line."""
    assert proc.returncode in (0, 2), (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr[-3000:]
    if proc.returncode == 2 and not proc.stdout.strip():
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and str(m) in lines[0], proc.stderr
        return None
    return json.loads(proc.stdout) if proc.stdout.strip().startswith("{") else None


@settings(FUZZ, max_examples=30)
@given(manifest=MANIFESTS)
def test_a_dry_run_of_any_manifest_plans_or_names_the_manifest_and_line(world, manifest):
    m = write_example(world, manifest)
    proc = run_cli("bulk", m, "--dry-run", "--json", timeout=120)
    plan = assert_refused_or_named(proc, m)
    if plan is not None:
        for row in plan["rows"]:
            assert row["action"] in ("convert", "invalid"), row
            if row["action"] == "invalid":
                assert row["reason"].startswith(f"{m}: line "), row
        assert plan["exit_code"] == proc.returncode == (2 if any(r["action"] == "invalid" for r in plan["rows"]) else 0)
    assert sorted(p.name for p in m.parent.iterdir()) == [m.name]   # a dry run writes nothing


def written_where_allowed(work: Path, before: set[Path], after: set[Path], rows: list[dict]) -> list[Path]:
    """New paths that are neither inside a row's output, nor the report and journal, nor a parent
    directory made for an output (mkdir -p)."""
    outs = []
    for r in rows:
        out = r.get("out")
        if isinstance(out, str) and out.strip() and "\0" not in out and not out.startswith("~"):
            outs.append(Path(os.path.realpath(work / out.strip())))
    allowed = {work / "bulk-report.json", work / "bulk-report.json.journal"}
    return [p for p in sorted(after - before) if p not in allowed
            and not any(p == o or p.is_relative_to(o) or (p.is_dir() and o.is_relative_to(p)) for o in outs)]


@settings(FUZZ, max_examples=10)
@given(manifest=MANIFESTS)
def test_a_real_run_of_any_manifest_changes_no_source_and_writes_only_its_outputs(world, manifest):
    sources = digest(world / "models")
    before = set(world.rglob("*"))
    m = write_example(world, manifest)
    proc = run_cli("bulk", m, "--jobs", "2", "--json", "--set", "hash=false", timeout=600)
    report = assert_refused_or_named(proc, m)
    if report is not None:
        for row in report["rows"]:
            assert row["status"] in ("converted", "invalid", "failed"), row
            if row["status"] == "invalid":
                assert row["reason"].startswith(f"{m}: line "), row
    assert digest(world / "models") == sources
    strays = written_where_allowed(m.parent, before | {m, m.parent}, set(world.rglob("*")), manifest[0])
    assert strays == [], strays
