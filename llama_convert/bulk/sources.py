"""Manifests written for the user: every model snapshot of a HF hub cache, or every model under a
directory. Read offline: refs/main is a file in the cache, nothing is downloaded or looked up."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

from ..core.errors import ConvertError

_COMMIT = re.compile(r"[0-9a-f]{40}")


def default_hf_cache() -> Path:
    """Where huggingface_hub keeps its cache: HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def _normal(path: Path) -> Path:
    """Absolute and without `..` or `.` (`.../bulk/../../shared` -> `.../shared`), as written into a manifest
    someone reads; symlinks are kept as the user named them."""
    return Path(os.path.normpath(Path(path).absolute()))


def rows_from_hf_cache(cache: Path, out_root: Path) -> list[dict]:
    """One row per model snapshot that holds a config.json: the snapshot refs/main names goes to
    OUT_ROOT/ORG--NAME, any other to OUT_ROOT/ORG--NAME@COMMIT12."""
    cache, out_root = _normal(cache), _normal(out_root)
    if not cache.is_dir():
        raise ConvertError(cache, "is not a directory", "give the hub cache, e.g. ~/.cache/huggingface/hub")
    rows = []
    for repo in sorted(cache.glob("models--*")):
        repo_id = repo.name.removeprefix("models--").replace("--", "/", 1)
        main = repo / "refs" / "main"
        main_commit = main.read_text().strip() if main.is_file() else None
        for snap in sorted((repo / "snapshots").glob("*")):
            if not (snap / "config.json").exists():
                continue
            name = repo.name.removeprefix("models--")
            out = out_root / (name if snap.name == main_commit else f"{name}@{snap.name[:12]}")
            rows.append({"id": out.name, "src": str(snap), "out": str(out), "repo": repo_id, "commit": snap.name,
                         **({"note": "refs/main"} if snap.name == main_commit else {})})
    if not rows:
        raise ConvertError(cache, "holds no model snapshot with a config.json", "is this a HF hub cache?")
    return rows


def _model_dirs(root: Path):
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if "config.json" in filenames:
            yield here, "hf2ms"
            dirnames.clear()  # a model directory's subdirectories are not models of their own
        elif any(f.endswith(".ckpt") for f in filenames) or (
                any(f.endswith(".safetensors") for f in filenames) and any(f.endswith(".yaml") for f in filenames)):
            yield here, "ms2hf"
            dirnames.clear()
        dirnames.sort()


def rows_from_dir(root: Path, out_root: Path) -> list[dict]:
    """One row per model directory under ROOT (HF: config.json; MindSpore: .ckpt, or safetensors with a
    YAML), its output at the same relative place under OUT_ROOT."""
    root, out_root = _normal(root), _normal(out_root)
    if not root.is_dir():
        raise ConvertError(root, "is not a directory")
    if out_root.is_relative_to(root):
        raise ConvertError(out_root, f"lies inside ROOT {root}", "outputs would be found as models next time")
    rows = []
    for model, direction in _model_dirs(root):
        rel = model.relative_to(root)
        rows.append({"id": str(rel) if str(rel) != "." else model.name, "src": str(model),
                     "out": str(out_root / rel), **({"direction": direction} if direction != "hf2ms" else {})})
    if not rows:
        raise ConvertError(root, "holds no model directory", "a HF model directory has a config.json")
    return rows


def manifest_text(rows: list[dict], origin: str) -> str:
    return f"# bulk manifest written by llama-convert bulk plan from {origin}\n" + \
        "".join(json.dumps(r) + "\n" for r in rows)
