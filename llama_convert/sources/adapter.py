"""LoRA adapters on either side, as headers: a PEFT adapter directory (adapter_config.json with
adapter_model.safetensors or .bin), and MindFormers' mindpet LoRA parameters with the YAML's pet_config.

What MindFormers' LoRA can state is narrow: one rank and one alpha for every adapted module, scale
alpha / rank, target modules picked by their cell name in every decoder layer alike, no biases, no
magnitude vector, nothing trained in full beside the adapter. An adapter that says more is refused by
name here (or, where the mapping table must be asked, by the planner), never converted into something else.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..core.dtypes import FLOATS
from ..core.errors import ConvertError
from ..formats import safetensors as st
from ..formats.files import parse_json_object, read_small
from ..formats.tensor import TensorRef
from ..formats.torch_bin import read_bin

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
PEFT_PREFIX = "base_model.model."
# PEFT saves lora_A/lora_B without the adapter's name; older saves and hand-made files may keep ".default".
_PEFT_KEY = re.compile(r"(?P<module>.+)\.(?P<part>lora_A|lora_B|lora_embedding_A|lora_embedding_B|"
                       r"lora_magnitude_vector)(?:\.default)?(?:\.weight)?")
MINDPET_A, MINDPET_B = "mindpet_delta_lora_a", "mindpet_delta_lora_b"
_MERGE_HINT = "merge it into the model with PEFT's merge_and_unload() and convert the merged model"


@dataclass(frozen=True)
class LoraModule:
    """One adapted linear layer: its module path on its side, and the names of its two factors."""
    module: str
    a: str      # [rank, in]
    b: str      # [out, rank]

    @property
    def weight(self) -> str:
        return f"{self.module}.weight"


@dataclass
class Adapter:
    """A LoRA adapter as MindFormers states one: a rank and an alpha, scale = alpha / rank."""
    root: Path
    config: dict                 # adapter_config.json as it was read
    files: list[Path]            # what was read: the config and the weights
    tensors: dict[str, TensorRef]
    modules: list[LoraModule]
    scales: dict[str, float]     # module -> PEFT's scale (alpha/r, or alpha/sqrt(r)): what a merge multiplies by
    dropout: float
    rank: int | None = None      # one rank and one alpha for all, as MindFormers' pet_config states them
    alpha: float | None = None   # (rsLoRA folded in: see fold_rslora); None with `unstatable`
    unstatable: ConvertError | None = None  # why pet_config cannot state this adapter (a merge still can)
    notes: list[str] = field(default_factory=list)

    def statable(self) -> "Adapter":
        """This adapter, or the refusal saying why MindFormers' pet_config cannot state it."""
        if self.unstatable is not None:
            raise self.unstatable
        return self


def _refuse(path: Path, problem: str, hint: str = _MERGE_HINT) -> ConvertError:
    return ConvertError(path, problem, hint)


def _number(cfg: dict, key: str, path: Path, default=None) -> float:
    value = cfg.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConvertError(path, f"{key} is {value!r}; expected a number", "the adapter_config.json is corrupt")
    return value


def open_adapter_dir(root: Path) -> Adapter:
    """A PEFT LoRA adapter directory, refused by name where MindFormers' LoRA cannot state it."""
    root = Path(root)
    if not root.is_dir():
        raise ConvertError(root, "adapter directory not found" if not root.exists() else "is not a directory",
                           "--adapter takes a PEFT adapter directory (adapter_config.json, adapter_model.safetensors)")
    cfg_path = root / ADAPTER_CONFIG
    cfg = parse_json_object(read_small(cfg_path, ADAPTER_CONFIG, "--adapter takes a directory PEFT saved with "
                                       "save_pretrained()"), cfg_path, ADAPTER_CONFIG)
    refuse_unstatable(cfg, cfg_path)
    weights = next((root / n for n in ADAPTER_WEIGHTS if (root / n).exists()), None)
    if weights is None:
        raise ConvertError(root, f"no adapter weights found (looked for {', '.join(ADAPTER_WEIGHTS)})")
    tensors = st.read_header(weights)[0] if weights.suffix == ".safetensors" else read_bin(weights)
    modules = peft_modules(tensors, weights)
    ranks = {m.module: check_factors(tensors, m, weights) for m in modules}
    alphas = module_alphas(cfg, modules, cfg_path)
    if not cfg.get("rank_pattern") and {cfg.get("r")} != set(ranks.values()):
        raise ConvertError(weights, f"the factors have rank {sorted(set(ranks.values()))}, but adapter_config.json says "
                           f"r: {cfg.get('r')!r}", "the adapter's config and weights do not belong together")
    rslora = bool(cfg.get("use_rslora"))
    scales = {m: alphas[m] / (math.sqrt(ranks[m]) if rslora else ranks[m]) for m in ranks}
    dropout = _number(cfg, "lora_dropout", cfg_path, 0.0)
    if not 0 <= dropout < 1:
        raise ConvertError(cfg_path, f"lora_dropout is {dropout}; expected a rate in [0, 1)")
    adapter = Adapter(root, cfg, [cfg_path, weights], tensors, modules, scales, dropout)
    try:
        adapter.rank = uniform("rank", ranks, cfg.get("rank_pattern"), weights)
        adapter.alpha = uniform("alpha", alphas, cfg.get("alpha_pattern"), cfg_path)
        if rslora:
            adapter.alpha = fold_rslora(adapter.alpha, adapter.rank, cfg_path)
            adapter.notes.append(f"rsLoRA scale lora_alpha/sqrt(r) folded exactly into lora_alpha {adapter.alpha:g} "
                                 f"(r = {adapter.rank})")
    except ConvertError as e:
        adapter.unstatable = e
    return adapter


def refuse_unstatable(cfg: dict, path: Path) -> None:
    """What adapter_config.json may say that MindFormers' pet_config cannot."""
    kind = cfg.get("peft_type")
    if kind != "LORA":
        raise ConvertError(path, f"peft_type is {kind!r}: only LoRA adapters convert to MindFormers' pet_config")
    if cfg.get("use_dora"):
        raise _refuse(path, "is a DoRA adapter (use_dora: true); MindFormers' LoRA has no magnitude vector")
    if cfg.get("modules_to_save"):
        raise _refuse(path, f"modules_to_save lists {cfg['modules_to_save']}: those modules were trained in full, "
                      "and MindFormers' pet_config has no place for them")
    if cfg.get("bias", "none") != "none" or cfg.get("lora_bias"):
        raise _refuse(path, f"the adapter trains biases (bias: {cfg.get('bias')!r}, lora_bias: "
                      f"{cfg.get('lora_bias', False)}); MindFormers' LoRA has none")
    if cfg.get("fan_in_fan_out"):
        raise _refuse(path, "fan_in_fan_out is true (Conv1D layers); Llama's linear layers are never stored so")
    for key in ("trainable_token_indices", "target_parameters"):
        if cfg.get(key):
            raise _refuse(path, f"{key} is set: it adapts the embedding or raw parameters, which MindFormers' "
                          "LoRA cannot")


def peft_modules(tensors: dict[str, TensorRef], path: Path) -> list[LoraModule]:
    """The adapted modules of a PEFT state dict, in file order, with both factors present."""
    halves: dict[str, dict[str, str]] = {}
    for name, ref in tensors.items():
        m = _PEFT_KEY.fullmatch(name)
        if m is None or not name.startswith(PEFT_PREFIX):
            why = ("modules_to_save or a full weight" if name.endswith(".weight") or "modules_to_save" in name
                   else "not a LoRA factor")
            raise _refuse(path, f"holds {name!r} ({why}); MindFormers' LoRA holds lora_A and lora_B only")
        part, module = m["part"], m["module"][len(PEFT_PREFIX):]
        if part == "lora_magnitude_vector":
            raise _refuse(path, f"holds {name!r}: a DoRA magnitude vector; MindFormers' LoRA has none")
        if part.startswith("lora_embedding"):
            raise _refuse(path, f"adapts the embedding {module!r}: MindFormers' LoRA adapts linear layers "
                          "inside the decoder layers only")
        if ref.dtype not in FLOATS or len(ref.shape) != 2:
            raise ConvertError(path, f"{name} is {ref.dtype} {list(ref.shape)}; a LoRA factor is a 2-D "
                               "bfloat16, float16 or float32 matrix")
        halves.setdefault(module, {})[part] = name
    modules = []
    for module, parts in halves.items():
        if set(parts) != {"lora_A", "lora_B"}:
            missing = "lora_B" if "lora_A" in parts else "lora_A"
            raise ConvertError(path, f"{module} has no {missing}", "the adapter file is incomplete")
        modules.append(LoraModule(module, parts["lora_A"], parts["lora_B"]))
    if not modules:
        raise ConvertError(path, "holds no LoRA factors")
    return modules


def check_factors(tensors: dict[str, TensorRef], m: LoraModule, path: Path) -> int:
    """The rank of one module's factors: A [r, in], B [out, r]."""
    a, b = tensors[m.a].shape, tensors[m.b].shape
    if a[0] != b[1] or a[0] < 1:
        raise ConvertError(path, f"{m.module}: A is {list(a)} and B is {list(b)}; their ranks disagree",
                           "the adapter file is corrupt")
    return a[0]


def uniform(what: str, values: dict[str, float], pattern: object, path: Path) -> float:
    """The one rank (or alpha) of every module, or the refusal naming the pattern that varies it."""
    if len(set(values.values())) > 1:
        first: dict = {}
        for module, v in values.items():
            first.setdefault(v, module.rsplit(".", 1)[-1])
        shown = ", ".join(f"{k} {what} {v:g}" for v, k in sorted(first.items()))
        why = f"{what}_pattern {pattern}" if pattern else "the factors"
        raise _refuse(path, f"modules have different {what}s ({why}: {shown}); MindFormers' pet_config states one "
                      f"lora_{what} for all", f"pass --merge-adapter to merge it into the weights")
    return next(iter(values.values()))


def _pattern_value(pattern: dict, module: str, default: float, path: Path) -> float:
    """PEFT's rule: a pattern key names a module when it matches the end of its path at a dot."""
    try:
        found = {v for k, v in pattern.items() if module == k or re.fullmatch(rf"(.*\.)?({k})", module)}
    except re.error as e:
        raise ConvertError(path, f"alpha_pattern has a key that is not a regular expression ({e})") from None
    if len(found) > 1:
        raise ConvertError(path, f"alpha_pattern gives {module} more than one alpha ({sorted(found)})")
    return found.pop() if found else default


def module_alphas(cfg: dict, modules: list[LoraModule], path: Path) -> dict[str, float]:
    alpha = _number(cfg, "lora_alpha", path, 8)
    pattern = cfg.get("alpha_pattern") or {}
    if not isinstance(pattern, dict):
        raise ConvertError(path, f"alpha_pattern is {pattern!r:.60}; expected a mapping")
    alphas = {m.module: _pattern_value(pattern, m.module, alpha, path) for m in modules}
    if not all(isinstance(a, (int, float)) and not isinstance(a, bool) and math.isfinite(a) and a != 0
               for a in alphas.values()):
        raise ConvertError(path, f"lora_alpha or alpha_pattern gives an alpha of {sorted(set(alphas.values()))}; "
                           "expected numbers other than 0")
    return alphas


def fold_rslora(alpha: float, rank: int, path: Path) -> float:
    """rsLoRA scales by alpha / sqrt(r); MindFormers by lora_alpha / r. With lora_alpha = alpha * sqrt(r) the
    two agree exactly when sqrt(r) is a whole number (then alpha * sqrt(r) / r is alpha / sqrt(r) rounded
    once, as PEFT computes it); for any other rank they differ in the last bit, so it is refused."""
    root = math.isqrt(rank)
    if root * root != rank:
        raise _refuse(path, f"uses rsLoRA (scale lora_alpha/sqrt(r)) with r = {rank}, not a square: MindFormers' "
                      "lora_alpha/r cannot state that scale exactly", "pass --merge-adapter to merge it into the weights")
    folded = alpha * root
    if folded / rank != alpha / math.sqrt(rank):
        raise _refuse(path, f"uses rsLoRA with lora_alpha {alpha}: folding it into MindFormers' lora_alpha "
                      "would not be exact")
    return int(folded) if float(folded).is_integer() else folded


# ---------------------------------------------------------------- the MindSpore side


def split_mindpet(tensors: dict[str, TensorRef]) -> dict[str, TensorRef]:
    """Take mindpet's LoRA factors out of a MindSpore checkpoint's tensors (in place); return them.

    A LoRA training run also saves optimizer state for each factor under the factor's name with a prefix
    (adam_m.<factor>, exp_avg_sq_row_<factor>, ...): a name that ends in another factor's name is such
    state, left among the tensors for the table's skip rules."""
    named = {n for n in tensors if n.endswith((f".{MINDPET_A}", f".{MINDPET_B}"))}
    state = {n for n in named if any(c in "._" and n[i + 1:] in named for i, c in enumerate(n))}
    lora = {n: tensors[n] for n in tensors if n in named and n not in state}
    for n in lora:
        del tensors[n]
    return lora


def mindpet_modules(lora: dict[str, TensorRef], path: Path) -> list[LoraModule]:
    modules: dict[str, dict[str, str]] = {}
    for name in lora:
        module, part = name.rsplit(".", 1)
        modules.setdefault(module, {})[part] = name
    out = []
    for module, parts in modules.items():
        if set(parts) != {MINDPET_A, MINDPET_B}:
            missing = MINDPET_B if MINDPET_A in parts else MINDPET_A
            raise ConvertError(path, f"{module} has no {missing}", "the checkpoint's LoRA factors are incomplete")
        out.append(LoraModule(module, parts[MINDPET_A], parts[MINDPET_B]))
    return out


def pet_settings(pet: object, path: Path) -> tuple[int, float, float, str]:
    """(lora_rank, lora_alpha, lora_dropout, target_modules) of a YAML's model_config.pet_config."""
    if not isinstance(pet, dict) or pet.get("pet_type") != "lora":
        raise ConvertError(path, f"model_config.pet_config is {pet!r:.80}; LoRA factors need pet_type: lora "
                           "with lora_rank and lora_alpha")
    rank, alpha = pet.get("lora_rank"), _number(pet, "lora_alpha", path, 16)
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ConvertError(path, f"pet_config.lora_rank is {rank!r}; expected a whole number >= 1")
    if alpha == 0:
        raise ConvertError(path, "pet_config.lora_alpha is 0")
    return rank, alpha, _number(pet, "lora_dropout", path, 0.01), str(pet.get("target_modules") or "")
