"""HF config.json (+ generation_config.json) <-> MindFormers LlamaConfig fields, driven by the table.

The table says, key by key, whether a value is copied, checked, rejected, ignored, or handed to one
of the named rules below, and each of those has its way back. Rules exist only where one MindFormers
field depends on several HF keys or on the weights themselves; each is written as a pair, the
forward translation and, right under it, its inverse (model_config -> config.json keys).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import exprs
from ..core.errors import ConvertError
from .schema import UNSET, ConfigKey, ModelConfigKey, Table
from ..core.options import HF2MSOptions
from .value_types import check_fields, show


@dataclass
class Translation:
    model_config: dict
    ignored: dict[str, str] = field(default_factory=dict)      # HF key -> reason
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RuleInput:
    hf: dict
    options: HF2MSOptions
    weights_dtype: str
    where: Path
    table: Table


Forward = Callable[[RuleInput, dict, list], None]
Back = Callable[[dict, dict, Table], None]   # (model_config, config.json being written, table)


@dataclass
class Rule:
    name: str
    forward: Forward
    inverse: Back | None = None

    def back(self, fn: Back) -> Back:
        """Register fn as this rule's inverse (used as a decorator right under the forward rule)."""
        self.inverse = fn
        return fn


RULES: dict[str, Rule] = {}


def rule(fn: Forward) -> Rule:
    RULES[fn.__name__] = Rule(fn.__name__, fn)
    return RULES[fn.__name__]


def _fail(inp: RuleInput, key: str, problem: str, hint: str | None = None) -> ConvertError:
    return ConvertError(inp.where, f"{key}: {problem}", hint)


@rule
def architecture(inp: RuleInput, out: dict, notes: list) -> None:
    archs = inp.hf.get("architectures") or []
    allowed, model_type = inp.table.hf.architectures, inp.table.hf.model_type
    if archs and not any(a in allowed for a in archs):
        raise _fail(inp, "architectures", f"{archs} is not converted by table {inp.table.name}",
                    f"table {inp.table.name} converts {', '.join(allowed)}")
    given = inp.hf.get("model_type")
    if given is not None and given != model_type:
        raise _fail(inp, "model_type", f"{show(given)} is not table {inp.table.name}'s {show(model_type)}",
                    "the config and the table describe different architectures")


@architecture.back
def _architecture_back(mc: dict, hf: dict, table: Table) -> None:
    hf["architectures"] = [table.hf.model_class]
    hf["model_type"] = table.hf.model_type


@rule
def kv_heads(inp: RuleInput, out: dict, notes: list) -> None:
    hf = inp.hf
    heads, hidden = hf["num_attention_heads"], hf["hidden_size"]
    kv = heads if hf.get("num_key_value_heads") is None else hf["num_key_value_heads"]
    if hidden % heads:
        raise _fail(inp, "hidden_size", f"{hidden} is not divisible by num_attention_heads={heads}")
    head_dim = hf.get("head_dim")
    if head_dim is not None and head_dim != hidden // heads:
        raise _fail(inp, "head_dim", f"{head_dim} differs from hidden_size / num_attention_heads = "
                    f"{hidden // heads}; MindFormers' Llama derives head_dim and cannot represent this")
    if heads % kv:
        raise _fail(inp, "num_key_value_heads", f"num_attention_heads={heads} is not divisible by "
                    f"num_key_value_heads={kv}")
    out["n_kv_heads"] = kv


@kv_heads.back
def _kv_heads_back(mc: dict, hf: dict, table: Table) -> None:
    hf["num_key_value_heads"] = mc.get("n_kv_heads") or mc["num_heads"]
    hf["head_dim"] = mc["hidden_size"] // mc["num_heads"]


@rule
def positions(inp: RuleInput, out: dict, notes: list) -> None:
    hf = inp.hf
    given, llama1 = hf.get("max_position_embeddings"), hf.get("max_sequence_length")
    n = given if given is not None else llama1
    if n is None:
        raise _fail(inp, "max_position_embeddings", "missing (and no LLaMA-1 max_sequence_length either)")
    if given is not None and llama1 is not None and llama1 != given:
        notes.append(f"max_sequence_length={llama1} ignored in favour of max_position_embeddings={n}")
    out["max_position_embedding"] = n
    seq = inp.options.seq_length or min(n, 4096)
    out["seq_length"] = seq


@positions.back
def _positions_back(mc: dict, hf: dict, table: Table) -> None:
    hf["max_position_embeddings"] = mc.get("max_position_embedding") or mc["seq_length"]


def rope_settings(hf: dict) -> tuple[float, dict | None]:
    """(theta, scaling dict or None) from either transformers-4 or transformers-5 style.

    The values' types were checked by the table (config.rope_*: fields) before this runs.
    """
    params = hf.get("rope_parameters")
    if isinstance(params, dict):
        theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
        scaling = {k: v for k, v in params.items() if k != "rope_theta"}
    else:
        theta = hf.get("rope_theta", 10000.0)
        scaling = dict(hf["rope_scaling"]) if isinstance(hf.get("rope_scaling"), dict) else {}
    kind_a, kind_b = scaling.pop("rope_type", None), scaling.pop("type", None)
    if kind_a and kind_b and kind_a != kind_b:
        raise ValueError(f"says both rope_type={kind_a!r} and type={kind_b!r}")
    kind = kind_a or kind_b or ("default" if not scaling else None)
    if kind in (None, "default"):
        return float(theta), None
    return float(theta), {"rope_type": kind, **scaling}


@rule
def rope(inp: RuleInput, out: dict, notes: list) -> None:
    key = "rope_parameters" if isinstance(inp.hf.get("rope_parameters"), dict) else "rope_scaling"
    try:
        theta, scaling = rope_settings(inp.hf)
    except ValueError as e:
        raise _fail(inp, key, str(e)) from None
    out["theta"] = theta
    if scaling is None:
        out["extend_method"], out["scaling_factor"] = "None", 1.0
        return
    kind = scaling["rope_type"]
    if kind in ("llama3", "linear") and "factor" not in scaling:
        raise _fail(inp, key, f"{kind} scaling lacks its factor",
                    f"add \"factor\" to {key}, or remove {key} if the model does not scale RoPE")
    if kind == "llama3":
        need = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
        missing = [k for k in need if k not in scaling]
        if missing:
            raise _fail(inp, key, f"llama3 scaling lacks {missing}")
        orig = scaling["original_max_position_embeddings"]
        if orig >= out["max_position_embedding"]:
            raise _fail(inp, key, f"llama3 original_max_position_embeddings={orig} is not below "
                        f"max_position_embeddings={out['max_position_embedding']}, which MindFormers requires")
        # MindFormers checks for exactly these four keys, with a float factor.
        out["extend_method"] = "LLAMA3"
        out["scaling_factor"] = {"factor": float(scaling["factor"]),
                                 "low_freq_factor": float(scaling["low_freq_factor"]),
                                 "high_freq_factor": float(scaling["high_freq_factor"]),
                                 "original_max_position_embeddings": orig}
    elif kind == "linear":
        # HF divides the inverse frequencies by the factor; MindFormers' "PI" divides the positions
        # instead, which is the same angle. (MindFormers' own "linear" method rejects every numeric
        # factor in 1.9.0, so it cannot be used.) `llama-convert verify` proves the parity.
        out["extend_method"] = "PI"
        out["scaling_factor"] = float(scaling["factor"])
    else:
        raise _fail(inp, key, f"rope scaling type {kind!r} has no MindFormers equivalent proven equal to HF's",
                    "supported: default, llama3, linear")


@rope.back
def _rope_back(mc: dict, hf: dict, table: Table) -> None:
    hf["rope_theta"] = float(mc.get("theta", 10000.0))
    method, factor = mc.get("extend_method", "None"), mc.get("scaling_factor")
    if method in (None, "None"):
        hf["rope_scaling"] = None
    elif method == "LLAMA3":
        need = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
        if not isinstance(factor, dict) or any(k not in factor for k in need):
            raise ValueError(f"extend_method LLAMA3 needs scaling_factor to be a mapping of {', '.join(need)}")
        hf["rope_scaling"] = {"rope_type": "llama3", **factor}
    elif method == "PI":
        if isinstance(factor, dict) or factor is None:
            raise ValueError("extend_method PI needs scaling_factor to be a number")
        hf["rope_scaling"] = {"rope_type": "linear", "factor": float(factor)}
    else:
        raise ValueError(f"extend_method {method!r} has no HF equivalent proven equal")


@rule
def internlm2_rope(inp: RuleInput, out: dict, notes: list) -> None:
    """InternLM2's `dynamic` scaling (modeling_internlm2.py, InternLM2DynamicNTKScalingRotaryEmbedding)
    raises the base only when a sequence is longer than max_position_embeddings, whatever the factor
    (factor 1 still raises it: base * (seq_len / max) ** (d / (d - 2))). Up to that length it is plain
    RoPE, which MindFormers' Llama computes; beyond it MindFormers has no equal (its dynamic-NTK class
    is Qwen's formula), so the conversion is exact only while seq_length stays within it."""
    scaling = inp.hf.get("rope_scaling")
    kind = (scaling or {}).get("type") or (scaling or {}).get("rope_type")
    if kind != "dynamic":
        rope.forward(inp, out, notes)
        return
    original = out["max_position_embedding"]
    if out["seq_length"] > original:
        raise _fail(inp, "rope_scaling", f"dynamic NTK scaling changes RoPE beyond max_position_embeddings={original}, "
                    f"and seq_length is {out['seq_length']}; MindFormers' Llama has no equal of InternLM2's formula",
                    f"convert with --seq-length {original} or less: up to it the scaling is plain RoPE")
    out["theta"] = float(inp.hf.get("rope_theta", 10000.0))
    out["extend_method"], out["scaling_factor"] = "None", 1.0
    notes.append(f"rope_scaling dynamic (factor {scaling.get('factor')}) is plain RoPE up to "
                 f"max_position_embeddings={original}, which covers seq_length {out['seq_length']}: converted as plain RoPE")


internlm2_rope.back(_rope_back)


@rule
def baichuan2_positions(inp: RuleInput, out: dict, notes: list) -> None:
    """Baichuan2-7B and -13B share architectures and model_type; the 13B's modeling code adds ALiBi
    position biases instead of RoPE, and its config (like Baichuan-13B's) has model_max_length but no
    max_position_embeddings, which the 7B's RotaryEmbedding is built from."""
    if inp.hf.get("max_position_embeddings") is None:
        raise _fail(inp, "max_position_embeddings", "absent: this is Baichuan(2)-13B, whose attention adds ALiBi "
                    "position biases, which MindFormers' Llama does not compute",
                    "only Baichuan2-7B (RoPE, with max_position_embeddings in its config) converts")
    positions.forward(inp, out, notes)


baichuan2_positions.back(_positions_back)


@rule
def pad_token(inp: RuleInput, out: dict, notes: list) -> None:
    pad = inp.hf.get("pad_token_id")
    if pad is None:
        # MindFormers masks attention to every token equal to pad_token_id; HF with no pad token masks
        # nothing. -1 matches no token id, so the forward stays the same as HF's.
        out["pad_token_id"] = -1
        notes.append("no pad_token_id in config.json: wrote -1, which masks no token (MindFormers masks "
                     "attention to tokens equal to pad_token_id)")
    else:
        out["pad_token_id"] = pad
        notes.append(f"pad_token_id {pad}: MindFormers masks attention to every token equal to it, HF does not; "
                     f"the two agree on inputs where token {pad} appears only as padding")


@pad_token.back
def _pad_back(mc: dict, hf: dict, table: Table) -> None:
    pad = mc.get("pad_token_id")
    hf["pad_token_id"] = None if pad is None or pad < 0 else pad


@rule
def tie(inp: RuleInput, out: dict, notes: list) -> None:
    tied = bool(inp.hf.get("tie_word_embeddings", False))
    out["tie_word_embeddings"] = tied and not inp.options.untie


@tie.back
def _tie_back(mc: dict, hf: dict, table: Table) -> None:
    hf["tie_word_embeddings"] = bool(mc.get("tie_word_embeddings", False))


@rule
def dtype(inp: RuleInput, out: dict, notes: list) -> None:
    claimed = inp.hf.get("dtype") or inp.hf.get("torch_dtype")
    if inp.options.dtype != "keep":
        chosen = inp.options.dtype
    else:
        chosen = inp.weights_dtype
        if claimed and claimed != chosen:
            notes.append(f"config.json says {claimed!r} but the weights are {chosen}; the weights decide")
    out["param_init_type"] = chosen
    out["compute_dtype"] = chosen


@dtype.back
def _dtype_back(mc: dict, hf: dict, table: Table) -> None:
    hf["torch_dtype"] = mc.get("param_init_type", "float32")


def translate(table: Table, hf: dict, generation: dict | None, options: HF2MSOptions, weights_dtype: str,
              where: Path, generation_where: Path | None = None) -> Translation:
    """The MindFormers model_config for a HF config, or a ConvertError naming the offending key."""
    inp = RuleInput(hf, options, weights_dtype, where, table)
    out: dict = {}
    result = Translation(out)
    check_fields(table.config, hf, where)  # before anything uses a value: the rules may trust them
    # Another architecture's config is foreign to this table as a whole: say so, rather than that one of
    # its keys is unknown (which would suggest editing the table).
    rules = _rule_names(table)
    if "architecture" in rules:
        RULES["architecture"].forward(inp, out, result.notes)
    for key, value in hf.items():
        spec = table.config.get(key)
        if spec is None:
            raise ConvertError(where, f"{key}: unknown config key (value {show(value)})",
                               f"if it changes neither weights nor forward, add it under `config:` in "
                               f"{table.path.name} with `ignore: <reason>`")
        if spec.reject is not None and value not in (None, False, {}, []):
            raise ConvertError(where, f"{key}: {spec.reject}")
        if spec.require is not UNSET and value is not None and value != spec.require:
            raise ConvertError(where, f"{key}: {show(value)} is not supported, only {show(spec.require)}",
                               f"MindFormers' Llama cannot reproduce this {table.name} model")
        if spec.ignore is not None:
            result.ignored[key] = spec.ignore
        for target in spec.to:
            out[target] = value
    for name in rules:
        if name != "architecture":
            RULES[name].forward(inp, out, result.notes)
    out.update(table.mindformers.fixed)
    out.update(table.mindformers.device[options.device])
    out["qkv_concat"] = options.qkv_concat
    _apply_defaults(table, out)
    for key, spec in table.config.items():
        if spec.check is not None:
            value = hf.get(key) if hf.get(key) is not None else spec.default
            _check(spec, value, {**out, "hf": hf}, where, key)
    _translate_generation(table, generation or {}, out, result, generation_where)
    return result


def _apply_defaults(table: Table, mc: dict) -> None:
    """MindFormers' own default for each model_config key left out, so that flags and checks read a value."""
    for key, spec in table.model_config.items():
        if spec.default is not None and mc.get(key) is None:
            mc[key] = spec.default


def _check(spec: ConfigKey | ModelConfigKey, value, env: dict, where: Path, key: str) -> None:
    """A table `check:` on one value; the table's `fail:` and `hint:` are the message if it does not hold."""
    env = {**env, "value": value}
    try:
        holds = exprs.evaluate(spec.check, env)
    except exprs.ExprError as e:
        raise ConvertError(where, f"{key}: {show(value)} cannot be checked: {e}") from None
    if not holds:
        fill = _Fill(env)
        problem = (spec.fail or "{value} does not satisfy " + spec.check.replace("{", "{{").replace("}", "}}")).format_map(fill)
        raise ConvertError(where, f"{key}: {problem}", spec.hint.format_map(fill) if spec.hint else None)


class _Fill(dict):
    """format_map over the check's environment: values shown as the user wrote them, unknown names kept."""
    def __init__(self, env: dict):
        super().__init__({k: (show(v) if not isinstance(v, (int, float)) or isinstance(v, bool) else v)
                          for k, v in env.items() if k != "hf"})

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def _translate_generation(table: Table, gen: dict, out: dict, result: Translation, where: Path | None) -> None:
    check_fields(table.generation, gen, where or "generation_config.json")
    for key, spec in table.generation.items():
        # null is "not set" to HF's GenerationConfig, which then uses its default
        value = gen.get(key)
        if value is None:
            value = spec.default
        if spec.to is not None and value is not None:
            out[spec.to] = value
    out.setdefault("max_decode_length", out["seq_length"])
    for key in gen:
        spec = table.generation.get(key)
        if spec is None or spec.to is None:
            reason = spec.ignore if spec is not None and spec.ignore is not None else "not a MindFormers model setting"
            result.ignored[f"generation_config.{key}"] = reason


def _rule_names(table: Table) -> list[str]:
    names: list[str] = []
    for key, spec in table.config.items():
        if spec.via is not None and spec.via not in names:
            if spec.via not in RULES:
                raise ConvertError(table.path, f"config.{key}: via: rule {spec.via!r} does not exist in config_rules.py",
                                   f"rules: {', '.join(RULES)}")
            names.append(spec.via)
    return names


def check_model_config(table: Table, mc: dict, where: Path) -> None:
    """A MindFormers model_config read back: every key the table types, MindFormers' defaults for the
    keys left out, then what MindFormers and the table need of the values (the table's `check:`s)."""
    check_fields(table.model_config, mc, where, "model_config.")
    _apply_defaults(table, mc)
    heads, hidden = mc["num_heads"], mc["hidden_size"]
    if hidden % heads:
        raise ConvertError(where, f"model_config.hidden_size: {hidden} is not divisible by num_heads={heads}")
    kv = mc.get("n_kv_heads")
    if kv is not None and heads % kv:
        raise ConvertError(where, f"model_config.n_kv_heads: num_heads={heads} is not divisible by n_kv_heads={kv}")
    for key, spec in table.model_config.items():
        if spec.check is not None:
            _check(spec, mc.get(key), mc, where, f"model_config.{key}")


def translate_back(table: Table, mc: dict, where: Path, dtype: str | None = None) -> tuple[dict, dict]:
    """(config.json, generation_config.json) for a MindFormers model_config, by the same table read
    backwards: a `to:` key gets its MindFormers value, a `require:` key its one value, a `back:` key
    the value the table gives, a rule's keys what its inverse writes."""
    hf: dict = {}
    for key, spec in table.config.items():
        if spec.to:
            if spec.to[0] in mc:
                hf[key] = mc[spec.to[0]]
        elif spec.require is not UNSET:
            hf[key] = spec.require
        if spec.back is not UNSET:
            hf[key] = spec.back
    for name in _rule_names(table):
        try:
            RULES[name].inverse(mc, hf, table)
        except (KeyError, ValueError, TypeError) as e:
            raise ConvertError(where, f"model_config cannot be written back as config.json: {name}: {e}") from None
    if dtype:
        hf["torch_dtype"] = dtype
    gen = {"bos_token_id": hf.get("bos_token_id"), "eos_token_id": hf.get("eos_token_id")}
    if hf.get("pad_token_id") is not None:
        gen["pad_token_id"] = hf["pad_token_id"]
    for key, spec in table.generation.items():
        if spec.to is not None and spec.to in mc:
            gen[key] = mc[spec.to]
    return dict(sorted(hf.items())), gen
