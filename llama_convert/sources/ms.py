"""The MindSpore reader: a checkpoint (a directory, a .ckpt or a .safetensors file) and its MindFormers
YAML, as headers and the model_config. No tensor data. Which table reads the model_config, and the
checks of its values, are the planner's job: the YAML may record the table it was written with.
"""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from .adapter import split_mindpet
from .checkpoint import TOKENIZER_FILES, Checkpoint
from ..core.errors import ConvertError
from ..formats import ckpt, safetensors as st
from ..formats.files import check_regular, read_small
from ..formats.tensor import TensorRef
from ..table.loader import safe_yaml, yaml_names
from ..core.paths import resolved
from ..table.value_types import kind


def read_mindformers_yaml(path: Path, hint: str = "pass --config with the model's YAML") -> tuple[dict, str | None]:
    """(model.model_config, the mapping table it records or None) of a MindFormers YAML."""
    try:
        data = _load_yaml(read_small(path, "MindFormers YAML", hint))
    except yaml.YAMLError:
        raise ConvertError(path, "is not a MindFormers YAML with model.model_config") from None
    if not isinstance(data, dict) or "model" not in data:
        raise ConvertError(path, "is not a MindFormers YAML with model.model_config")
    if not isinstance(data["model"], dict) or "model_config" not in data["model"]:
        what = f"is {kind(data['model'])}" if not isinstance(data["model"], dict) else "has no model_config"
        raise ConvertError(path, f"model: {what}; expected a mapping holding model_config")
    if not isinstance(data["model"]["model_config"], dict):
        raise ConvertError(path, f"model.model_config: is {kind(data['model']['model_config'])}; "
                                 f"expected a mapping of LlamaConfig fields")
    mc = dict(data["model"]["model_config"])
    mc.pop("type", None)
    # Where a run loads weights from, not what the model is: readers of MS_DIR load MS_DIR's own weights,
    # and a model built from this key would load the file it names (perhaps moved, perhaps another dtype).
    mc.pop("checkpoint_name_or_path", None)
    record = data.get("llama_convert")
    table = record.get("table") if isinstance(record, dict) else None
    if table is not None and not isinstance(table, str):
        raise ConvertError(path, f"llama_convert.table: is {kind(table)}; expected a table name")
    return mc, table


def _load_yaml(raw: bytes):
    """The YAML as MindFormers reads it. A path that is not UTF-8 is written as \\uDCxx escapes, which
    libyaml refuses and PyYAML's own loader (the one MindFormers uses) turns back into the path's bytes."""
    try:
        return safe_yaml(raw)
    except yaml.YAMLError as e:
        if "invalid Unicode character escape" not in str(e):
            raise
    return yaml.safe_load(raw)


def find_yaml(root: Path) -> Path:
    """The MindFormers YAML of an output directory, by the names the mapping tables write."""
    names = yaml_names()
    return next((root / n for n in names if (root / n).exists()), root / names[0])


def ms_checkpoint_files(path: Path) -> list[Path]:
    """The weight files of a MindSpore checkpoint: a .ckpt or .safetensors file, or those in a directory."""
    path = Path(path)
    if not path.exists():
        resolved(path)  # a symlink loop is named as one, not as a missing file
        raise ConvertError(path, "not found")
    files = [path] if not path.is_dir() else sorted(path.glob("*.ckpt")) or sorted(path.glob("*.safetensors"))
    if not files:
        raise ConvertError(path, "no .ckpt or .safetensors checkpoint found")
    for f in files:  # a FIFO or a directory named model.ckpt is refused by name, before any is read
        check_regular(f, "checkpoint file")
    return files


def read_ms_headers(files: list[Path]) -> tuple[dict[str, TensorRef], dict[str, int], list[str]]:
    """(tensors, file index of each tensor, non-tensor entries) from the headers of MindSpore files."""
    tensors, shard_of, others = {}, {}, []
    for i, f in enumerate(files):
        if f.suffix == ".ckpt":
            refs, non_tensor = ckpt.scan(f)
            others += non_tensor
        else:
            refs = list(st.read_header(f)[0].values())
        for ref in refs:
            if ref.name in tensors:  # which copy is the weight? Guessing could change the model
                raise ConvertError(f, f"tensor {ref.name!r} is also in {tensors[ref.name].file.name}",
                                   "a checkpoint holds each parameter once; remove the stray file")
            tensors[ref.name] = ref
            shard_of[ref.name] = i
    return tensors, shard_of, others


def open_ms_dir(path: Path, config: Path | None = None) -> Checkpoint:
    """A MindSpore checkpoint (a directory, a .ckpt or a .safetensors file) and its model_config."""
    files = ms_checkpoint_files(path)
    root = Path(path) if Path(path).is_dir() else Path(path).parent
    cfg_path = config or find_yaml(root)
    mc, table = read_mindformers_yaml(cfg_path)
    pet = mc.pop("pet_config", None)   # how the model is fine-tuned, not what it is
    tensors, shard_of, others = read_ms_headers(files)
    index = name_map(root, tensors) if Path(path).is_dir() and files[0].suffix == ".safetensors" else None
    lora = split_mindpet(tensors)  # after the map, which lists mindpet's factors among the parameters
    tokenizer = [root / n for n in TOKENIZER_FILES if (root / n).is_file()]
    return Checkpoint(root, mc, None, tensors, files, index, shard_of, tokenizer, config_path=cfg_path,
                      non_tensors=others, recorded_table=table, widened_from=recorded_widening(root, files),
                      lora=lora, pet_config=pet, adapter_record=adapter_record(cfg_path) if lora else None)

def adapter_record(path: Path) -> dict | None:
    """What hf2ms recorded of the PEFT adapter a LoRA conversion came from (the YAML's llama_convert.adapter),
    so that the way back writes its adapter_config.json again."""
    data = _load_yaml(read_small(path, "MindFormers YAML"))
    record = data.get("llama_convert") if isinstance(data, dict) else None
    found = record.get("adapter") if isinstance(record, dict) else None
    return found if isinstance(found, dict) else None


def name_map(root: Path, tensors: dict[str, TensorRef]) -> Path | None:
    """The file that maps a safetensors directory's parameters to their files, checked against the
    headers: MindSpore's param_name_map.json, or the HF-named index of earlier versions' output. A
    parameter mapped to a file that lacks it is silently left out by mindspore.load_distributed_checkpoint,
    so a map that disagrees with the files is refused."""
    if (root / st.NAME_MAP).is_file():
        index = root / st.NAME_MAP
        mapped = st.read_weight_map(index, bare=True)
    elif (root / st.HF_INDEX).is_file():
        index = root / st.HF_INDEX
        mapped = st.read_weight_map(index)
    else:
        return None
    for name, file in mapped.items():
        if name not in tensors or tensors[name].file.name != file:
            where = f"it is in {tensors[name].file.name}" if name in tensors else "no file holds it"
            raise ConvertError(index, f"maps {name!r} to {file}, but {where}",
                               "the map and the weight files disagree; convert again")
    # hyper_param.safetensors: MindSpore's file of what is not a parameter (a step count), loaded apart
    unmapped = sorted(n for n in set(tensors) - set(mapped) if tensors[n].file.name != "hyper_param.safetensors")
    if unmapped:
        raise ConvertError(index, f"does not map {unmapped[0]!r} ({tensors[unmapped[0]].file.name})"
                           + (f" nor {len(unmapped) - 1} more" if len(unmapped) > 1 else ""),
                           "the map and the weight files disagree; convert again")
    return index


def recorded_widening(root: Path, files: list[Path]) -> str | None:
    """The half-precision dtype root/conversion.json says these weight files were widened from, when it
    lists them at their present sizes and they are not newer than it (weights saved over since, by a
    training run say, are not what it describes), else None."""
    record_path = root / "conversion.json"
    if not record_path.is_file():
        return None
    try:
        record = json.loads(read_small(record_path, "conversion record"))
        widened = record["widened"]["from"]
        sizes = {o["name"]: o["size"] for o in record["outputs"]}
    except (ConvertError, ValueError, KeyError, TypeError):
        return None  # no record of a widening (or not ours): the weights' own dtype stands
    written = record_path.stat().st_mtime_ns  # the record is written after the weights it describes
    if widened not in ("bfloat16", "float16") or any(
            sizes.get(f.name) != f.stat().st_size or f.stat().st_mtime_ns > written for f in files):
        return None
    return widened
