"""What the user asked for: one frozen dataclass per command, each option declared once.

An option is a dataclass field whose metadata holds its `Flag`: the help text, how a value given as
text or JSON becomes the field's value (`parse`), its choices. Everything else is derived from it: the
command line's click options (cli.py), the keys a bulk manifest row may set and the checking of their
values (bulk/manifest.py), and the options a bulk runner hands a row, as data (bulk/row.py). Fields
without a Flag are settings for library callers and tests only.

Each direction has only the options that mean something for it: the way back always writes HF
safetensors, so MS2HFOptions has no `format` a caller could set to "ckpt".
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from typing import Any, Callable

FORMATS = ("ckpt", "safetensors")
DTYPE_CHOICES = ("keep", "bfloat16", "float16", "float32")
DEVICES = ("Ascend", "CPU")
MAX_COUNT = 2**31 - 1   # a count (a length, a batch, a seed) beyond int32 is a typo, not a wish

_TRUE, _FALSE = ("true", "yes", "1", "on"), ("false", "no", "0", "off")


# ---------------------------------------------------------------- how a value is read


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def choice(choices: tuple[str, ...]) -> Callable[[object], str]:
    """One of `choices`, in any letter case (`--device cpu`); the result is the choice as declared."""
    by_key = {c.lower(): c for c in choices}

    def parse(value: object) -> str:
        if isinstance(value, str) and value.strip().lower() in by_key:
            return by_key[value.strip().lower()]
        raise ValueError(f"is {_shown(value)}; choose one of {', '.join(choices)}")
    parse.choices = choices  # type: ignore[attr-defined]  # for the CLI's help and completion
    return parse


def boolean(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(f"must be true or false, not {_shown(value)}")


def whole(minimum: int = 1, maximum: int = MAX_COUNT) -> Callable[[object], int]:
    """A whole number in [minimum, maximum], given as a number or as its digits."""
    def parse(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, str)) or (isinstance(value, str) and len(value) > 20):
            raise ValueError(f"must be a whole number, not {_shown(value)}")
        try:
            n = int(value)
        except ValueError:
            raise ValueError(f"must be a whole number, not {_shown(value)}") from None
        if not minimum <= n <= maximum:
            raise ValueError(f"must be between {minimum} and {maximum}, not {n}")
        return n
    return parse


def positive_number(value: object) -> float:
    """A finite number above zero (a timeout in seconds)."""
    try:
        x = float(value) if isinstance(value, (int, float, str)) and not isinstance(value, bool) else None
    except ValueError:
        x = None
    if x is None or not 0 < x < float("inf"):
        raise ValueError(f"must be a number above 0, not {_shown(value)}")
    return x


def text(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"must be a non-empty string, not {_shown(value)}")
    return value.strip()


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
    if value >= 2**63:
        raise ValueError(f"size {text!r} is larger than any file")
    return value


def size(value: object) -> int:
    """A byte count: a whole number, or text such as 5GB or 2GiB."""
    if isinstance(value, bool) or not isinstance(value, (int, str)) or (isinstance(value, str) and len(value) > 40):
        raise ValueError(f"is a size (e.g. 5GB), not {_shown(value)}")
    return parse_size(str(value))


def key_value(value: object) -> tuple[str, str]:
    """KEY=VALUE (`--set dtype=bfloat16`): the key with - read as _, both stripped."""
    key, sep, rest = text(value).partition("=")
    if not sep or not key.strip():
        raise ValueError(f"{_shown(value)}: write KEY=VALUE, e.g. dtype=bfloat16")
    return key.strip().replace("-", "_"), rest.strip()


def token_ids(value: object) -> tuple[int, ...]:
    """Token ids: `1,2,3` or a list of whole numbers."""
    items = value.replace(" ", "").split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise ValueError(f"must be token ids such as 1,2,3, not {_shown(value)}")
    try:
        ids = tuple(whole(0)(x) for x in items if x != "")
    except ValueError:
        raise ValueError("write token ids separated by commas, e.g. 1,2,3") from None
    if not ids:
        raise ValueError("give at least one token id")
    return ids


@dataclass(frozen=True)
class Parallel:
    """--parallel: the cards the output is cut for. mp = model_parallel (tensor parallel), pp =
    pipeline_stage, dp = data_parallel (ranks that hold the same slices); vocab_emb_dp = MindFormers'
    switch that keeps the embedding and lm_head whole on every card (its default, true)."""
    mp: int = 1
    pp: int = 1
    dp: int = 1
    vocab_emb_dp: bool = True

    @property
    def ranks(self) -> int:
        return self.dp * self.mp * self.pp

    def __str__(self) -> str:
        text = f"mp={self.mp},pp={self.pp},dp={self.dp}"
        return text if self.vocab_emb_dp else text + ",vocab_emb_dp=false"

    @classmethod
    def parse(cls, value: object) -> "Parallel":
        """`mp=M[,pp=P][,dp=D][,vocab_emb_dp=false]`, as --parallel and a manifest give it."""
        if isinstance(value, Parallel):
            return value
        given: dict[str, object] = {}
        for item in text(value).replace(" ", "").split(","):
            key, sep, val = item.partition("=")
            key = key.lower().replace("-", "_")
            key = {"model_parallel": "mp", "pipeline_stage": "pp", "data_parallel": "dp"}.get(key, key)
            if not sep or key not in ("mp", "pp", "dp", "vocab_emb_dp"):
                raise ValueError(f"{_shown(value)}: write mp=M[,pp=P][,dp=D], e.g. mp=8 or mp=4,pp=2")
            if key in given:
                raise ValueError(f"{_shown(value)}: {key} is given twice")
            try:
                given[key] = boolean(val) if key == "vocab_emb_dp" else whole(1, 4096)(val)
            except ValueError as e:
                raise ValueError(f"{key} {e}") from None
        if "mp" not in given:
            raise ValueError(f"{_shown(value)}: give mp=M (model_parallel), e.g. mp=8 or mp=4,pp=2")
        return cls(**given)  # type: ignore[arg-type]


def parallel(value: object) -> str:
    """--parallel's value as its canonical text (what conversion.json and a bulk row carry)."""
    return str(Parallel.parse(value))


def run_step(value: object) -> str:
    """A training save's step as its file names write it: N, or EPOCH_N."""
    text_value = str(value).strip() if isinstance(value, (int, str)) and not isinstance(value, bool) else ""
    if not re.fullmatch(r"(\d{1,12}_)?\d{1,12}", text_value):
        raise ValueError(f"is {_shown(value)}; write a step N or EPOCH_N, e.g. 500 or 2_500")
    return text_value


# ---------------------------------------------------------------- an option, declared once


@dataclass(frozen=True)
class Flag:
    """How an option is given. Its command-line flag is --NAME (the field's name with - for _), a
    bulk manifest key is NAME; a bool is an on/off flag (`negatable`: --NAME/--no-NAME)."""
    help: str
    parse: Callable[[object], Any] = text
    metavar: str | None = None
    default_text: str | None = None     # --help's [default: ...] where the field's default says too little
    negatable: bool = False
    tri_state: bool = False             # --NAME/--no-NAME whose absence means "decide for me" (None)
    manifest: bool = True               # a bulk manifest row (or --set) may give it
    name: str | None = None             # the flag's name where it is not the field's (--set for defaults)
    multiple: bool = False              # given any number of times: the field gets a tuple of parsed values

    @property
    def choices(self) -> tuple[str, ...]:
        return getattr(self.parse, "choices", ())


def option(default: Any, help: str, **how: Any) -> Any:
    """A field that is a user's option: `help` and the Flag's other settings describe how it is given."""
    factory = {"default_factory": default} if callable(default) else {"default": default}
    return field(metadata={"flag": Flag(help=help, **how)}, **factory)


def flags(cls: type) -> dict[str, Flag]:
    """name -> Flag of every user option of an options class, in declaration order."""
    return {f.name: f.metadata["flag"] for f in dataclasses.fields(cls) if "flag" in f.metadata}


def parse_value(cls: type, name: str, value: object) -> Any:
    """A value as a user gave it (command-line text, manifest text or JSON) as option `name` of `cls`
    takes it; ValueError says what is wrong with it (without the option's name)."""
    flag = flags(cls)[name]
    if flag.tri_state and value is None:
        return None
    return boolean(value) if _is_bool(cls, name) else flag.parse(value)


def _is_bool(cls: type, name: str) -> bool:
    hint = next(f.type for f in dataclasses.fields(cls) if f.name == name)
    return hint in (bool, "bool", "bool | None")


def _one_of(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r}; choose one of {', '.join(choices)}")


class Options:
    """What every options class shares: checked choices and a plain-data view (conversion.json, bulk rows)."""

    def __post_init__(self) -> None:
        for name, flag in flags(type(self)).items():
            if flag.choices:
                _one_of(name, getattr(self, name), flag.choices)

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Any:
        """The options `as_dict` gave (a bulk row's, across a process or a Ray task)."""
        return cls(**{f.name: (tuple(data[f.name]) if isinstance(data[f.name], list) else data[f.name])
                      for f in dataclasses.fields(cls) if f.name in data})


@dataclass(frozen=True)
class HF2MSOptions(Options):
    """hf2ms: a HF directory -> MindSpore weights + MindFormers YAML."""
    format: str = option("ckpt", "ckpt: one model.ckpt; safetensors: MindSpore safetensors, sharded like the source.",
                         parse=choice(FORMATS))
    dtype: str = option("keep", "keep copies weight bytes exactly; a cast rounds to nearest-even and is recorded.",
                        parse=choice(DTYPE_CHOICES))
    qkv_concat: bool = option(False, "Write fused attention.w_qkv and feed_forward.w_gate_hidden.")
    untie: bool = option(False, "Write lm_head.weight as a copy of the embedding of a tied model.")
    seq_length: int | None = option(None, "seq_length in the YAML.", parse=whole(1, 2**24), metavar="N",
                                    default_text="min(max_position_embeddings, 4096)")
    max_shard_size: int | None = option(None, "Shard safetensors output, e.g. 5GB or 500MB.", parse=size,
                                        metavar="SIZE")
    device: str = option("Ascend", "Settings written into the YAML: kernels and context; CPU also float32 weights "
                         "and generation MindSpore's CPU build can run.", parse=choice(DEVICES))
    table: str | None = option(None, "Mapping table to convert with.", metavar="NAME|PATH",
                               default_text="chosen from the model's architecture")
    hash: bool = option(True, "sha256 of every input and output file in conversion.json (costs a read of each); "
                        "also checks HF hub cache blobs against their names (--no-hash: no check).", negatable=True)
    parallel: str | None = option(None, "Cut the output for D*M*P cards: rank_K/ per card, the strategy files and a "
                                  "parallel YAML (model_parallel M, pipeline_stage P, data_parallel D).",
                                  parse=parallel, metavar="mp=M[,pp=P][,dp=D]", default_text="one card")
    adapter: str | None = option(None, "A PEFT LoRA adapter directory of this model: written beside it as mindpet's "
                                 "factors with a pet_config in the YAML.", metavar="ADAPTER_DIR")
    merge_adapter: bool = option(False, "Merge --adapter into the weights instead: W + (alpha/r) B A in float32, "
                                 "rounded once; no pet_config.")
    ckpt_slice_bytes: int | None = None    # None: MindSpore's 512 MiB
    ckpt_align_min_bytes: int | None = None  # None: copied tensors from 400 KiB up are padded into alignment

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.parallel is not None:  # a library caller's spelling, recorded the one way the CLI records it
            object.__setattr__(self, "parallel", parallel(self.parallel))


@dataclass(frozen=True)
class SourceOptions(Options):
    """Where a HF source comes from when it is named by hub repo id (or a models--ORG--NAME cache folder):
    which snapshot, and whether it may be fetched. Not options of the conversion itself: conversion.json
    records the repo id and commit the source resolved to."""
    revision: str | None = option(None, "The snapshot of a hub repo id (or of a models--ORG--NAME cache folder) to "
                                  "read: a branch, tag or commit.", metavar="REV", default_text="main")
    download: bool = option(False, "Fetch a hub repo id that the local hub cache (HF_HUB_CACHE / HF_HOME) does not "
                            "hold, with huggingface_hub; never done without this flag.")


@dataclass(frozen=True)
class GenerateOptions(Options):
    """generate: MindFormers' text generation from a conversion's YAML, the smoke test after converting."""
    prompt: str | None = option(None, "The text to continue (required).", metavar="TEXT", manifest=False)
    max_new_tokens: int | None = option(None, "Tokens to generate.", parse=whole(1, 2**20), metavar="N",
                                        default_text="the YAML's max_length", manifest=False)


DEFAULT_HF_SHARD = 5 * 10**9   # transformers' own default max_shard_size


@dataclass(frozen=True)
class MS2HFOptions(Options):
    """ms2hf: MindSpore weights + MindFormers YAML -> a HF directory of safetensors."""
    dtype: str = option("keep", "keep: the model's param_init_type (norms narrow back exactly); or cast.",
                        parse=choice(DTYPE_CHOICES))
    max_shard_size: int | None = option(DEFAULT_HF_SHARD, "Shard the HF safetensors above this size.", parse=size,
                                        metavar="SIZE", default_text="5GB")
    table: str | None = option(None, "Mapping table to read back with.", metavar="NAME|PATH",
                               default_text="the one the YAML records, else llama")
    hash: bool = option(True, "sha256 of every input and output file in conversion.json (costs a read of each).",
                        negatable=True)
    merge_adapter: bool = option(False, "A checkpoint with mindpet LoRA factors: merge them into the weights "
                                 "(W + (alpha/r) B A in float32, rounded once) instead of writing OUT_DIR/adapter/.")
    step: str | None = option(None, "A multi-rank directory (a training run's output/): read the save of this "
                              "step, N or EPOCH_N as in the file names.", parse=run_step, metavar="N|EPOCH_N",
                              default_text="the one MindFormers resumes from: meta.json, else the newest")
    strategy: str | None = option(None, "A multi-rank directory: its strategy file, or a directory of the "
                                  "per-rank files.", metavar="FILE|DIR", default_text="strategy/ beside checkpoint/")

    # What the writers ask of any plan's options; fixed for this direction.
    format = "safetensors"
    ckpt_slice_bytes = None
    ckpt_align_min_bytes = None
