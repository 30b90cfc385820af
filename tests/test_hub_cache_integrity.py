"""A source in a HF hub cache snapshot is checked against the sha256 its blob is named by: the hub does
not check downloads, so a flipped byte in a weight blob is found here, not in production."""
from __future__ import annotations

from pathlib import Path

from conftest import FIXTURES, assert_rejected, make_hub_cache, run_cli

SRC = FIXTURES / "gqa-tied-bf16-sharded"


def _flip_one_byte(blob: Path) -> None:
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0x01  # the last byte is tensor data, so the headers still read
    blob.write_bytes(bytes(data))


def test_a_sound_hub_snapshot_converts(tmp_path):
    snap = make_hub_cache(tmp_path / "hub", SRC, "org/tiny")
    proc = run_cli("hf2ms", snap, tmp_path / "out")
    assert proc.returncode == 0, proc.stderr


def test_a_flipped_byte_in_a_weight_blob_is_a_corrupt_download_naming_the_file(tmp_path):
    snap = make_hub_cache(tmp_path / "hub", SRC, "org/tiny")
    shard = sorted(snap.glob("*.safetensors"))[0]
    _flip_one_byte(shard.resolve())
    assert_rejected(tmp_path, snap, "corrupt download", shard.name)


def test_with_no_hash_the_blob_is_not_checked(tmp_path):
    snap = make_hub_cache(tmp_path / "hub", SRC, "org/tiny")
    _flip_one_byte(sorted(snap.glob("*.safetensors"))[0].resolve())
    proc = run_cli("hf2ms", snap, tmp_path / "out", "--no-hash")
    assert proc.returncode == 0, proc.stderr
