"""Which side a path is (HF or MindSpore) and its tensors from headers: a directory or one checkpoint file."""
from __future__ import annotations

from pathlib import Path

from ..core.errors import ConvertError
from ..formats import ckpt, safetensors as st
from ..formats.files import check_regular
from ..formats.foreign import recognise_file
from ..formats.tensor import TensorRef
from ..formats.torch_bin import read_bin
from ..table.loader import yaml_names
from .hf import open_hf_dir
from .checkpoint import Checkpoint
from .ms import ms_checkpoint_files, name_map, open_ms_dir, read_ms_headers
from .ranks import is_rank_dir, merge, open_rank_dir


def is_mindspore(path: Path) -> bool:
    """A MindSpore side: a .ckpt file, a directory (of a file) holding a MindFormers YAML, MindSpore's
    safetensors name map or a .ckpt, or a multi-rank directory (rank_{k}/, or a training run's output/
    with checkpoint/rank_{k}/)."""
    root = path.parent if path.is_file() else path
    if path.is_file() and path.suffix == ".ckpt" or is_rank_dir(path):
        return True
    return (any((root / n).exists() for n in (*yaml_names(), st.NAME_MAP))
            or (path.is_dir() and any(path.glob("*.ckpt"))))


def read_headers(path: Path) -> tuple[str, list[TensorRef]]:
    """('hf'|'ms', tensors) of a HF directory, a MindSpore directory, or one checkpoint file."""
    path = Path(path)
    if not path.exists():
        raise ConvertError(path, "not found")
    if not path.is_dir():
        check_regular(path, "checkpoint file")  # a FIFO or device is refused for what it is
    side = "ms" if is_mindspore(path) else "hf"
    if is_rank_dir(path):
        return side, list(merge(path).tensors.values())
    if path.is_file():
        if path.suffix == ".ckpt":
            return side, ckpt.scan(path)[0]
        if path.suffix == ".safetensors":
            return side, list(st.read_header(path)[0].values())
        if path.suffix == ".bin":
            return side, list(read_bin(path).values())
        raise recognise_file(path) or ConvertError(path, "unknown checkpoint type", "expected .safetensors, .ckpt or .bin")
    if side == "hf":
        return side, list(open_hf_dir(path).tensors.values())
    files = ms_checkpoint_files(path)
    tensors = read_ms_headers(files)[0]
    if files[0].suffix == ".safetensors":
        name_map(path, tensors)
    return side, list(tensors.values())


def open_mindspore(path: Path, config: Path | None = None, step: str | None = None,
                   strategy: str | Path | None = None) -> Checkpoint:
    """A MindSpore checkpoint of any kind with its model_config: one directory or file, or a multi-rank
    directory merged as it is read (`step`, `strategy`: which save, which layout; see sources/ranks.py)."""
    path = Path(path)
    if is_rank_dir(path):
        return open_rank_dir(path, config, step, Path(strategy) if strategy else None)
    for given, flag in ((step, "--step"), (strategy, "--strategy")):
        if given is not None:
            raise ConvertError(path, f"{flag} is for a multi-rank directory (rank_{{k}}/ or a run's output/), "
                               "and this is a single checkpoint", f"leave {flag} out")
    return open_ms_dir(path, config)
