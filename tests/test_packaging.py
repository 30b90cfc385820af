"""A non-editable install carries the mapping tables: the CLI works from a built wheel; a plain
`pip install .` (no extras) converts safetensors and refuses what needs an extra by naming it."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

from conftest import FIXTURES, REPO


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel `pip install .` builds, without its dependencies (built offline with the venv's hatchling)."""
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(dist), str(REPO)], check=True, capture_output=True)
    (built,) = dist.glob("llama_convert-*.whl")
    return built


def test_wheel_ships_the_mapping_tables_and_the_cli_runs_from_it(tmp_path, wheel):
    assert "llama_convert/mappings/llama.yaml" in zipfile.ZipFile(wheel).namelist()

    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    env = {**os.environ, "PYTHONPATH": str(target)}
    code = ("import llama_convert, sys; assert llama_convert.__file__.startswith(sys.argv[1]), llama_convert.__file__; "
            "from llama_convert.cli import main; sys.argv = ['llama-convert'] + sys.argv[2:]; main()")
    proc = subprocess.run([sys.executable, "-c", code, str(target), "hf2ms", str(FIXTURES / "mha-untied-fp32"),
                           str(tmp_path / "out"), "--dry-run"], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "type: LlamaConfig" in proc.stdout


def _base_requirements(wheel: Path) -> list[str]:
    """The distribution names the wheel requires without any extra."""
    text = zipfile.ZipFile(wheel).read(next(n for n in zipfile.ZipFile(wheel).namelist()
                                             if n.endswith(".dist-info/METADATA"))).decode()
    reqs = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Requires-Dist:")]
    return [re.split(r"[<>=!~ ;\[]", r, maxsplit=1)[0] for r in reqs if "extra ==" not in r]


def _link_installed(dist_name: str, site: Path) -> None:
    """Put an installed distribution (its files as its RECORD lists them, top level only) into another
    site-packages by symlink: the base dependencies of a fresh venv without a download."""
    dist = metadata.distribution(dist_name)
    here = Path(sysconfig.get_paths()["purelib"])
    for top in sorted({Path(str(f)).parts[0] for f in dist.files or []}):
        if not (site / top).exists() and (here / top).exists() and not top.startswith(("..", "__pycache__")):
            (site / top).symlink_to(here / top)


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory, wheel) -> Path:
    """A new venv (no system site-packages) holding what `pip install .` installs and nothing else: the
    wheel, installed by pip, and its base dependencies linked from this venv (the same versions pip
    would resolve; linked so that the test needs no package index)."""
    venv = tmp_path_factory.mktemp("fresh") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                    "--no-deps", "--no-index", str(wheel)], check=True, capture_output=True)
    (site,) = (venv / "lib").glob("python*/site-packages")
    for name in _base_requirements(wheel):
        _link_installed(name, site)
    return venv


def test_a_fresh_venv_with_no_extras_lacks_the_frameworks_and_converts(fresh_venv, tmp_path):
    python = fresh_venv / "bin" / "python"
    for module in ("torch", "mindspore", "mindformers", "transformers"):
        assert subprocess.run([python, "-c", f"import {module}"], capture_output=True).returncode == 1, module
    proc = subprocess.run([fresh_venv / "bin" / "llama-convert", "hf2ms", FIXTURES / "mha-untied-fp32",
                           tmp_path / "out", "--device", "CPU"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_verify_in_a_fresh_venv_with_no_extras_is_exit_2_naming_the_verify_extra_and_its_pins(fresh_venv, tmp_path):
    exe = fresh_venv / "bin" / "llama-convert"
    src = FIXTURES / "mha-untied-fp32"
    assert subprocess.run([exe, "hf2ms", src, tmp_path / "out", "--device", "CPU"], capture_output=True).returncode == 0
    proc = subprocess.run([exe, "verify", src, tmp_path / "out"], capture_output=True, text=True, timeout=120)

    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert "verify needs the Python package" in line and "pip install '.[verify]'" in line, line
    assert "'torch==2.13.0'" in line and "'mindformers==1.9.0'" in line and "'transformers==4.57.1'" in line, line
