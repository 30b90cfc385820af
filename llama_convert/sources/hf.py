"""The HuggingFace reader: a model directory's configs, weight headers and tokenizer files. No tensor data."""
from __future__ import annotations

from pathlib import Path

from .checkpoint import TOKENIZER_FILES, Checkpoint
from ..core.errors import ConvertError
from ..formats import safetensors as st
from ..formats.foreign import recognise_dir, recognise_file
from ..formats.files import check_regular, parse_json_object, read_small
from ..formats.tensor import TensorRef
from ..formats.torch_bin import read_bin
from ..core.paths import resolved


def load_json(path: Path, what: str = "JSON file") -> dict:
    return parse_json_object(read_small(path, what), path, what, "the file is truncated or corrupt")


def open_hf_dir(root: Path) -> Checkpoint:
    """Headers of a HF checkpoint directory, with every file checked to exist and parse."""
    root = Path(root)
    if not root.is_dir():
        resolved(root)  # a symlink loop is named as one, not as a missing directory
        foreign = recognise_file(root) if root.is_file() else None
        if foreign is not None:
            raise foreign
        raise ConvertError(root, "source directory not found" if not root.exists() else "is not a directory")
    if not (root / "config.json").exists():
        foreign = recognise_dir(root)  # a GGUF, Meta original or llama2.c checkpoint: say what it is
        if foreign is not None:
            raise foreign
    config = load_json(root / "config.json", "config.json")
    gen_path = root / "generation_config.json"
    generation = load_json(gen_path, "generation_config.json") if gen_path.exists() else None
    tokenizer = tokenizer_files(root)

    for index_name, single, reader in ((st.HF_INDEX, st.HF_SINGLE, _read_st),
                                       ("pytorch_model.bin.index.json", "pytorch_model.bin", read_bin)):
        index = root / index_name
        if index.exists():
            files, tensors, shard_of = _read_index(index, reader)
            return Checkpoint(root, config, generation, tensors, files, index, shard_of, tokenizer)
        if (root / single).exists():
            path = root / single
            tensors = reader(path)
            return Checkpoint(root, config, generation, tensors, [path], None, dict.fromkeys(tensors, 0), tokenizer)
    foreign = recognise_dir(root)
    if foreign is not None:
        raise foreign
    raise ConvertError(root, "no weights found (looked for model.safetensors, model.safetensors.index.json, "
                       "pytorch_model.bin, pytorch_model.bin.index.json)")


def tokenizer_files(root: Path) -> list[Path]:
    """The tokenizer files present in root, each a regular file: they are copied, and a FIFO would
    block the copy; a broken link would silently leave the output without its tokenizer."""
    found = []
    for name in TOKENIZER_FILES:
        path = root / name
        if path.is_symlink() and not path.exists():
            raise ConvertError(path, "is a broken symbolic link", "restore the file it points to, or remove the link")
        if path.exists():
            check_regular(path, name)
            found.append(path)
    return found


def _read_st(path: Path) -> dict[str, TensorRef]:
    return st.read_header(path)[0]


def _read_index(index: Path, reader) -> tuple[list[Path], dict[str, TensorRef], dict[str, int]]:
    weight_map = st.read_weight_map(index)
    names = sorted(set(weight_map.values()))
    files = [index.parent / n for n in names]
    tensors: dict[str, TensorRef] = {}
    shard_of: dict[str, int] = {}
    for i, path in enumerate(files):
        if not path.exists():
            raise ConvertError(path, f"shard listed in {index.name} is missing")
        for name, ref in reader(path).items():
            tensors[name] = ref
            shard_of[name] = i
    for name, file in weight_map.items():
        if name not in tensors or tensors[name].file != index.parent / file:
            raise ConvertError(index, f"lists {name!r} in {file}, but that shard does not contain it",
                               "the index and the shards disagree; re-download them together")
    return files, tensors, shard_of
