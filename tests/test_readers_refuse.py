"""Readers never trust a file: each hostile input is refused on one line naming the file and the rule.

Every case runs the real CLI on real files; FIFOs are real FIFOs, so a regression hangs until the
timeout in assert_rejected and fails.
"""
from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import pytest
import torch

from conftest import FIXTURES, assert_rejected, run_cli

MHA = FIXTURES / "mha-untied-fp32"          # single safetensors
SHARDED = FIXTURES / "gqa-tied-bf16-sharded"
BIN = FIXTURES / "mqa-bias-fp16-bin"
TOKENIZED = FIXTURES / "gqa-llama3-rope"    # has tokenizer files
LFS_POINTER = (b"version https://git-lfs.github.com/spec/v1\n"
               b"oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\nsize 461280\n")


def copy(src: Path, tmp: Path) -> Path:
    dst = tmp / "src"
    shutil.copytree(src, dst)
    return dst


def replace_with_fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


@pytest.fixture(scope="module")
def ms_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ms") / "ms"
    proc = run_cli("hf2ms", MHA, out)
    assert proc.returncode == 0, proc.stderr
    return out


# ---------------------------------------------------------------- only regular files are opened

@pytest.mark.parametrize("fixture,name", [
    (MHA, "config.json"), (MHA, "generation_config.json"), (MHA, "model.safetensors"),
    (TOKENIZED, "tokenizer.json"), (SHARDED, "model.safetensors.index.json"),
    (SHARDED, "model-00002-of-00004.safetensors"), (BIN, "pytorch_model.bin"),
])
def test_a_fifo_in_place_of_an_input_is_refused_not_waited_on(tmp_path, fixture, name):
    src = copy(fixture, tmp_path)
    replace_with_fifo(src / name)
    assert_rejected(tmp_path, src, name, "is a FIFO", "not a regular file", timeout=60)


def test_a_config_that_is_a_device_is_refused_before_it_is_read(tmp_path):
    src = copy(MHA, tmp_path)
    (src / "config.json").unlink()
    (src / "config.json").symlink_to("/dev/zero")
    assert_rejected(tmp_path, src, "config.json", "character device", timeout=60)


def test_a_directory_named_like_the_weights_is_refused(tmp_path):
    src = copy(MHA, tmp_path)
    (src / "model.safetensors").unlink()
    (src / "model.safetensors").mkdir()
    assert_rejected(tmp_path, src, "model.safetensors", "is a directory, not a regular file")


def test_a_broken_tokenizer_link_is_refused_rather_than_silently_left_out(tmp_path):
    src = copy(TOKENIZED, tmp_path)
    (src / "tokenizer.json").unlink()
    (src / "tokenizer.json").symlink_to("../blobs/gone")
    assert_rejected(tmp_path, src, "tokenizer.json", "broken symbolic link")


def test_a_config_larger_than_any_config_is_refused_unread(tmp_path):
    src = copy(MHA, tmp_path)
    with open(src / "config.json", "r+b") as f:
        f.truncate(65 << 20)  # sparse: costs no disk, and must not cost memory either
    assert_rejected(tmp_path, src, "config.json", "more than the 64 MiB")


@pytest.mark.parametrize("name", ["llama_config.yaml", "model.ckpt"])
def test_ms2hf_refuses_a_fifo_in_place_of_an_input(tmp_path, ms_dir, name):
    src = copy(ms_dir, tmp_path)
    replace_with_fifo(src / name)
    assert_rejected(tmp_path, src, name, "is a FIFO", command="ms2hf", timeout=60)


def test_inspect_of_a_fifo_says_it_is_a_fifo(tmp_path):
    fifo = tmp_path / "model.safetensors"
    os.mkfifo(fifo)
    proc = run_cli("inspect", fifo, timeout=60)
    assert proc.returncode == 2 and "is a FIFO" in proc.stderr and len(proc.stderr.splitlines()) == 1, proc.stderr


def test_a_mapping_table_that_is_a_fifo_is_refused_not_waited_on(tmp_path):
    import subprocess
    import sys
    fifo = tmp_path / "table.yaml"
    os.mkfifo(fifo)
    code = ("from llama_convert import ConvertError, HF2MSOptions, plan_hf2ms\n"
            f"try: plan_hf2ms({str(MHA)!r}, HF2MSOptions(table={str(fifo)!r}))\n"
            "except ConvertError as e: print(e.one_line())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "table.yaml" in done.stdout and "is a FIFO" in done.stdout, (done.stdout, done.stderr)


def test_a_tensor_in_two_mindspore_files_is_refused_not_picked(tmp_path):
    out = tmp_path / "ms"
    assert run_cli("hf2ms", SHARDED, out, "--format", "safetensors").returncode == 0
    shards = sorted(out.glob("model-*.safetensors"))
    stray = out / "model-copy.safetensors"
    shutil.copyfile(shards[0], stray)  # the same parameters a second time, as a stray copy would
    assert_rejected(tmp_path, out, "is also in", command="ms2hf")


# ---------------------------------------------------------------- safetensors: the reference's invariants

def st_parts(path: Path) -> tuple[list[tuple[str, object]], bytes]:
    """(header entries in file order, data section) of a real safetensors file."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return list(json.loads(raw[8:8 + n]).items()), raw[8 + n:]


def write_st(path: Path, entries: list[tuple[str, object]] | str, data: bytes) -> None:
    """A safetensors file from entries written as given: repeated names and Infinity included."""
    text = entries if isinstance(entries, str) else \
        "{" + ",".join(f"{json.dumps(k)}:{json.dumps(v)}" for k, v in entries) + "}"
    blob = text.encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)


def by_offset(entries):
    return sorted((e for e in entries if e[0] != "__metadata__"), key=lambda e: e[1]["data_offsets"][0])


def overlap(entries, data):
    # the last tensor in the file points at the bytes of an earlier one of the same size
    last = by_offset(entries)[-1]
    twin = next(e for e in by_offset(entries)[:-1] if e[1]["shape"] == last[1]["shape"])
    last[1]["data_offsets"] = list(twin[1]["data_offsets"])
    return entries, data, [last[0], "overlap", twin[0]]


def duplicate(entries, data):
    # two entries under one name: json would keep the last, and one tensor would silently vanish
    a, b = by_offset(entries)[-2:]
    renamed = [(a[0] if k == b[0] else k, v) for k, v in entries]
    return renamed, data, [a[0], "more than once"]


def gap(entries, data):
    last = by_offset(entries)[-1]
    last[1]["data_offsets"] = [x + 8 for x in last[1]["data_offsets"]]
    start = by_offset(entries)[-1][1]["data_offsets"][0] - 8
    return entries, data[:start] + bytes(8) + data[start:], [last[0], "8 unclaimed bytes"]


def trailing(entries, data):
    return entries, data + bytes(16), ["16 bytes after the last tensor's data belong to no tensor"]


def infinite_shape(entries, data):
    first = by_offset(entries)[0]
    first[1]["shape"] = [float("inf"), 64]
    return entries, data, [first[0], "shape [inf, 64] must be a list of non-negative integers"]


def bool_in_shape(entries, data):
    first = by_offset(entries)[0]
    first[1]["shape"] = [True] + first[1]["shape"]
    return entries, data, [first[0], "non-negative integers"]


def offsets_that_disagree_with_shape(entries, data):
    first = by_offset(entries)[0]
    first[1]["shape"] = [first[1]["shape"][0] * 2, *first[1]["shape"][1:]]
    return entries, data, [first[0], "needs more"]


def non_string_metadata(entries, data):
    return [("__metadata__", {"format": 1}), *entries[1:]], data, ["__metadata__ must map strings to strings"]


def nested_header(entries, data):
    return '{"x":' + "[" * 100_000 + "]" * 100_000 + "}", b"", ["nested too deeply"]


@pytest.mark.parametrize("lie", [overlap, duplicate, gap, trailing, infinite_shape, bool_in_shape,
                                 offsets_that_disagree_with_shape, non_string_metadata, nested_header])
def test_a_safetensors_header_that_breaks_a_rule_is_refused_naming_tensor_and_rule(tmp_path, lie):
    src = copy(MHA, tmp_path)
    entries, data, needles = lie(*st_parts(src / "model.safetensors"))
    write_st(src / "model.safetensors", entries, data)
    assert_rejected(tmp_path, src, "model.safetensors", *needles)


def test_a_header_length_beyond_the_reference_limit_is_refused(tmp_path):
    src = copy(MHA, tmp_path)
    (src / "model.safetensors").write_bytes(struct.pack("<Q", 100_000_001) + b"{}")
    assert_rejected(tmp_path, src, "model.safetensors", "more than the 100000000 the format allows")


def test_the_reference_library_agrees_with_each_refusal(tmp_path):
    from safetensors import safe_open
    for lie in (overlap, duplicate, gap, trailing, infinite_shape, nested_header):
        path = tmp_path / f"{lie.__name__}.safetensors"
        entries, data, _ = lie(*st_parts(MHA / "model.safetensors"))
        write_st(path, entries, data)
        with pytest.raises(Exception):
            with safe_open(str(path), "np") as f:
                list(f.keys())


# ---------------------------------------------------------------- JSON files

@pytest.mark.parametrize("text,needles", [
    ('{"hidden_size": 64, "hidden_size": 128}', ["'hidden_size' more than once"]),
    (b'{"model_type": "llama\xff"}', ["not UTF-8"]),
    ('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}", ["nested too deeply"]),
])
def test_a_config_json_that_cannot_be_read_one_way_is_refused(tmp_path, text, needles):
    src = copy(MHA, tmp_path)
    path = src / "config.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    assert_rejected(tmp_path, src, "config.json", *needles)


# ---------------------------------------------------------------- index files

@pytest.mark.parametrize("value,needle", [
    (3, 'weight_map["model.norm.weight"] is 3, not a shard file name'),
    (["model-00004-of-00004.safetensors"], 'weight_map["model.norm.weight"] is ["model-00004'),
    ("", 'weight_map["model.norm.weight"] is an empty string'),
    ("../outside.safetensors", "outside the checkpoint directory"),
    ("/etc/passwd", "outside the checkpoint directory"),
])
def test_an_index_entry_that_is_not_a_shard_name_inside_src_is_refused(tmp_path, value, needle):
    src = copy(SHARDED, tmp_path)
    os.mkfifo(tmp_path / "outside.safetensors")  # opening it would be refused differently, or hang
    index = src / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    data["weight_map"]["model.norm.weight"] = value
    index.write_text(json.dumps(data))
    assert_rejected(tmp_path, src, "model.safetensors.index.json", needle, timeout=60)


def test_shards_linked_into_a_cache_blobs_directory_still_convert(tmp_path):
    # The layout of a HF cache snapshot: every file is a symlink into ../../blobs.
    blobs, snap = tmp_path / "blobs", tmp_path / "snapshots" / "abc"
    blobs.mkdir()
    snap.mkdir(parents=True)
    for f in SHARDED.iterdir():
        shutil.copy(f, blobs / f.name)
        (snap / f.name).symlink_to(Path("../..") / "blobs" / f.name)
    proc = run_cli("hf2ms", snap, tmp_path / "out")
    assert proc.returncode == 0, proc.stderr


# ---------------------------------------------------------------- Git LFS pointers

@pytest.mark.parametrize("fixture,name", [(MHA, "model.safetensors"), (BIN, "pytorch_model.bin"),
                                          (SHARDED, "model-00003-of-00004.safetensors")])
def test_a_git_lfs_pointer_in_place_of_weights_says_so(tmp_path, fixture, name):
    src = copy(fixture, tmp_path)
    (src / name).write_bytes(LFS_POINTER)
    assert_rejected(tmp_path, src, name, "is a Git LFS pointer", "git lfs pull")


def test_a_git_lfs_pointer_in_place_of_a_ckpt_says_so(tmp_path, ms_dir):
    src = copy(ms_dir, tmp_path)
    (src / "model.ckpt").write_bytes(LFS_POINTER)
    assert_rejected(tmp_path, src, "model.ckpt", "is a Git LFS pointer", "git lfs pull", command="ms2hf")


# ---------------------------------------------------------------- pytorch_model.bin

class _Call:
    """Pickles as a call of `fn(*args)`: what a malicious checkpoint does on load."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


@pytest.mark.parametrize("payload,name", [(_Call(os.system, "touch pwned"), "posix.system"),
                                          (_Call(eval, "1+1"), "eval")])
def test_a_pickle_that_runs_code_is_named_as_such_without_torchs_advice(tmp_path, payload, name):
    src = copy(BIN, tmp_path)
    state = torch.load(src / "pytorch_model.bin", weights_only=True)
    state["model.norm.weight"] = payload
    torch.save(state, src / "pytorch_model.bin")
    err = assert_rejected(tmp_path, src, "pytorch_model.bin", "tried to run code", name)
    assert "weights_only" not in err and not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("change,needles", [
    (lambda s: {1: next(iter(s.values())), **s}, ["state dict key 1 (int) is not a tensor name"]),
    (lambda s: {**s, "model.extra": {"w": torch.ones(2)}}, ["'model.extra' is not a tensor (dict)", "nested"]),
    (lambda s: {**s, "model.step": 3}, ["'model.step' is not a tensor (int)"]),
    (lambda s: list(s.values()), ["is not a state dict", "list"]),
])
def test_a_bin_that_is_not_a_flat_state_dict_of_tensors_is_refused(tmp_path, change, needles):
    src = copy(BIN, tmp_path)
    state = torch.load(src / "pytorch_model.bin", weights_only=True)
    torch.save(change(state), src / "pytorch_model.bin")
    assert_rejected(tmp_path, src, "pytorch_model.bin", *needles)


# ---------------------------------------------------------------- .ckpt

def test_a_ckpt_with_a_length_beyond_its_message_is_corrupt_not_a_huge_read(tmp_path, ms_dir):
    src = copy(ms_dir, tmp_path)
    data = bytearray((src / "model.ckpt").read_bytes())
    # first record: key 0x0a, then the varint length of the Value; make it claim ~2^62 bytes
    assert data[0] == 0x0A
    end = 1
    while data[end] & 0x80:
        end += 1
    data[1:end + 1] = bytes([0xFF] * 8 + [0x3F])
    (src / "model.ckpt").write_bytes(bytes(data))
    assert_rejected(tmp_path, src, "model.ckpt", "not a readable MindSpore checkpoint", command="ms2hf")


def test_a_truncated_ckpt_is_refused(tmp_path, ms_dir):
    src = copy(ms_dir, tmp_path)
    f = src / "model.ckpt"
    f.write_bytes(f.read_bytes()[:1000])
    assert_rejected(tmp_path, src, "model.ckpt", "not a readable MindSpore checkpoint", command="ms2hf")
