"""The mapping table's language: what each section may say, as frozen dataclasses, and the checks a
schema cannot express. Every user of a table reads these attributes; nobody reads the YAML's dicts.

A table is parsed once (typed.build) into a `Table`, then `check` makes sure its parts agree with each
other: expressions read only defined names, `{i}` patterns are used consistently, flags named in
`when:` exist, ops exist, message templates fill, the keys verify compares are typed. What a new
family needs beyond this data is a named Python rule (config_rules.RULES, `via:`) or op (ops.OPS),
never a new word in the table.
"""
# No `from __future__ import annotations`: the field types are evaluated once, as the classes are
# made, instead of compiled from ~80 strings at every first load.
import re
import string
from collections.abc import Mapping
from dataclasses import field
from pathlib import Path
from typing import ClassVar, Literal, Union

from . import exprs, ops, typed, value_types
from ..core.errors import ConvertError
from ..core.options import DEVICES
from .typed import UNSET, Invalid, OneOrMore, Record, Unset, empty, record

# A setting, a required value, a default: the table writes scalars only, so a loaded table (shared by
# every plan of a process) holds nothing anyone could change.
Scalar = Union[str, int, float, bool, None]


# ---------------------------------------------------------------------------- the header sections

@record
class HF(Record):
    """hf: which HF models this table converts."""
    architectures: tuple[str, ...]
    model_type: str
    model_class: str          # transformers' class: verify's HF model, and what ms2hf writes as architectures

    def __post_init__(self) -> None:
        if self.model_class not in self.architectures:
            raise Invalid(f"{self.model_class!r} is not among architectures {list(self.architectures)}",
                          "ms2hf writes it as config.json's architectures, which must lead back to this table",
                          at="model_class")


@record
class Trainer(Record):
    type: str
    model_name: str


@record
class Tokenizers(Record):
    """MindFormers' tokenizer class by the files a source ships."""
    model: str                # a sentencepiece tokenizer.model
    json: str                 # a tokenizer.json alone


@record
class MindFormers(Record):
    """mindformers: the classes, the YAML's file name, and settings written into every YAML."""
    config_class: str
    model_class: str
    yaml: str
    fixed: Mapping[str, Scalar]                   # model_config settings of every conversion
    device: Mapping[str, Mapping[str, Scalar]]    # --device -> model_config kernel settings
    context: Mapping[str, Mapping[str, Scalar]]   # --device -> the run configuration's context
    trainer: Trainer
    processor: str
    tokenizer: Tokenizers

    def __post_init__(self) -> None:
        for section in ("device", "context"):
            named = set(getattr(self, section))
            if named != set(DEVICES):
                raise Invalid(f"names {', '.join(sorted(named)) or 'no device'}",
                              f"give the settings of each --device: {', '.join(DEVICES)}", at=section)


# ---------------------------------------------------------------------------- keyed entries

@record
class Key(Record):
    """One key of a config file and what happens to it: exactly one verb (the words in VERBS), and
    the type its value must have (value_types.py) when the value is used."""
    VERBS: ClassVar[tuple[str, ...]] = ()
    VERB_REQUIRED: ClassVar[bool] = True
    type: OneOrMore[str] | None = None            # a name of value_types.TYPES; a list: any of them
    required: bool = False                        # absent or null is an error
    nullable: bool = False                        # null means "not given", as HF reads it
    fields: Mapping[str, OneOrMore[str]] = empty()   # types of some keys of a mapping value
    default: Scalar = None                        # the value when the key is absent or null

    @property
    def verb(self) -> str | None:
        """The verb this entry says, or None (a model_config entry that only types its key)."""
        said = self._said()
        return said[0] if said else None

    def _said(self) -> list[str]:
        return [v for v in self.VERBS if getattr(self, v) not in (None, (), UNSET)]

    @property
    def uses_value(self) -> bool:
        return True

    def __post_init__(self) -> None:
        said = self._said()
        if len(said) > 1 or (not said and self.VERB_REQUIRED):
            raise Invalid(f"says {' and '.join(said) or 'no verb'}", f"give exactly one of {', '.join(sorted(self.VERBS))}")
        if self.type is None and self.uses_value:
            raise Invalid("declares no `type:`",
                          f"every key whose value is used needs one of {', '.join(value_types.TYPES)}")
        bad = value_types.unknown(list(self.type or ()) + [n for t in self.fields.values() for n in t])
        if bad:
            raise Invalid(f"unknown type {bad[0]!r}", f"known types: {', '.join(value_types.TYPES)}")
        check = getattr(self, "check", None)
        if check is None and (getattr(self, "fail", None) or getattr(self, "hint", None)):
            raise Invalid("says fail: or hint: without check:", "they are the message of a failed check")


@record
class ConfigKey(Key):
    """config: a key of HF config.json, both ways."""
    VERBS: ClassVar[tuple[str, ...]] = ("to", "via", "require", "reject", "ignore", "check")
    to: OneOrMore[str] = ()                       # copied to these model_config keys; back: the first's value
    via: str | None = None                        # a rule of config_rules.RULES, with its inverse
    require: Scalar | Unset = UNSET               # the one value MindFormers' Llama reproduces
    reject: str | None = None                     # why its presence makes the checkpoint unconvertible
    ignore: str | None = None                     # why it changes neither weights nor forward pass
    check: str | None = None                      # an expression that must hold (exprs.py)
    back: Scalar | Unset = UNSET                  # what ms2hf writes for it
    fail: str | None = None                       # the message when check fails ({value}, model_config keys)
    hint: str | None = None

    @property
    def uses_value(self) -> bool:
        return bool(self.to) or self.via is not None or self.check is not None


@record
class GenerationKey(Key):
    """generation: a key of HF generation_config.json."""
    VERBS: ClassVar[tuple[str, ...]] = ("to", "ignore")
    to: str | None = None
    ignore: str | None = None

    @property
    def uses_value(self) -> bool:
        return self.to is not None


@record
class ModelConfigKey(Key):
    """model_config: a MindFormers model_config key as it is read back, typed; a check is optional."""
    VERBS: ClassVar[tuple[str, ...]] = ("check",)
    VERB_REQUIRED: ClassVar[bool] = False
    check: str | None = None
    fail: str | None = None
    hint: str | None = None


# ---------------------------------------------------------------------------- flags and tensors

@record
class Flag(Record):
    expr: str = field(metadata={"yaml": "is"})    # over the model_config; `hf.KEY` reads config.json
    doc: str = ""


@record
class HfTensor(Record):
    name: str                                     # a name pattern; {i} is every decoder layer
    shape: tuple[str | int, ...]                  # symbols of `dims`, or numbers
    when: tuple[str, ...] = ()                    # flags that must all hold ("!flag": must not)


@record
class TensorRule(Record):
    """ms_tensors: one MindFormers tensor, made of hf_tensors by a named op (each has an exact inverse)."""
    name: str
    sources: tuple[str, ...] = field(metadata={"yaml": "from"})   # hf_tensors keys, in the op's order
    op: str = "copy"
    dtype: Literal["param", "norm"] = "param"     # param_init_type, or layernorm_compute_type
    when: tuple[str, ...] = ()
    # A packed HF tensor taken apart: this MindFormers tensor is part `part` of op's inverse of its one
    # source (the way back packs the parts with op). Every part must have its rule.
    part: int | None = None
    # --parallel, as MindFormers' shard() cuts it over model_parallel: rows (output rows), columns
    # (input columns), vocab (rows, only when vocab_emb_dp is false and the vocab divides), none (every
    # card holds it whole). Unset: --parallel refuses the table rather than guess.
    split: Literal["rows", "columns", "vocab", "none"] | None = None
    # The pipeline stage of a whole-model tensor (a layer's tensors go with their layer).
    stage: Literal["first", "last"] | None = None


@record
class Skip(Record):
    """Source tensors that carry no model weight, per side: reason -> name patterns ({i}, and * for any run)."""
    hf: Mapping[str, tuple[str, ...]] = empty()
    ms: Mapping[str, tuple[str, ...]] = empty()

    def patterns(self, side: str) -> dict[str, str]:
        """pattern -> reason, for source tensors of `side` ("hf" or "ms")."""
        return {p: reason for reason, patterns in getattr(self, side).items() for p in patterns}


# ---------------------------------------------------------------------------- what verify compares

_ATTRIBUTE_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


@record
class Modules(Record):
    """The stages verify runs and compares, as attribute paths from the model object of one side."""
    embedding: str
    layers: str                   # the decoder layers, in order
    final_norm: str
    lm_head: str

    def __post_init__(self) -> None:
        for stage in ("embedding", "layers", "final_norm", "lm_head"):
            if not _ATTRIBUTE_PATH.match(getattr(self, stage)):
                raise Invalid(f"{getattr(self, stage)!r} is not an attribute path",
                              "write it as in Python, e.g. model.embed_tokens", at=stage)


@record
class Verify(Record):
    structural: tuple[str, ...]   # model_config keys that make two checkpoints different models
    forward: tuple[str, ...]      # model_config keys, besides those, that change what the model computes
    hf_modules: Modules           # of transformers' model_class
    ms_modules: Modules           # of MindFormers' model_class


# ---------------------------------------------------------------------------- the table

@record
class Table(Record):
    WORD: ClassVar[str] = "section"
    path: Path                    # the file it was loaded from (set by the loader)
    sha256: str                   # of this file and every table it extends: what a conversion depended on
    name: str
    hf: HF
    mindformers: MindFormers
    config: Mapping[str, ConfigKey]
    dims: Mapping[str, str | int]                 # shape symbols, in order; each may use those above it
    hf_tensors: Mapping[str, HfTensor]
    ms_tensors: tuple[TensorRule, ...]
    verify: Verify
    generation: Mapping[str, GenerationKey] = empty()
    model_config: Mapping[str, ModelConfigKey] = empty()
    flags: Mapping[str, Flag] = empty()
    tied_twins: Mapping[str, str] = empty()       # a tied checkpoint's twin -> the tensor it must equal
    skip: Skip = field(default_factory=Skip)


def from_data(data: dict, path: Path, sha256: str) -> Table:
    """A table from its merged YAML, checked whole: ConvertError naming the file and the entry."""
    table = typed.build(Table, data, path, path=path, sha256=sha256)
    check(table)
    return table


# ---------------------------------------------------------------------------- what a schema cannot say

def check(table: Table) -> None:
    fail = _Failer(table.path)
    typed_keys = set(table.model_config)
    for key, entry in table.config.items():
        _check_entry(fail, f"config.{key}", entry, typed_keys | {"hf", "value"}, typed_keys)
    for key, entry in table.model_config.items():
        _check_entry(fail, f"model_config.{key}", entry, typed_keys | {"value"}, typed_keys)
    for name, flag in table.flags.items():
        fail.expr(f"flags.{name}", flag.expr, typed_keys | {"hf"})
    defined = set(typed_keys)
    for name, expr in table.dims.items():
        fail.expr(f"dims.{name}", expr, defined)
        defined.add(name)
    flags = set(table.flags)
    for key, tensor in table.hf_tensors.items():
        undefined = [d for d in tensor.shape if not isinstance(d, int) and d not in table.dims]
        if undefined:
            raise fail(f"hf_tensors.{key}: shape symbol {undefined[0]!r} is not under dims",
                       f"dims defines {', '.join(table.dims)}")
        bad = [w for w in tensor.when if w.lstrip("!") not in flags]
        if bad:
            raise fail(f"hf_tensors.{key} uses undeclared flags {bad}", f"flags: {', '.join(flags)}")
        fail.pattern(f"hf_tensors.{key}", tensor.name)
    for i, rule in enumerate(table.ms_tensors):
        where = f"ms_tensors[{i}] ({rule.name})"
        unknown = [s for s in rule.sources if s not in table.hf_tensors]
        if unknown:
            raise fail(f"{where}: from names {unknown}, which are not hf_tensors keys")
        if rule.op not in ops.OPS:
            raise fail(f"{where}: unknown op {rule.op!r}", f"ops: {', '.join(ops.OPS)}")
        arity = ops.OPS[rule.op].parts
        if rule.part is not None and (len(rule.sources) != 1 or not 0 <= rule.part < arity or arity < 2):
            raise fail(f"{where}: part {rule.part} of {rule.op} needs one source and an op of several parts",
                       f"{rule.op} packs {arity} tensor{'s' if arity > 1 else ''}; part: counts them from 0")
        if rule.part is None and len(rule.sources) != arity:
            raise fail(f"{where}: {rule.op} packs {arity} tensor{'s' if arity > 1 else ''}, from names {len(rule.sources)}",
                       "or, to take one packed source apart, give part: N")
        bad = [w for w in rule.when if w.lstrip("!") not in flags]
        if bad:
            raise fail(f"{where} uses undeclared flags {bad}", f"flags: {', '.join(flags)}")
        fail.pattern(where, rule.name)
        per_layer = [s for s in rule.sources if (LAYER in table.hf_tensors[s].name) != (LAYER in rule.name)]
        if per_layer:
            raise fail(f"{where}: {LAYER} is in the name of {'it' if LAYER in rule.name else per_layer[0]} "
                       f"but not of {per_layer[0] if LAYER in rule.name else 'it'}",
                       "a tensor of every layer is made of tensors of the same layer")
        if rule.stage is not None and LAYER in rule.name:
            raise fail(f"{where}: stage: {rule.stage} on a tensor of every layer",
                       "a layer's tensors go to the stage that holds the layer; stage: is for whole-model tensors")
    for a, b in table.tied_twins.items():
        if a not in table.hf_tensors or b not in table.hf_tensors:
            raise fail(f"tied_twins.{a}: {a} and {b} must both be hf_tensors keys")
    for side in ("hf", "ms"):
        for reason, patterns in getattr(table.skip, side).items():
            for p in patterns:
                fail.pattern(f"skip.{side}", p, wildcard=True)
    for which in ("structural", "forward"):
        untyped = [k for k in getattr(table.verify, which) if k not in typed_keys]
        if untyped:
            raise fail(f"verify.{which}: {untyped[0]!r} is not a model_config key",
                       "list it under model_config with its type")


def _check_entry(fail: "_Failer", where: str, entry: ConfigKey | ModelConfigKey, readable: set[str],
                 typed_keys: set[str]) -> None:
    if entry.check is None:
        return
    fail.expr(where, entry.check, readable)
    for word in ("fail", "hint"):
        template = getattr(entry, word)
        if template is None:
            continue
        try:
            names = {n for _, n, spec, conv in string.Formatter().parse(template) if n is not None}
        except ValueError as e:
            raise fail(f"{where}: {word}: {e}", "write a literal brace as {{ or }}") from None
        unknown = sorted(n for n in names if n not in typed_keys | {"value"})
        if unknown:
            raise fail(f"{where}: {word}: {{{unknown[0]}}} is neither {{value}} nor a typed model_config key")


class _Failer:
    """Table errors name the table file; the checks above say only what is wrong and where in it."""

    def __init__(self, path: Path):
        self.path = path

    def __call__(self, problem: str, hint: str | None = None) -> ConvertError:
        return ConvertError(self.path, problem, hint)

    def expr(self, where: str, expr: str | int, defined: set[str]) -> None:
        try:
            undefined = sorted(exprs.names(expr) - defined)
        except exprs.ExprError as e:
            raise self(f"{where}: {e}") from None
        if undefined:
            raise self(f"{where}: {expr!r} reads {undefined[0]!r}, which is not a typed model_config key",
                       "list it under model_config with its type")

    def pattern(self, where: str, pattern: str, wildcard: bool = False) -> None:
        """A name pattern may hold {i} and, where it skips, *; any other brace is a typo that would
        silently match nothing."""
        braces = re.findall(r"\{[^}]*\}?|\}", pattern)
        wrong = [b for b in braces if b != LAYER]
        if wrong:
            raise self(f"{where}: {pattern!r} holds {wrong[0]!r}", f"{LAYER} is the only placeholder: any layer number")
        if "*" in pattern and not wildcard:
            raise self(f"{where}: {pattern!r} holds '*'", "only skip patterns match runs of characters")


# ---------------------------------------------------------------------------- name patterns

def holds(when: tuple[str, ...], flags: dict[str, bool]) -> bool:
    return all(not flags[w[1:]] if w.startswith("!") else flags[w] for w in when)


# A name pattern with {i} stands for every decoder layer. These functions are the only places that know it.
LAYER = "{i}"


def layer_name(pattern: str, layer: int | None) -> str:
    """The pattern for one layer (a whole-model name, without {i}, stays as it is)."""
    return pattern if layer is None else pattern.replace(LAYER, str(layer))


def layer_names(pattern: str, num_layers: int) -> list[tuple[int | None, str]]:
    if LAYER not in pattern:
        return [(None, pattern)]
    return [(i, layer_name(pattern, i)) for i in range(num_layers)]


def pattern_regex(pattern: str) -> str:
    """A regular expression matching the pattern's names for any layer (the layer number is group 1);
    `*` in a skip pattern stands for any run of characters."""
    return "^" + re.escape(pattern).replace(re.escape(LAYER), r"(0|[1-9][0-9]*)").replace(r"\*", ".*") + "$"


def layers_present(patterns: list[str], names) -> list[int]:
    """The layer numbers that tensor names actually carry, by the table's {i} patterns (sorted)."""
    rxs = [re.compile(pattern_regex(p)) for p in patterns if LAYER in p]
    found = set()
    for name in names:
        for rx in rxs:
            m = rx.match(name)
            if m:
                found.add(int(m.group(1)))
                break
    return sorted(found)


def describe_layers(layers: list[int]) -> str:
    """'layers 0..1 (2 layers)', or which are there when they are not 0..n-1."""
    if not layers:
        return "no decoder layers"
    if layers == list(range(len(layers))):
        return f"layers 0..{layers[-1]} ({len(layers)} layers)"
    shown = ", ".join(map(str, layers[:6])) + (", ..." if len(layers) > 6 else "")
    return f"layers {shown} ({len(layers)} layers, not numbered 0..{len(layers) - 1})"
