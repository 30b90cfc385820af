"""What either reader returns: a checkpoint's config, tensor headers and the files they came from.

The HF reader (hf_source) and the MindSpore reader (ms_source) both fill it; the planners read it
without caring which side it came from. `config` is config.json on the HF side and the MindFormers
model_config on the MindSpore side.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..formats.tensor import TensorRef

TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


@dataclass
class Checkpoint:
    root: Path
    config: dict
    generation_config: dict | None
    tensors: dict[str, TensorRef]
    weight_files: list[Path]
    index_file: Path | None = None
    shard_of: dict[str, int] = field(default_factory=dict)  # tensor name -> index in weight_files
    tokenizer_files: list[Path] = field(default_factory=list)
    config_path: Path | None = None     # default: root/config.json
    non_tensors: list[str] = field(default_factory=list)  # checkpoint entries that are not tensors
    recorded_table: str | None = None   # MindSpore side: the mapping table the YAML says it was written with
    # MindSpore side: the HF dtype conversion.json records these very weight files were widened from
    # (--device CPU of a half-precision source), so that the way back can narrow them exactly
    widened_from: str | None = None
    # LoRA (sources/adapter.py). HF side: the --adapter directory read (an adapter.Adapter). MindSpore
    # side: mindpet's factors, kept apart from the model's tensors, the YAML's pet_config, and what
    # hf2ms recorded of the PEFT adapter it came from (llama_convert.adapter in the YAML).
    adapter: Any = None
    lora: dict[str, TensorRef] = field(default_factory=dict)
    pet_config: dict | None = None
    adapter_record: dict | None = None
    other_inputs: list[Path] = field(default_factory=list)  # read too: a multi-rank checkpoint's strategy files
    ranks: dict | None = None           # a multi-rank checkpoint: which rank files were merged, and why those

    @property
    def sharded(self) -> bool:
        return len(self.weight_files) > 1

    @property
    def config_file(self) -> Path:
        return self.config_path or self.root / "config.json"

    def input_files(self) -> list[Path]:
        extra = [self.index_file] if self.index_file else []
        gen = [self.root / "generation_config.json"] if self.generation_config is not None else []
        gen = [p for p in gen if p.exists()]
        adapter = self.adapter.files if self.adapter is not None else []
        return [self.config_file, *gen, *extra, *self.weight_files, *self.other_inputs, *self.tokenizer_files,
                *adapter]
