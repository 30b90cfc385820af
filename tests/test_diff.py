"""diff: what "the same" means. Bit for bit after exact widening by default; --atol forgives finite
differences only; a NaN or an infinity must match bit for bit at the same place, whatever --atol says;
an exact widening (bf16 stored as float32) compares by value unless --strict-dtype asks for bytes."""
from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import pytest

from conftest import FIXTURES, run_cli
from llama_convert import HF2MSOptions, convert_hf2ms, diff_checkpoints
from planting import BITS, STAGE_TENSORS, plant

SRC = FIXTURES / "mha-untied-fp32"
AT = {"embedding": (7, 3), "layer.1": (0, 0), "final_norm": (5,), "lm_head": (9, 2)}


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A fresh copy of the fp32 fixture, and another, per test: each plants into its own."""
    root = tmp_path_factory.mktemp("diff")
    counter = itertools.count()

    def make() -> tuple[Path, Path]:
        k = next(counter)
        a, b = root / f"a{k}", root / f"b{k}"
        shutil.copytree(SRC, a)
        shutil.copytree(SRC, b)
        return a, b
    return make


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """The fixture converted once (safetensors, so a test can plant into a copy of it)."""
    out = tmp_path_factory.mktemp("ms") / "out"
    convert_hf2ms(SRC, out, HF2MSOptions(format="safetensors"))
    return out


def only_row(report: dict) -> dict:
    off = [t for t in report["tensors"] if not t["same"]]
    assert len(off) == 1, [t["name"] for t in off]
    return off[0]


VALUES = ["nan", "snan", "+inf", "-inf"]


@pytest.mark.parametrize("stage", list(STAGE_TENSORS))
@pytest.mark.parametrize("value", VALUES)
@pytest.mark.parametrize("side", ["a", "b"])
def test_a_non_finite_value_on_one_side_is_a_difference_whatever_the_atol(pair, stage, value, side):
    a, b = pair()
    name = STAGE_TENSORS[stage][0]
    plant(a if side == "a" else b, name, AT[stage], BITS[value])
    for atol in (0.0, 1e30):
        r = diff_checkpoints(a, b, atol=atol)
        assert r["same"] is False and r["differing_tensors"] == 1
        row = only_row(r)
        assert row["name"] == name and row["differing"] == 1
        assert row["first_nonfinite_mismatch"]["index"] == list(AT[stage])
        shown = row["first_nonfinite_mismatch"][side]
        assert shown.startswith({"nan": "nan (0x7fc00000)", "snan": "nan (0x7f800001)", "+inf": "inf",
                                 "-inf": "-inf"}[value]), shown


@pytest.mark.parametrize("stage", list(STAGE_TENSORS))
@pytest.mark.parametrize("side", ["a", "b"])
def test_negative_zero_against_positive_zero_differs_bit_for_bit_and_is_equal_within_a_tolerance(pair, stage, side):
    a, b = pair()
    name = STAGE_TENSORS[stage][0]
    plant(a, name, AT[stage], BITS["-0" if side == "a" else "+0"])
    plant(b, name, AT[stage], BITS["+0" if side == "a" else "-0"])
    exact = diff_checkpoints(a, b)
    assert exact["same"] is False and only_row(exact)["differing"] == 1
    assert only_row(exact)["max_abs_diff"] == 0.0 and only_row(exact)["first_nonfinite_mismatch"] is None
    assert diff_checkpoints(a, b, atol=1e-12)["same"] is True


@pytest.mark.parametrize("first, second, same", [("nan", "nan", True), ("snan", "snan", True),
                                                 ("nan", "snan", False), ("+inf", "-inf", False),
                                                 ("+inf", "+inf", True)])
def test_a_nan_equals_only_the_same_nan_at_the_same_place(pair, first, second, same):
    a, b = pair()
    name = STAGE_TENSORS["layer.1"][0]
    plant(a, name, (0, 0), BITS[first])
    plant(b, name, (0, 0), BITS[second])
    assert diff_checkpoints(a, b)["same"] is same
    assert diff_checkpoints(a, b, atol=1.0)["same"] is same


def test_the_same_nan_at_another_place_is_two_differences(pair):
    a, b = pair()
    name = STAGE_TENSORS["layer.1"][0]
    plant(a, name, (0, 0), BITS["nan"])
    plant(b, name, (0, 1), BITS["nan"])
    row = only_row(diff_checkpoints(a, b, atol=1.0))
    assert row["differing"] == 2 and row["first_nonfinite_mismatch"]["index"] == [0, 0]


@pytest.mark.parametrize("stage", list(STAGE_TENSORS))
def test_a_nan_planted_in_a_conversion_is_found_under_its_hf_name(tmp_path, converted, stage):
    ms = tmp_path / "ms"
    shutil.copytree(converted, ms)
    hf_name, ms_name = STAGE_TENSORS[stage]
    plant(ms, ms_name, AT[stage], BITS["snan"])
    r = diff_checkpoints(SRC, ms, atol=1.0)
    row = only_row(r)
    assert row["name"] == hf_name and row["first_nonfinite_mismatch"] == {
        "index": list(AT[stage]), "a": row["first_nonfinite_mismatch"]["a"], "b": "nan (0x7f800001)"}


def test_a_finite_difference_within_atol_is_the_same_and_beyond_it_is_not(pair):
    a, b = pair()
    plant(b, STAGE_TENSORS["layer.1"][0], (0, 0), 0x3F800000)  # 1.0 where the fixture holds a small weight
    assert diff_checkpoints(a, b)["same"] is False
    assert diff_checkpoints(a, b, atol=2.0)["same"] is True
    row = only_row(diff_checkpoints(a, b, atol=1e-3))
    assert row["differing"] == 1 and 0.9 < row["max_abs_diff"] < 1.1 and row["first_nonfinite_mismatch"] is None


# ------------------------------------------------------------------ exact widenings compare by value

@pytest.fixture(scope="module")
def cpu_conversion(tmp_path_factory):
    out = tmp_path_factory.mktemp("cpu") / "out"
    convert_hf2ms(FIXTURES / "gqa-tied-bf16-sharded", out, HF2MSOptions(device="CPU"))
    return out


def test_a_cpu_conversion_of_a_bf16_model_has_the_same_values_widened(cpu_conversion):
    proc = run_cli("diff", FIXTURES / "gqa-tied-bf16-sharded", cpu_conversion)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    first = proc.stdout.splitlines()[0]
    assert first.endswith("same values; 20 tensors widened (bfloat16 vs float32; --strict-dtype to count that)")
    r = json.loads(run_cli("diff", FIXTURES / "gqa-tied-bf16-sharded", cpu_conversion, "--json").stdout)
    assert r["same"] and r["widened"] == len(r["tensors"]) == 20


def test_strict_dtype_makes_a_widening_a_difference(cpu_conversion):
    proc = run_cli("diff", FIXTURES / "gqa-tied-bf16-sharded", cpu_conversion, "--strict-dtype")
    assert proc.returncode == 1
    assert "DIFFERENT: 20 of 20 tensors differ" in proc.stdout
    assert "model.norm.weight: same values; dtype bfloat16 vs float32 (--strict-dtype)" in proc.stdout


def test_a_default_conversion_widens_only_the_norms(tmp_path):
    convert_hf2ms(FIXTURES / "gqa-tied-bf16-sharded", tmp_path / "ms")
    r = diff_checkpoints(FIXTURES / "gqa-tied-bf16-sharded", tmp_path / "ms")
    assert r["same"] and sorted(t["name"] for t in r["tensors"] if t["widened"]) == [
        "model.layers.0.input_layernorm.weight", "model.layers.0.post_attention_layernorm.weight",
        "model.layers.1.input_layernorm.weight", "model.layers.1.post_attention_layernorm.weight",
        "model.norm.weight"]
    assert diff_checkpoints(FIXTURES / "gqa-tied-bf16-sharded", tmp_path / "ms", strict_dtype=True)["same"] is False


def test_the_text_report_names_the_first_non_finite_mismatch(pair):
    a, b = pair()
    plant(b, STAGE_TENSORS["final_norm"][0], (5,), BITS["-inf"])
    proc = run_cli("diff", a, b, "--atol", "0.5")
    assert proc.returncode == 1
    assert "model.norm.weight: 1 of 64 elements differ, max_abs_diff 0 (atol 0.5); " \
           "first non-finite mismatch at [5]: " in proc.stdout and proc.stdout.split("\n")[1].endswith("vs -inf")
