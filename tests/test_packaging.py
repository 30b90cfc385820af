"""A non-editable install carries the mapping tables: the CLI works from a built wheel."""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile

from conftest import FIXTURES, REPO


def test_wheel_ships_the_mapping_tables_and_the_cli_runs_from_it(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist"), str(REPO)], check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("llama_convert-*.whl")
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
