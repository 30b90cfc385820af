"""Config parity: the forward-pass keys of MS_DIR's model_config against HF_DIR's config translated
through the table. A wrong rope theta barely moves the logits of a random model whose attention is
near uniform, and a wrong model must not pass because of that."""
from __future__ import annotations

import math

from ..table.loader import Table
from ..console.quiet import import_mindformers, import_transformers


def _same(a, b) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) and not isinstance(b, bool):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0) or a == b
    return a == b


def config_differences(table: Table, hf_mc: dict, ms_mc: dict, defaults: dict | None = None) -> list[str]:
    """Each forward-pass key where MS_DIR's model_config differs from HF_DIR's config translated through
    the table, as `key <ms value> vs <translated value>`; the table names those keys (verify.forward). A
    key one side leaves out takes MindFormers' default (`defaults`), because that is what the model then
    runs with."""
    from ..table.value_types import show
    defaults = defaults or {}
    out = []
    for key in table.verify.forward:
        if key not in hf_mc and key not in ms_mc:
            continue
        a, b = hf_mc.get(key, defaults.get(key)), ms_mc.get(key, defaults.get(key))
        if not _same(a, b):
            out.append(f"{key} {show(b)} vs {show(a)} from config.json")
    return out


def mindformers_defaults(table: Table) -> dict:
    """LlamaConfig's defaults for the keys a YAML may leave out."""
    import inspect
    mindformers = import_mindformers()
    config_class = getattr(mindformers.models, table.mindformers.config_class)
    return {k: p.default for k, p in inspect.signature(config_class.__init__).parameters.items()
            if p.default is not inspect.Parameter.empty}


# Under greedy decoding (no sampling, or sampling from the top 1 token, which is how a --device CPU
# conversion writes greedy decoding) these keys pick nothing: both sides choose the argmax.
_SAMPLING_ONLY = ("do_sample", "temperature", "top_k", "top_p")


def _greedy(config) -> bool:
    return not getattr(config, "do_sample", False) or getattr(config, "top_k", None) == 1


def generation_differences(table: Table, hf_generation: dict | None, ms_mc: dict) -> list[str]:
    """Each generation key where MindFormers' GenerationConfig, built by `from_model_config` from MS_DIR's
    model_config as MindFormers builds it, differs from HF's GenerationConfig of HF_DIR's
    generation_config.json: `key <MindFormers value> vs <HF value> from generation_config.json`. The keys
    are those the table carries (generation `to:`), under HF's name, which is also MindFormers' attribute.
    A max_length the source does not set is not compared: the YAML then writes seq_length, not HF's 20."""
    from ..table.value_types import show
    mindformers = import_mindformers()
    transformers = import_transformers()
    given = dict(hf_generation or {})
    hf = transformers.GenerationConfig.from_dict(given)
    config_class = getattr(mindformers.models, table.mindformers.config_class)
    ms = mindformers.generation.GenerationConfig.from_model_config(
        config_class(**{k: v for k, v in ms_mc.items() if k != "type"}))
    both_greedy = _greedy(hf) and _greedy(ms)
    out = []
    for key, spec in table.generation.items():
        if spec.to is None or (key == "max_length" and given.get(key) is None):
            continue
        if both_greedy and key in _SAMPLING_ONLY:
            continue
        a, b = getattr(hf, key, None), getattr(ms, key, None)
        if not _same(a, b) and not (a in (None, False) and b in (None, False) and isinstance(a, (bool, type(None))) and isinstance(b, (bool, type(None)))):  # output_logits: HF None is off
            out.append(f"{key} {show(b)} vs {show(a)} from generation_config.json")
    return out
