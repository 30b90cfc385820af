"""No truncation or byte flip of a real checkpoint makes a reader raise anything but ConvertError.

In-process and fast: the CLI turns a ConvertError into one line and exit 2 (see test_readers_refuse),
so a reader that only ever raises ConvertError never shows the user a traceback.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import FIXTURES, run_cli
from llama_convert.core.errors import ConvertError
from llama_convert.formats import ckpt, safetensors

SETTINGS = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def real_ckpt(tmp_path_factory) -> bytes:
    out = tmp_path_factory.mktemp("ms") / "ms"
    proc = run_cli("hf2ms", FIXTURES / "mha-untied-fp32", out)
    assert proc.returncode == 0, proc.stderr
    return (out / "model.ckpt").read_bytes()


SAFETENSORS = (FIXTURES / "mha-untied-fp32/model.safetensors").read_bytes()
HEADER_END = 8 + struct.unpack("<Q", SAFETENSORS[:8])[0]


@st.composite
def mutated(draw, data: bytes, hot_end: int) -> bytes:
    """data truncated anywhere, or with a few bytes flipped, inserted or deleted near its headers."""
    b = bytearray(data)
    kind = draw(st.sampled_from(["truncate", "flip", "splice"]))
    if kind == "truncate":
        return bytes(b[:draw(st.integers(0, len(b) - 1))])
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, min(hot_end, len(b)) - 1))
        if kind == "flip":
            b[i] ^= draw(st.integers(1, 255))
        else:
            b[i:i + draw(st.integers(0, 3))] = draw(st.binary(max_size=3))
    return bytes(b)


def reads_or_refuses(read, path: Path, data: bytes) -> None:
    path.write_bytes(data)
    try:
        read(path)
    except ConvertError as e:
        assert "\n" not in str(e)


@SETTINGS
@given(data=st.data())
def test_a_mutated_ckpt_is_read_or_refused(tmp_path, real_ckpt, data):
    # the first 4 KB hold the first records' keys, lengths, names, dtypes and dims
    reads_or_refuses(ckpt.scan, tmp_path / "model.ckpt", data.draw(mutated(real_ckpt, 4096)))


@SETTINGS
@given(data=mutated(SAFETENSORS, HEADER_END))
def test_a_mutated_safetensors_header_is_read_or_refused(tmp_path, data):
    reads_or_refuses(safetensors.read_header, tmp_path / "model.safetensors", data)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8)
# Values that broke readers before: a float or bool where a count belongs, counts beyond int64.
TRICKY = st.sampled_from([float("inf"), float("nan"), 1.5, True, -1, 2**63, 2**64 + 1, 10**30, "8", None])
VALUES = JSON_VALUES | st.lists(TRICKY | st.integers(0, 2**20), min_size=1, max_size=3)


@SETTINGS
@given(entry=st.integers(0, 100), field=st.sampled_from(["dtype", "shape", "data_offsets", None]),
       value=VALUES)
def test_a_safetensors_header_with_a_value_of_any_type_is_read_or_refused(tmp_path, entry, field, value):
    header = json.loads(SAFETENSORS[8:HEADER_END])
    name = sorted(header)[entry % len(header)]
    if field is None or not isinstance(header[name], dict):
        header[name] = value
    else:
        header[name][field] = value
    blob = json.dumps(header).encode()
    data = struct.pack("<Q", len(blob)) + blob + SAFETENSORS[HEADER_END:]
    reads_or_refuses(safetensors.read_header, tmp_path / "model.safetensors", data)


@SETTINGS
@given(name=st.text(max_size=6), ttype=st.sampled_from(["Float32", "BFloat16", "str", ""]) | st.text(max_size=6),
       shape=st.lists(st.integers(0, 2**64 - 1) | st.integers(0, 8), max_size=4),
       declared=st.integers(0, 2**62), actual=st.integers(0, 64))
def test_a_ckpt_record_with_lying_dims_or_lengths_is_read_or_refused(tmp_path, name, ttype, shape, declared,
                                                                      actual):
    # declared: the content length the record claims; actual: the bytes that follow it
    record = ckpt.value_prefix(name, ttype, tuple(shape), declared) + bytes(actual)
    reads_or_refuses(ckpt.scan, tmp_path / "model.ckpt", record)
