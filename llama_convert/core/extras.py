"""Optional dependencies: which extra of llama-convert installs each, and the one error that says so.

Converting safetensors needs none of them. Reading pytorch_model.bin needs torch, `verify` the
frameworks on both sides, `bulk --executor ray` Ray. One that is missing is a fault of the
installation, told as bad input (exit 2) with the line that installs it, never as a bug of ours.
"""
from __future__ import annotations

import importlib
import re
import sys
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Iterator

from .errors import ConvertError

# Top-level module -> the extra of pyproject.toml that pins it.
EXTRAS = {"torch": "torch", "mindspore": "verify", "mindformers": "verify", "transformers": "verify",
          "safetensors": "verify", "ray": "ray", "huggingface_hub": "hub", "matplotlib": "plot",
          # verify --adapter runs transformers with PEFT; the test extra pins both (conversion needs neither)
          "peft": "test", "accelerate": "test"}


def extra_for(module: str | None) -> str | None:
    """The extra that pins `module` (a dotted name is judged by its top level), or None: not one we know,
    or one of our own modules, whose absence is a broken install or a bug, not an extra to add."""
    top = (module or "").split(".")[0]
    return None if top == "llama_convert" else EXTRAS.get(top)


def install_line(extra: str) -> str:
    return f"{sys.executable} -m pip install '.[{extra}]'"


def pins(extra: str) -> list[str]:
    """The requirements `extra` installs, exactly as pyproject.toml pins them: the pyproject.toml of the
    checkout this package runs from, else the installed distribution's metadata (an install from a wheel)."""
    try:
        import tomllib
        project = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
        return list(project["project"]["optional-dependencies"][extra])
    except Exception:  # not a checkout
        pass
    try:
        from importlib import metadata
        return [r.split(";")[0].strip() for r in metadata.requires("llama-convert") or []
                if re.search(rf"extra\s*==\s*['\"]{re.escape(extra)}['\"]", r)]
    except Exception:  # not installed as a distribution either
        return []


def pinned_line(extra: str) -> str:
    """What installs `extra`: from a checkout, and, for an install from a wheel, the pinned packages."""
    line = f"{install_line(extra)} in the llama-convert checkout"
    exact = [p for p in pins(extra) if not p.startswith("llama-convert")]
    return line + (f" (or: {sys.executable} -m pip install {' '.join(repr(p) for p in exact)})" if exact else "")


def missing(error: ModuleNotFoundError, needed_for: str, extra: str | None = None) -> ConvertError | None:
    """The refusal for a failed import, or None when no extra would mend it. `extra`: the one the purpose
    needs, which brings the module and what the purpose imports next (verify needs more than torch); a
    module it does not list is then a dependency of one it does. By default, the module's own extra."""
    name = error.name or ""
    if name.split(".")[0] in ("", "llama_convert"):
        return None
    extra = extra or extra_for(name)
    if extra is None:
        return None
    return ConvertError(None, f"{needed_for} needs the Python package {name.split('.')[0]}, which is not installed",
                        f"install llama-convert's {extra} extra, pinned as the tests ran it: {pinned_line(extra)}")


@contextmanager
def needed_for(what: str, extra: str) -> Iterator[None]:
    """Imports inside the block that fail become the refusal naming `extra` (`what`: who needs them)."""
    try:
        yield
    except ModuleNotFoundError as e:
        refusal = missing(e, what, extra)
        if refusal is None:
            raise
        raise refusal from None


def require(module: str, what: str) -> ModuleType:
    """import `module`, or the refusal naming its extra."""
    with needed_for(what, EXTRAS[module.split(".")[0]]):
        return importlib.import_module(module)
