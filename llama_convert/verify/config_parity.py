"""Config parity: the forward-pass keys of MS_DIR's model_config against HF_DIR's config translated
through the table. A wrong rope theta barely moves the logits of a random model whose attention is
near uniform, and a wrong model must not pass because of that."""
from __future__ import annotations

import math

from ..table.loader import Table
from ..console.quiet import import_mindformers


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
