"""SRC named as HuggingFace users name models: a hub repo id (at --revision) found in the local hub cache
(HF_HUB_CACHE or HF_HOME, resolved by huggingface_hub), or a models--ORG--NAME cache folder. Nothing is
fetched without --download; these tests run with the hub offline and a cache made in tmp."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import FIXTURES, make_hub_cache, refused

EXE = Path(sys.executable).parent / "llama-convert"
SRC = FIXTURES / "gqa-tied-bf16-sharded"
OTHER = FIXTURES / "mha-untied-fp32"
MAIN, V2 = "1" * 40, "2" * 40


def run(*args, hub: Path | None = None, home: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_CACHE", "HF_HOME", "HUGGINGFACE_HUB_CACHE")}
    env["HF_HUB_OFFLINE"] = "1"   # belt and braces: no test may touch the network
    if hub:
        env["HF_HUB_CACHE"] = str(hub)
    if home:
        env["HF_HOME"] = str(home)
    return subprocess.run([str(EXE), *map(str, args)], capture_output=True, text=True, timeout=120, env=env)


def two_revisions(hub: Path) -> Path:
    """org/tiny with main at one commit (SRC) and tag v2 at another (OTHER's files)."""
    make_hub_cache(hub, SRC, "org/tiny", MAIN)
    make_hub_cache(hub, OTHER, "org/tiny", V2)
    repo = hub / "models--org--tiny"
    (repo / "refs" / "main").write_text(MAIN)
    (repo / "refs" / "v2").write_text(V2)
    return repo


def source_of(out: Path) -> dict:
    return json.loads((out / "conversion.json").read_text())["source"]


def test_a_repo_id_in_hf_hub_cache_converts_and_records_repo_and_commit(tmp_path):
    make_hub_cache(tmp_path / "hub", SRC, "org/tiny", MAIN)
    proc = run("hf2ms", "org/tiny", tmp_path / "out", hub=tmp_path / "hub")

    assert proc.returncode == 0, proc.stderr
    assert source_of(tmp_path / "out")["hub"] == {"repo_id": "org/tiny", "commit": MAIN}


def test_a_repo_id_is_found_under_hf_home_as_huggingface_hub_finds_it(tmp_path):
    make_hub_cache(tmp_path / "home" / "hub", SRC, "org/tiny", MAIN)
    proc = run("hf2ms", "org/tiny", tmp_path / "out", home=tmp_path / "home")
    assert proc.returncode == 0, proc.stderr


def test_revision_picks_a_tag_or_a_commit(tmp_path):
    two_revisions(tmp_path / "hub")
    for rev, n in (("v2", 1), (V2, 2), ("main", 3)):
        out = tmp_path / f"out{n}"
        proc = run("hf2ms", "org/tiny", out, "--revision", rev, hub=tmp_path / "hub")
        assert proc.returncode == 0, proc.stderr
        assert source_of(out)["hub"]["commit"] == (MAIN if rev == "main" else V2)


def test_a_hub_cache_folder_converts_its_main_snapshot_or_the_revision_asked(tmp_path):
    repo = two_revisions(tmp_path / "hub")
    assert run("hf2ms", repo, tmp_path / "a").returncode == 0
    assert source_of(tmp_path / "a")["hub"] == {"repo_id": "org/tiny", "commit": MAIN}
    assert run("hf2ms", repo, tmp_path / "b", "--revision", "v2").returncode == 0
    assert source_of(tmp_path / "b")["hub"]["commit"] == V2


def test_a_revision_the_cache_folder_lacks_names_the_snapshots_it_has(tmp_path):
    repo = two_revisions(tmp_path / "hub")
    refused(run("hf2ms", repo, tmp_path / "out", "--revision", "v9"), str(repo), "'v9'", MAIN[:12], "--revision")
    assert not (tmp_path / "out").exists()


def test_a_repo_id_not_in_the_cache_says_so_and_offers_download_without_fetching(tmp_path):
    (tmp_path / "hub").mkdir()
    refused(run("hf2ms", "org/absent", tmp_path / "out", hub=tmp_path / "hub"),
            "org/absent", "source directory not found", str(tmp_path / "hub"), "--download")
    assert list((tmp_path / "hub").iterdir()) == []


def test_verify_takes_a_repo_id_too_and_refuses_a_missing_one_before_importing_a_framework(tmp_path):
    (tmp_path / "hub").mkdir()
    refused(run("verify", "org/absent", tmp_path, hub=tmp_path / "hub"), "org/absent", "--download")


def test_revision_with_a_plain_directory_is_refused(tmp_path):
    refused(run("hf2ms", SRC, tmp_path / "out", "--revision", "v2"), "--revision", str(SRC))


def test_a_flipped_byte_in_a_blob_of_a_repo_id_is_a_corrupt_download(tmp_path):
    snap = make_hub_cache(tmp_path / "hub", SRC, "org/tiny", MAIN)
    blob = sorted(snap.glob("*.safetensors"))[0].resolve()
    data = bytearray(blob.read_bytes())
    data[-1] ^= 1
    blob.write_bytes(bytes(data))
    refused(run("hf2ms", "org/tiny", tmp_path / "out", hub=tmp_path / "hub"), "corrupt download")
    assert not (tmp_path / "out").exists()


def test_a_hub_cache_folder_without_snapshots_is_named_as_one(tmp_path):
    repo = tmp_path / "hub" / "models--org--tiny"
    (repo / "blobs").mkdir(parents=True)
    refused(run("hf2ms", repo, tmp_path / "out"), str(repo), "hub cache folder with no snapshots/", "--download")


def bulk_rows(manifest: Path, rows: list[dict], *args: str, hub: Path) -> tuple[subprocess.CompletedProcess, list[dict]]:
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = run("bulk", manifest, *args, hub=hub)
    if "--dry-run" in args:
        return proc, json.loads(proc.stdout)["rows"]
    return proc, json.loads((manifest.parent / "bulk-report.json").read_text())["rows"]


def test_a_bulk_rows_src_may_be_a_repo_id_found_in_the_hub_cache_at_the_rows_revision(tmp_path):
    two_revisions(tmp_path / "hub")
    proc, rows = bulk_rows(tmp_path / "m.jsonl", [{"src": "org/tiny", "out": "main"},
                                                  {"src": "org/tiny", "out": "v2", "revision": "v2"}],
                           "--jobs", "1", hub=tmp_path / "hub")
    assert proc.returncode == 0, proc.stderr
    assert [r["status"] for r in rows] == ["converted", "converted"]
    assert [(r["repo"], r["commit"]) for r in rows] == [("org/tiny", MAIN), ("org/tiny", V2)]
    assert source_of(tmp_path / "main")["hub"]["commit"] == MAIN and source_of(tmp_path / "v2")["hub"]["commit"] == V2


def test_a_bulk_rows_repo_id_the_cache_lacks_fails_that_row_alone_naming_manifest_and_line_and_fetches_nothing(tmp_path):
    make_hub_cache(tmp_path / "hub", SRC, "org/tiny", MAIN)
    m = tmp_path / "m.jsonl"
    proc, rows = bulk_rows(m, [{"src": "org/absent", "out": "absent"}, {"src": "org/tiny", "out": "tiny"}],
                           "--jobs", "1", hub=tmp_path / "hub")
    assert proc.returncode == 2 and [r["status"] for r in rows] == ["invalid", "converted"], proc.stderr
    reason = rows[0]["reason"]
    assert reason.startswith(f"{m}: line 1: src org/absent: source directory not found") and "\n" not in reason
    assert '"download": true' in reason and "revision 'main'" in reason
    assert sorted(p.name for p in (tmp_path / "hub").iterdir()) == ["models--org--tiny"]
    assert not (tmp_path / "absent").exists()


def test_a_dry_run_fetches_nothing_even_for_a_row_that_may_download(tmp_path):
    (tmp_path / "hub").mkdir()
    proc, rows = bulk_rows(tmp_path / "m.jsonl", [{"src": "org/absent", "out": "absent", "download": True}],
                           "--dry-run", "--json", hub=tmp_path / "hub")
    assert proc.returncode == 2 and rows[0]["action"] == "invalid"
    assert "org/absent: not in the local hub cache; a run fetches it first (download), a dry run does not" in rows[0]["reason"]
    assert list((tmp_path / "hub").iterdir()) == []


def test_revision_and_download_are_keys_of_an_hf2ms_row_only(tmp_path):
    from llama_convert.bulk.manifest import read_manifest
    m = tmp_path / "m.jsonl"
    (tmp_path / "ms").mkdir()
    m.write_text(json.dumps({"src": str(tmp_path / "ms"), "out": "o", "direction": "ms2hf", "revision": "v2"}) + "\n"
                 + json.dumps({"src": str(SRC), "out": "p", "download": "maybe"}) + "\n")
    ms2hf, hf2ms = read_manifest(m)
    assert "revision is not an option of ms2hf" in ms2hf.problem
    assert "line 2: download" in hf2ms.problem
