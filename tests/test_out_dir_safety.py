"""OUT_DIR is a transaction: it never overlaps a source, --force replaces only what is ours (exactly what
an earlier output's conversion.json lists), the final rename never replaces anything it was not told to,
a failed run removes the parents it made, dead runs' debris is reclaimed, a full disk is named."""
from __future__ import annotations

import json
import re
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FIXTURES, make_hub_cache, refused, run_cli, tree_hash, without_progress
from llama_convert import ConvertError, convert_hf2ms
from llama_convert.output.fs import OutDirLock, rename_noreplace
from llama_convert.output.out_dir import RECORD_KEYS
from llama_convert.console.progress import Progress

MHA = FIXTURES / "mha-untied-fp32"
SHARDED = FIXTURES / "gqa-tied-bf16-sharded"
TOKENIZED = FIXTURES / "gqa-llama3-rope"  # ships tokenizer.json, tokenizer_config.json, special_tokens_map.json
HOST = socket.gethostname()


def src_copy(tmp: Path, name: str = "src") -> Path:
    return Path(shutil.copytree(MHA, tmp / name))


def ms_output(tmp: Path, name: str = "ms") -> Path:
    out = tmp / name
    assert run_cli("hf2ms", MHA, out, "--format", "safetensors").returncode == 0
    return out


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# ---------------------------------------------------------------- never write over a source

def test_hf2ms_into_its_own_source_is_refused_and_the_source_kept(tmp_path):
    src = src_copy(tmp_path)
    before = tree_hash(tmp_path)
    refused(run_cli("hf2ms", src, src, "--force"), str(src), "is the source directory")
    assert tree_hash(tmp_path) == before


def test_hf2ms_into_the_parent_of_its_source_is_refused_and_nothing_there_touched(tmp_path):
    parent = tmp_path / "P"
    src = src_copy(parent)
    (parent / "unrelated.txt").write_text("keep me")
    before = tree_hash(tmp_path)
    refused(run_cli("hf2ms", src, parent, "--force"), str(parent), "contains the source directory")
    assert tree_hash(tmp_path) == before


def test_ms2hf_into_its_own_source_is_refused_and_the_source_kept(tmp_path):
    ms = ms_output(tmp_path)
    before = tree_hash(tmp_path)
    refused(run_cli("ms2hf", ms, ms, "--force"), str(ms), "is the source directory")
    assert tree_hash(tmp_path) == before


def test_hf2ms_onto_a_source_shard_is_refused_and_the_shard_kept(tmp_path):
    src = src_copy(tmp_path)
    before = tree_hash(tmp_path)
    shard = src / "model.safetensors"
    refused(run_cli("hf2ms", src, shard, "--force"), str(shard), str(src))
    assert tree_hash(tmp_path) == before and shard.is_file()


def test_an_output_inside_the_source_is_refused_even_when_new(tmp_path):
    src = src_copy(tmp_path)
    before = tree_hash(tmp_path)
    refused(run_cli("hf2ms", src, src / "converted"), "lies inside the source directory")
    assert tree_hash(tmp_path) == before


def test_source_files_reached_through_symlinks_are_protected(tmp_path):
    # Like a HF cache snapshot, whose files are links into ../blobs: here the blobs are a previous
    # llama-convert output, which --force would otherwise replace.
    blobs = ms_output(tmp_path, "blobs")
    hf = tmp_path / "hf"
    assert run_cli("ms2hf", blobs, hf).returncode == 0
    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    for f in hf.iterdir():
        if f.name != "conversion.json":
            (snapshot / f.name).symlink_to(f)
    before = tree_hash(tmp_path)
    refused(run_cli("hf2ms", snapshot, hf, "--force"), str(hf), "contains the source file")
    assert tree_hash(tmp_path) == before


def test_ms2hf_with_a_config_inside_out_dir_is_refused(tmp_path):
    ms = ms_output(tmp_path)
    previous = ms_output(tmp_path, "previous")
    before = tree_hash(tmp_path)
    refused(run_cli("ms2hf", ms, previous, "--config", previous / "llama_config.yaml", "--force"),
            "contains the source file")
    assert tree_hash(tmp_path) == before


def test_the_library_api_refuses_too(tmp_path):
    src = src_copy(tmp_path)
    before = tree_hash(tmp_path)
    with pytest.raises(ConvertError, match="is the source directory"):
        convert_hf2ms(src, src, force=True)
    assert tree_hash(tmp_path) == before


# ---------------------------------------------------------------- what --force may replace

def test_force_refuses_a_directory_that_is_not_a_llama_convert_output(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    before = tree_hash(tmp_path)
    refused(run_cli("hf2ms", MHA, out, "--force"), str(out), "not a llama-convert output", "refusing to delete")
    assert tree_hash(tmp_path) == before


def test_force_refuses_a_directory_whose_conversion_json_is_someone_elses(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "conversion.json").write_text(json.dumps({"tool": "other-tool"}))
    refused(run_cli("hf2ms", MHA, out, "--force"), "not a llama-convert output")
    assert (out / "conversion.json").exists()


def test_force_refuses_a_directory_whose_one_line_conversion_json_merely_claims_to_be_ours(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "thesis.tex").write_text("years of work")
    (victim / "conversion.json").write_text('{"tool": "llama-convert"}\n')
    before = tree_hash(tmp_path)
    refused(run_cli("hf2ms", MHA, victim, "--force"), str(victim), "not a llama-convert output",
            "no complete conversion.json of ours", "thesis.tex")
    assert tree_hash(tmp_path) == before


def complete_record(tmp: Path) -> dict:
    out = ms_output(tmp, "sample")
    record = json.loads((out / "conversion.json").read_text())
    shutil.rmtree(out)
    return record


@pytest.mark.parametrize("damage", ["a key missing", "no outputs", "an output outside the directory",
                                    "a size that is not a size", "truncated", "a symlink to a real record"])
def test_a_conversion_json_that_is_not_a_complete_record_of_ours_does_not_make_a_directory_replaceable(tmp_path, damage):
    record = complete_record(tmp_path)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "notes.txt").write_text("mine")
    record["outputs"] = [{"name": "notes.txt", "size": 4, "sha256": None}]  # as if our output held exactly it
    text = json.dumps(record)
    if damage == "a key missing":
        text = json.dumps({k: v for k, v in record.items() if k != "tensors"})
    elif damage == "no outputs":
        text = json.dumps({**record, "outputs": []})
    elif damage == "an output outside the directory":
        text = json.dumps({**record, "outputs": [*record["outputs"], {"name": "../elsewhere", "size": 1}]})
    elif damage == "a size that is not a size":
        text = json.dumps({**record, "outputs": [{"name": "notes.txt", "size": "4"}]})
    elif damage == "truncated":
        text = text[:len(text) // 2]
    if damage == "a symlink to a real record":
        (tmp_path / "real.json").write_text(text)
        (victim / "conversion.json").symlink_to(tmp_path / "real.json")
    else:
        (victim / "conversion.json").write_text(text)
    before = tree_hash(tmp_path)
    refused(run_cli("hf2ms", MHA, victim, "--force"), str(victim), "not a llama-convert output", "notes.txt")
    assert tree_hash(tmp_path) == before


def test_the_complete_record_is_what_a_conversion_writes(tmp_path):
    assert RECORD_KEYS <= complete_record(tmp_path).keys()


def test_force_keeps_an_earlier_output_that_a_user_added_files_to(tmp_path):
    out = ms_output(tmp_path, "out")
    (out / "eval_results.txt").write_text("accuracy 0.71")
    (out / "notes").mkdir()
    (out / "notes" / "run.md").write_text("what I tried")
    before = tree_hash(tmp_path)
    err = refused(run_cli("hf2ms", MHA, out, "--force"), str(out), "eval_results.txt", "notes/",
                  "not part of the earlier llama-convert output", "nothing was deleted")
    assert "model-00001-of-00001.safetensors" not in err  # the output's own files are not in the way
    assert tree_hash(tmp_path) == before


def test_force_keeps_an_earlier_output_whose_files_were_changed_since(tmp_path):
    out = ms_output(tmp_path, "out")
    with open(out / "llama_config.yaml", "a") as f:
        f.write("# tuned by hand\n")
    before = tree_hash(tmp_path)
    refused(run_cli("hf2ms", MHA, out, "--force"), "llama_config.yaml (changed since")
    assert tree_hash(tmp_path) == before


def test_force_keeps_an_earlier_output_holding_a_link_even_under_a_listed_name(tmp_path):
    out = ms_output(tmp_path, "out")
    (out / "model-00001-of-00001.safetensors").unlink()
    (tmp_path / "elsewhere.safetensors").write_bytes(b"x")
    (out / "model-00001-of-00001.safetensors").symlink_to(tmp_path / "elsewhere.safetensors")
    refused(run_cli("hf2ms", MHA, out, "--force"), "model-00001-of-00001.safetensors (a symbolic link)")


def test_a_refusal_names_five_foreign_entries_and_counts_the_rest(tmp_path):
    out = ms_output(tmp_path, "out")
    for k in range(7):
        (out / f"added-{k}.txt").write_text("x")
    err = refused(run_cli("hf2ms", MHA, out, "--force"), "added-0.txt, added-1.txt, added-2.txt, added-3.txt, "
                  "added-4.txt and 2 more", absent=("added-5.txt",))
    assert len(err) < 600, err


@pytest.mark.parametrize("command,src,extra", [
    ("hf2ms", TOKENIZED, ()),                                      # YAML, conversion.json, tokenizer files
    ("hf2ms", SHARDED, ("--format", "safetensors")),               # shards and their name map
    ("ms2hf", None, ()),                                           # config.json, generation_config.json, ...
], ids=["hf2ms-with-tokenizer", "hf2ms-sharded", "ms2hf"])
def test_force_replaces_an_earlier_output_that_holds_exactly_what_its_record_lists(tmp_path, command, src, extra):
    if src is None:
        src = ms_output(tmp_path, "ms")
    out = tmp_path / "out"
    assert run_cli(command, src, out, *extra).returncode == 0
    earlier = out.stat().st_ino
    proc = run_cli(command, src, out, *extra, "--force")
    assert proc.returncode == 0, proc.stderr
    assert out.stat().st_ino != earlier  # a new directory renamed into place
    record = json.loads((out / "conversion.json").read_text())
    assert {p.name for p in out.iterdir()} == {f["name"] for f in record["outputs"]} | {"conversion.json"}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_force_replaces_an_earlier_output_that_lost_one_of_its_files(tmp_path):
    # Nothing of anyone's is in the way: a listed file that is gone costs nobody anything.
    out = ms_output(tmp_path, "out")
    (out / "model-00001-of-00001.safetensors").unlink()
    assert run_cli("hf2ms", MHA, out, "--force").returncode == 0
    assert (out / "model.ckpt").is_file()


class AddsToOut(Progress):
    """A user writing into OUT_DIR while the run converts: as the first output file is done."""

    def __init__(self, out: Path):
        self.out = out

    def file_done(self, name: str, size: int) -> None:
        (self.out / "eval_results.txt").write_text("written during the run")


def test_a_file_added_to_out_dir_while_the_run_works_is_kept_with_the_earlier_output(tmp_path):
    out = ms_output(tmp_path, "out")
    earlier = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(ConvertError, match="eval_results.txt.*while this run worked"):
        convert_hf2ms(MHA, out, force=True, progress=AddsToOut(out))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == {**earlier, "eval_results.txt": b"written during the run"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no partial, no output moved aside


def test_force_replaces_an_empty_directory(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    assert run_cli("hf2ms", MHA, out, "--force").returncode == 0
    assert (out / "model.ckpt").is_file()


def test_force_refuses_a_regular_file(tmp_path):
    out = tmp_path / "out"
    out.write_text("not a directory")
    refused(run_cli("hf2ms", MHA, out, "--force"), str(out), "not a directory")
    assert out.read_text() == "not a directory"


def test_force_on_a_symlink_replaces_the_link_and_never_its_target(tmp_path):
    target = tmp_path / "target"
    target.mkdir()
    (target / "precious.txt").write_text("keep")
    out = tmp_path / "out"
    out.symlink_to(target)
    before = tree_hash(target)
    proc = run_cli("hf2ms", MHA, out, "--force")
    said = [line for line in without_progress(proc.stderr).splitlines() if "has no tokenizer" not in line]
    assert proc.returncode == 0 and said == [], proc.stderr   # the fixture's missing tokenizer is all it mentions
    assert not out.is_symlink() and (out / "model.ckpt").is_file()
    assert tree_hash(target) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "target"]  # no .old or partial left


def test_a_dangling_symlink_counts_as_existing_without_force(tmp_path):
    out = tmp_path / "out"
    out.symlink_to(tmp_path / "nowhere")
    refused(run_cli("hf2ms", MHA, out), "already exists")
    assert out.is_symlink()


# ---------------------------------------------------------------- parents of OUT_DIR

def tied_but_different(tmp: Path) -> Path:
    """A source that fails while its output is being written: config says tied, the lm_head differs."""
    src = src_copy(tmp)
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": True}))
    return src


def test_a_failed_run_removes_the_parents_of_out_dir_it_created(tmp_path):
    src = tied_but_different(tmp_path)
    refused(run_cli("hf2ms", src, tmp_path / "new" / "deep" / "out"), "lm_head.weight differs")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_a_failed_run_keeps_the_parents_that_were_there_before_it(tmp_path):
    src = tied_but_different(tmp_path)
    (tmp_path / "runs").mkdir()
    refused(run_cli("hf2ms", src, tmp_path / "runs" / "2024" / "llama"), "lm_head.weight differs")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs", "src"]
    assert list((tmp_path / "runs").iterdir()) == []


class WritesBeside(Progress):
    """Someone else putting a file into OUT_DIR's new parent while the run converts."""

    def __init__(self, where: Path):
        self.where = where

    def file_done(self, name: str, size: int) -> None:
        (self.where / "other-run.log").write_text("not yours")


def corrupt_download(tmp: Path) -> Path:
    """A hub cache snapshot whose weights blob does not match its name: found after the weights are written."""
    snap = make_hub_cache(tmp / "cache", MHA, "org/model")
    blob = (snap / "model.safetensors").resolve()
    data = bytearray(blob.read_bytes())
    data[-1] ^= 1
    blob.write_bytes(bytes(data))
    return snap


def test_a_failed_run_keeps_a_parent_it_made_once_something_else_lives_there(tmp_path):
    snap = corrupt_download(tmp_path)
    deep = tmp_path / "new" / "deep"
    with pytest.raises(ConvertError, match="corrupt download"):
        convert_hf2ms(snap, deep / "out", progress=WritesBeside(deep))
    assert sorted(p.name for p in deep.iterdir()) == ["other-run.log"]


# ---------------------------------------------------------------- the final rename

def test_the_final_rename_never_replaces_even_an_empty_directory(tmp_path):
    # A plain rename(2) silently replaces an empty directory; the one used to commit must not.
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "f").write_text("x")
    (tmp_path / "taken").mkdir()
    with pytest.raises(FileExistsError):
        rename_noreplace(tmp_path / "new", tmp_path / "taken")
    assert (tmp_path / "new" / "f").exists() and not any((tmp_path / "taken").iterdir())


def test_the_fallback_lock_admits_one_writer_per_out_dir_and_leaves_no_file(tmp_path):
    first, second = OutDirLock(tmp_path / "out"), OutDirLock(tmp_path / "out")
    first.acquire()
    with pytest.raises(ConvertError, match="another run is writing"):
        second.acquire()
    OutDirLock(tmp_path / "other").acquire()  # another OUT_DIR is not held up
    first.release()
    second.acquire()
    second.release()
    assert not (tmp_path / ".out.lock").exists()


# ---------------------------------------------------------------- debris of dead runs

def test_a_dead_runs_partial_directory_is_reclaimed_by_the_next_run(tmp_path):
    pid = dead_pid()
    debris = tmp_path / f".out.partial-{HOST}-{pid}"
    debris.mkdir()
    (debris / "model.ckpt").write_bytes(b"\0" * 1000)
    proc = run_cli("hf2ms", MHA, tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    assert f"left by dead process {pid}" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_with_quiet_a_dead_runs_debris_is_reclaimed_without_a_word(tmp_path):
    pid = dead_pid()
    (tmp_path / f".out.partial-{HOST}-{pid}").mkdir()
    proc = run_cli("hf2ms", "-q", MHA, tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_partials_of_live_owners_other_hosts_and_other_out_dirs_are_left_alone(tmp_path):
    pid = dead_pid()
    kept = [tmp_path / f".out.partial-{HOST}-{os.getpid()}",      # alive: the test itself
            tmp_path / f".out.partial-otherhost-{pid}",            # not ours to judge
            tmp_path / f".out2.partial-{HOST}-{pid}",              # another OUT_DIR's
            tmp_path / f".out.partial-{HOST}-{pid}-notes"]         # not a name we give
    for d in kept:
        d.mkdir()
        (d / "file").write_text("x")
    assert run_cli("hf2ms", MHA, tmp_path / "out").returncode == 0
    assert all((d / "file").exists() for d in kept)


def test_a_previous_output_moved_aside_by_a_dead_run_is_restored_when_out_dir_is_missing(tmp_path):
    previous = ms_output(tmp_path, "previous")
    before = tree_hash(previous)
    aside = tmp_path / f".out.old-{HOST}-{dead_pid()}"
    previous.rename(aside)  # the dead run got this far: OUT_DIR moved aside, the new one not yet in place
    proc = run_cli("hf2ms", MHA, tmp_path / "out")
    assert "restored" in proc.stderr
    refused_line = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and "already exists" in refused_line
    assert tree_hash(tmp_path / "out") == before and not aside.exists()


def test_a_previous_output_left_aside_after_a_completed_replacement_is_removed(tmp_path):
    out = ms_output(tmp_path, "out")
    aside = ms_output(tmp_path, f".out.old-{HOST}-{dead_pid()}")
    assert run_cli("hf2ms", MHA, out, "--force").returncode == 0
    assert not aside.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# ---------------------------------------------------------------- a full disk

@pytest.fixture
def small_fs(tmp_path):
    """A real, small filesystem: mount a tmpfs of the size asked for."""
    mounts = []

    def make(size: int) -> Path:
        where = tmp_path / f"fs{len(mounts)}"
        where.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}): needs root in a sandbox that allows it")
        mounts.append(where)
        return where
    yield make
    for where in mounts:
        subprocess.run(["umount", str(where)], check=True)


def test_a_plan_that_does_not_fit_is_refused_before_writing(small_fs):
    fs = small_fs(64 * 1024)
    proc = run_cli("hf2ms", MHA, fs / "out")
    err = refused(proc, str(fs / "out"), "not enough free space", "64.0 KiB is free")
    assert re.search(r"needs 45\d\.\d KiB", err), err  # the weights' 443 KiB and the small files beside them
    assert list(fs.iterdir()) == []


def test_a_plan_that_does_not_fit_leaves_no_parent_directory_behind(small_fs):
    fs = small_fs(64 * 1024)
    refused(run_cli("hf2ms", MHA, fs / "new" / "deep" / "out"), "not enough free space")
    assert list(fs.iterdir()) == []


def test_disk_full_while_writing_names_the_output_and_what_it_needs(tmp_path, small_fs):
    # A filesystem with room for every output file but conversion.json, the one file not in the plan's
    # estimate: the up-front check passes and the write runs out of space.
    sample = ms_output(tmp_path, "sample")
    page = 4096
    room = sum(-(-f.stat().st_size // page) * page for f in sample.iterdir() if f.name != "conversion.json")
    fs = small_fs(room)
    proc = run_cli("hf2ms", MHA, fs / "out", "--format", "safetensors")
    err = refused(proc, str(fs / "out"), "disk full", "was free")
    assert re.search(r"needs 45\d\.\d KiB", err), err
    assert list(fs.iterdir()) == []  # the partial directory is gone
