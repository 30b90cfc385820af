"""Shared paths and helpers. The tests use real components only: real files, real mindspore."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

# MindFormers writes its log directory under LOCAL_DEFAULT_PATH (default: ./output); keep the checkout clean.
os.environ.setdefault("LOCAL_DEFAULT_PATH", tempfile.mkdtemp(prefix="mindformers-log-"))

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "fixtures"
SHARED = Path(os.environ.get("LLAMA_CONVERT_SHARED", REPO.parent / "shared"))
REAL_MODELS = SHARED / "real-models"
REAL_CONFIGS = SHARED / "real-configs"

FIXTURE_DIRS = sorted(p for p in FIXTURES.iterdir() if (p / "config.json").exists())
REAL_MODEL_DIRS = sorted(p for p in REAL_MODELS.glob("*") if (p / "config.json").exists()) if REAL_MODELS.exists() else []
REAL_CONFIG_FILES = sorted(REAL_CONFIGS.glob("*.json")) if REAL_CONFIGS.exists() else []
ALL_MODEL_DIRS = FIXTURE_DIRS + REAL_MODEL_DIRS


def model_id(p: Path) -> str:
    return p.name


def run_cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """The installed console script, exactly as a user runs it."""
    exe = Path(sys.executable).parent / "llama-convert"
    return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def ms():
    import mindspore
    mindspore.set_context(mode=mindspore.PYNATIVE_MODE)
    mindspore.set_device("CPU")
    return mindspore
