"""What the user asked for, one dataclass per direction, so the plan and the provenance record agree.

Each direction has only the options that mean something for it: the way back always writes HF
safetensors, so MS2HFOptions has no `format` a caller could set to "ckpt".
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from decimal import Decimal

FORMATS = ("ckpt", "safetensors")
DTYPE_CHOICES = ("keep", "bfloat16", "float16", "float32")
DEVICES = ("Ascend", "CPU")


@dataclass(frozen=True)
class HF2MSOptions:
    """hf2ms: a HF directory -> MindSpore weights + MindFormers YAML."""
    format: str = "ckpt"
    dtype: str = "keep"
    qkv_concat: bool = False
    untie: bool = False
    seq_length: int | None = None
    max_shard_size: int | None = None      # bytes
    device: str = "Ascend"                 # kernel settings written into the YAML
    table: str | None = None               # None: chosen by config.json's architectures / model_type
    ckpt_slice_bytes: int | None = None    # None: MindSpore's 512 MiB
    ckpt_align_min_bytes: int | None = None  # None: copied tensors from 400 KiB up are padded into alignment
    hash: bool = True                      # sha256 of every input and output file in conversion.json

    def __post_init__(self) -> None:
        _one_of("format", self.format, FORMATS)
        _one_of("dtype", self.dtype, DTYPE_CHOICES)
        _one_of("device", self.device, DEVICES)

    def as_dict(self) -> dict:
        return asdict(self)


DEFAULT_HF_SHARD = 5 * 10**9   # transformers' own default max_shard_size


@dataclass(frozen=True)
class MS2HFOptions:
    """ms2hf: MindSpore weights + MindFormers YAML -> a HF directory of safetensors."""
    dtype: str = "keep"
    max_shard_size: int | None = DEFAULT_HF_SHARD   # bytes; None: one file
    table: str | None = None               # None: the table the YAML records, else llama
    hash: bool = True

    def __post_init__(self) -> None:
        _one_of("dtype", self.dtype, DTYPE_CHOICES)

    # What the writers ask of any plan's options; fixed for this direction.
    format = "safetensors"
    ckpt_slice_bytes = None
    ckpt_align_min_bytes = None

    def as_dict(self) -> dict:
        return asdict(self)


def _one_of(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r}; choose one of {', '.join(choices)}")


_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


_SIZE = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)([A-Z]*)")


def parse_size(text: str) -> int:
    """'5GB', '500MB', '2GiB' or a byte count, as transformers' max_shard_size accepts.

    Plain decimals only: float() would also take 'inf', 'nan' and '1e400', none of which is a size.
    """
    s = text.strip().upper().replace(" ", "")
    m = _SIZE.fullmatch(s)
    if not m or m.group(2) not in _UNITS:
        raise ValueError(f"cannot read size {text!r}; write e.g. 5GB, 500MB or 2GiB")
    value = int(Decimal(m.group(1)) * _UNITS[m.group(2)])
    if value < 1:
        raise ValueError(f"size {text!r} must be at least 1 byte")
    return value
