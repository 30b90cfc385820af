"""Reports CI reads: `verify --junit FILE` (JUnit XML, valid against the JUnit schema and read by a CI
parser, junitparser) and `verify --plot FILE` (PNG or SVG: each place's differences against its limit)."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import FIXTURES, refused, run_cli

SRC = FIXTURES / "mha-untied-fp32"
SCHEMA = Path(__file__).parent / "data" / "junit.xsd"
PLACES = ["embedding", "layer.0", "layer.1", "final_norm"]   # the fixture has 2 decoder layers


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reports") / "ms"
    proc = run_cli("hf2ms", SRC, out, "--device", "CPU", "--format", "safetensors")
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(scope="module")
def passing(converted, tmp_path_factory):
    reports = tmp_path_factory.mktemp("passing")
    proc = run_cli("verify", SRC, converted, "--junit", reports / "ci" / "verify.xml", "--plot", reports / "v.png")
    assert proc.returncode == 0, proc.stderr
    return reports


@pytest.fixture(scope="module")
def failing(converted, tmp_path_factory):
    """layer.1's down projection scaled by 1.01 in a copy of the output: verify fails there."""
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file
    bad = tmp_path_factory.mktemp("failing") / "ms"
    shutil.copytree(converted, bad)
    name = "model.layers.1.feed_forward.w2.weight"
    path = next(p for p in sorted(bad.glob("*.safetensors")) if name in safe_open(p, "np").keys())
    with safe_open(path, "np") as f:
        metadata = f.metadata()
    tensors = load_file(path)
    tensors[name] = (tensors[name] * np.float32(1.01)).astype(np.float32)
    save_file(tensors, path, metadata=metadata)
    yaml_path = next(bad.glob("*.yaml"))   # and a generation setting changed: generation parity fails too
    text, n = re.subn(r"(?m)^(\s*)repetition_penalty: 1.0$", r"\1repetition_penalty: 1.3", yaml_path.read_text())
    assert n == 1
    yaml_path.write_text(text)
    proc = run_cli("verify", SRC, bad, "--junit", bad.parent / "verify.xml", "--plot", bad.parent / "v.svg")
    assert proc.returncode == 1, proc.stderr
    return bad.parent


def cases(xml: Path) -> dict:
    from junitparser import JUnitXml
    suites = list(JUnitXml.fromfile(str(xml)))
    assert len(suites) == 1
    return {case.name: case for case in suites[0]}


def test_the_junit_file_validates_against_the_junit_schema(passing, failing):
    import xmlschema
    schema = xmlschema.XMLSchema(str(SCHEMA))
    for xml in (passing / "ci" / "verify.xml", failing / "verify.xml"):
        schema.validate(str(xml))


def test_a_passing_verify_is_a_junit_suite_of_passing_checks_one_per_place(passing):
    from junitparser import JUnitXml
    got = cases(passing / "ci" / "verify.xml")
    assert list(got) == ["config parity", "generation parity", "logits", *[f"stage {p}" for p in PLACES]]
    assert all(case.is_passed for case in got.values())
    assert "ratio=" in got["stage layer.0"].system_out and "mean_abs_diff=" in got["logits"].system_out
    suite = next(iter(JUnitXml.fromfile(str(passing / "ci" / "verify.xml"))))
    assert suite.tests == len(got) and suite.failures == 0


def test_a_failing_verify_names_the_failing_place_and_its_numbers_as_the_message(failing):
    got = cases(failing / "verify.xml")
    assert got["stage embedding"].is_passed and got["stage layer.0"].is_passed and got["config parity"].is_passed
    (result,) = got["stage layer.1"].result
    assert result.message.startswith("layer.1 (first divergence): distance from the float64 reference")
    assert "> limit" in result.message and "x the float32 noise" in result.message
    assert not got["logits"].is_passed   # the fault carries on to the logits


def test_a_changed_generation_setting_is_a_failing_generation_parity_case(failing):
    got = cases(failing / "verify.xml")
    (result,) = got["generation parity"].result
    assert result.message == "generation.repetition_penalty 1.3 vs 1.0 from generation_config.json"


def test_the_png_plot_is_an_image_that_names_every_place(passing):
    from PIL import Image
    with Image.open(passing / "v.png") as image:
        assert image.format == "PNG" and image.width >= 600 and image.height >= 400
        assert image.text["Description"] == "places: " + " ".join([*PLACES, "logits"])
        pixels = np.asarray(image.convert("L"))
    assert (pixels < 128).mean() > 0.01   # something is drawn, not a blank page


def test_the_svg_plot_shows_every_place_the_limit_and_the_failure(failing):
    svg = (failing / "v.svg").read_text()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    for text in [*PLACES, "logits", "limit (8 x float32 noise)", "mean |MindSpore - HF float32|", "fails",
                 "FAIL at layer.1"]:
        assert text in svg, text


def test_report_paths_are_checked_before_the_work(converted, tmp_path):
    refused(run_cli("verify", SRC, converted, "--plot", tmp_path / "v.pdf"), "v.pdf", ".png or .svg")
    refused(run_cli("verify", SRC, converted, "--junit", tmp_path), str(tmp_path), "is a directory")
    refused(run_cli("verify", SRC, converted, "--junit", converted / "verify.xml"), "inside", str(converted))
    assert not (converted / "verify.xml").exists()
