"""The parity gate: the converted MindFormers model against the HF original, on the same tokens.

Both sides run the real implementations, named by the mapping table: transformers' class for the
architecture (LlamaForCausalLM, Qwen2ForCausalLM, ...) in float32 on CPU, and MindFormers' model
built from OUT_DIR's YAML with the checkpoint loaded strictly, in PyNative mode. When logits disagree
(or --layers asks), hidden states are captured after the embedding, after every decoder layer and
after the final norm on both sides, and the first place where they part is named, so a wrong
mapping rule is located, not just detected.

Two modes run the same forward code. Whole-model mode loads both models as their libraries do.
Streamed mode builds both models without their weights (transformers on the meta device,
MindFormers with parameter initialisation skipped) and gives each stage (embedding, each decoder
layer, final norm, lm_head) its weights from disk just before it runs and takes them away after,
so memory holds one stage per side, whatever the model's size. Random initialisation of weights
that are about to be overwritten, the dominant cost of whole-model mode, is skipped too.

Config parity is checked apart from the logits: a wrong rope theta barely moves the logits of a
random model whose attention is near uniform, and a wrong model must not pass because of that.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import ConvertError
from .machine import available_memory, peak_rss
from .mapping import Table
from .ms_source import ms_checkpoint_files

# Pass criteria per (device, parameter dtype). CPU runs everything in float32; the Ascend rows
# are for MindFormers' production kernels in half precision and have not been run here.
TOLERANCES: dict[tuple[str, str], dict[str, float]] = {
    ("CPU", "any"): {"max_abs_diff": 1e-4, "cosine_min": 0.99999, "kl_max": 1e-6, "layer_rel_diff": 1e-4},
    ("Ascend", "float32"): {"max_abs_diff": 1e-3, "cosine_min": 0.9999, "kl_max": 1e-5, "layer_rel_diff": 1e-3},
    ("Ascend", "float16"): {"max_abs_diff": 0.25, "cosine_min": 0.999, "kl_max": 5e-3, "layer_rel_diff": 2e-2},
    ("Ascend", "bfloat16"): {"max_abs_diff": 1.0, "cosine_min": 0.995, "kl_max": 2e-2, "layer_rel_diff": 5e-2},
}
CPU_KERNELS = {"use_flash_attention": False, "fused_rms_norm": False, "use_rope_slice": True}
FLOAT32_COMPUTE = {k: "float32" for k in ("compute_dtype", "param_init_type", "layernorm_compute_type",
                                          "softmax_compute_type", "rotary_dtype", "embedding_init_type")}


@dataclass(frozen=True)
class VerifyOptions:
    device: str = "CPU"
    batch: int = 2
    seq_len: int = 64
    seed: int = 0
    layers: bool = False
    generate: int = 0
    prompt_ids: tuple[int, ...] | None = None
    stream: bool | None = None          # None: stream when the whole models would not fit memory_budget
    memory_budget: int | None = None    # bytes; None: the memory available now


@dataclass
class VerifyReport:
    passed: bool
    device: str
    dtype: str
    tolerances: dict
    batch: int
    seq_len: int
    seed: int
    max_abs_diff: float
    mean_abs_diff: float
    cosine_min: float
    top1_agreement: float
    kl_max: float
    first_divergent_layer: str | None
    layers: list[dict] = field(default_factory=list)
    generated_match: bool | None = None
    first_differing_step: int | None = None
    generated_hf: list[int] | None = None
    generated_ms: list[int] | None = None
    prompt_ids: list[int] | None = None
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)
    mode: str = "whole"                 # "whole" or "streamed"
    peak_rss_bytes: int = 0
    whole_model_estimate_bytes: int = 0
    memory_budget_bytes: int = 0
    config_differences: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def seeded_tokens(vocab: int, batch: int, length: int, seed: int, avoid: int | None) -> np.ndarray:
    """Token ids identical on both sides; never the pad id, which MindFormers masks and HF does not."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, size=(batch, length), dtype=np.int64)
    if avoid is not None and 0 <= avoid < vocab:
        ids[ids == avoid] = (avoid + 1) % vocab
    return ids


def logits_metrics(ref: np.ndarray, got: np.ndarray) -> dict[str, float]:
    ref, got = ref.astype(np.float64), got.astype(np.float64)
    diff = np.abs(ref - got)
    cos = (ref * got).sum(-1) / (np.linalg.norm(ref, axis=-1) * np.linalg.norm(got, axis=-1) + 1e-30)

    def log_softmax(x):
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    lp, lq = log_softmax(ref), log_softmax(got)
    kl = (np.exp(lp) * (lp - lq)).sum(-1)
    return {"max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
            "cosine_min": float(cos.min()), "top1_agreement": float((ref.argmax(-1) == got.argmax(-1)).mean()),
            "kl_max": float(max(kl.max(), 0.0))}


def first_divergence(hf_states: dict[str, np.ndarray], ms_states: dict[str, np.ndarray],
                     rel_tol: float, length: int) -> tuple[str | None, list[dict]]:
    rows, first = [], None
    for place, ref in hf_states.items():
        got = ms_states[place][:, :length].astype(np.float64)
        ref = ref[:, :length].astype(np.float64)
        rel = float(np.abs(ref - got).max() / max(np.abs(ref).max(), 1e-12))
        rows.append({"place": place, "max_abs_diff": float(np.abs(ref - got).max()), "rel_diff": rel,
                     "ok": rel <= rel_tol})
        if first is None and rel > rel_tol:
            first = place
    return first, rows


# ---------------------------------------------------------------------------- the two sides

def capture_places(embedding, layers, final_norm) -> list[tuple[str, object]]:
    """The places compared on both sides, named the same way in every report."""
    return ([("embedding", embedding)] + [(f"layer.{i}", layer) for i, layer in enumerate(layers)]
            + [("final_norm", final_norm)])


def float32_torch(ref):
    """A tensor read from disk as a float32 torch tensor, with no float32 copy beyond the result."""
    import torch
    data = torch.from_numpy(ref.read())
    if ref.dtype == "bfloat16":  # read() gives the bits as uint16; the view costs nothing
        return data.view(torch.bfloat16).float()
    return data.float()


class Stages:
    """Per-stage hooks shared by both sides: capture each place's output, report progress, and in
    streamed mode load the stage's weights before it runs and drop them after."""

    def __init__(self, side: str, total: int, on_stage, load=None, drop=None):
        self.side, self.total, self.on_stage, self.load, self.drop = side, total, on_stage, load, drop
        self.captured: dict[str, np.ndarray] = {}
        self.capture = True
        self.done = 0

    def before(self, place, module):
        def hook(*_):
            if self.load:
                self.load(place, module)
        return hook

    def after(self, place, module, to_numpy):
        def hook(_module, _inputs, output):
            if self.capture and place != "lm_head":
                self.captured[place] = to_numpy(output[0] if isinstance(output, tuple) else output)
            if self.drop:
                self.drop(module)
            if self.capture and self.on_stage:
                self.done += 1
                self.on_stage(f"{self.side} {place}", self.done, self.total)
        return hook


class HFSide:
    def __init__(self, hf_dir: Path, table: Table, tensors: dict | None = None, on_stage=None, total: int = 0):
        """transformers' model of the table's class; with `tensors` (HF_DIR's headers) streamed."""
        import torch
        import transformers
        transformers.logging.set_verbosity_error()
        self.torch = torch
        model_class = getattr(transformers, table.hf.model_class)
        try:
            if tensors is None:
                self.model = model_class.from_pretrained(hf_dir, dtype=torch.float32, attn_implementation="eager")
            else:
                config = model_class.config_class.from_pretrained(hf_dir)
                with torch.device("meta"):  # the architecture without its weights: they come per stage
                    self.model = model_class._from_config(config, attn_implementation="eager", dtype=torch.float32)
                inner = self.model.model  # rotary frequencies are computed, not loaded: compute them for real
                inner.rotary_emb = type(inner.rotary_emb)(config=self.model.config)
                unmade = [n for n, b in self.model.named_buffers() if b.is_meta]
                if unmade:  # an architecture computing more than rotary frequencies at build time
                    raise ConvertError(hf_dir, f"{model_class.__name__} cannot run streamed: buffers {unmade[:3]} "
                                       "are made when the model is built", "verify with --no-stream")
        except ConvertError:
            raise
        except Exception as e:  # transformers raises many types for unreadable directories
            raise ConvertError(hf_dir, f"transformers cannot load this model: {str(e).splitlines()[0][:200]}") from None
        self.model.eval()
        self.hf_dir, self.tensors = hf_dir, tensors
        streamed = tensors is not None
        self.stages = Stages("HF", total, on_stage, self._load if streamed else None, self._drop if streamed else None)
        inner = self.model.model
        self.prefix = {id(m): n for n, m in self.model.named_modules()}
        for place, module in capture_places(inner.embed_tokens, inner.layers, inner.norm) + [("lm_head", self.model.lm_head)]:
            module.register_forward_pre_hook(self.stages.before(place, module))
            module.register_forward_hook(self.stages.after(place, module, lambda out: out.detach().float().numpy()))

    @property
    def captured(self) -> dict[str, np.ndarray]:
        return self.stages.captured

    def _load(self, place: str, module) -> None:
        prefix, state = self.prefix[id(module)], {}
        for n, _ in module.named_parameters():
            name = f"{prefix}.{n}"
            if name not in self.tensors and place == "lm_head":  # tied: the output projection is the embedding
                name = f"{self.prefix[id(self.model.model.embed_tokens)]}.{n}"
            if name not in self.tensors:
                raise ConvertError(self.hf_dir, f"has no tensor {name}, which {type(self.model).__name__} needs")
            state[n] = float32_torch(self.tensors[name])
        module.load_state_dict(state, strict=True, assign=True)

    def _drop(self, module) -> None:
        module.to("meta")

    def logits(self, ids: np.ndarray) -> np.ndarray:
        with self.torch.no_grad():
            return self.model(self.torch.from_numpy(ids)).logits.float().numpy()


def import_mindformers():
    # Quiet MindSpore's C++ log, and keep MindFormers' log directory out of the user's cwd.
    os.environ.setdefault("GLOG_v", "3")
    os.environ.setdefault("LOCAL_DEFAULT_PATH", os.path.join(tempfile.gettempdir(), "llama-convert-mindformers"))
    # MindFormers' logger binds a handler to sys.stdout when first imported; point it at stderr
    # so that stdout carries only our report (and valid JSON with --json).
    with contextlib.redirect_stdout(sys.stderr):
        import mindformers.models
    return mindformers


class MSSide:
    def __init__(self, ms_dir: Path, cfg: dict, yaml_path: Path, table: Table, device: str, batch: int, length: int,
                 tensors: dict | None = None, on_stage=None, total: int = 0):
        """MindFormers' model built from the YAML; with `tensors` (MS_DIR's headers) streamed."""
        mindformers = import_mindformers()
        import mindspore as ms
        ms.set_context(mode=ms.PYNATIVE_MODE)
        ms.set_device(device)
        config_class = getattr(mindformers.models, table.mindformers.config_class)
        model_class = getattr(mindformers.models, table.mindformers.model_class)
        logging.getLogger("mindformers").setLevel(logging.WARNING)
        self.ms = ms
        self.dtype = cfg.get("param_init_type", "float32")
        overrides = {"batch_size": batch, "seq_length": length, "use_past": False}
        if device == "CPU":
            overrides |= CPU_KERNELS | FLOAT32_COMPUTE
        self.pad_token_id = cfg.get("pad_token_id")
        self.length = length
        self.ms_dir, self.tensors, self.device = ms_dir, tensors, device
        try:
            if tensors is None:
                self.net = model_class(config_class(**{**cfg, **overrides}))
            else:  # parameters are created uninitialised: each stage's come from disk when it runs
                from mindspore.nn.utils import no_init_parameters
                with no_init_parameters():
                    self.net = model_class(config_class(**{**cfg, **overrides}))
        except Exception as e:  # the YAML's untyped keys (parallelism, kernels, ...) reach MindFormers as they are
            raise ConvertError(yaml_path, f"MindFormers cannot build {model_class.__name__} from this model_config: "
                               f"{(str(e).strip().splitlines() or [type(e).__name__])[0][:200]}") from None
        self.net.set_train(False)
        inner = self.net.model
        places = capture_places(inner.tok_embeddings, inner.layers, inner.norm_out) + [("lm_head", self.net.lm_head)]
        if tensors is None:
            params = load_ms_params(ms, ms_dir)
            if device == "CPU":  # one tensor at a time, so the half-precision copies are freed as we go
                for k in list(params):
                    params[k] = ms.Parameter(params.pop(k).astype(ms.float32), name=k)
            missing, unexpected = ms.load_param_into_net(self.net, params, strict_load=True)
        else:
            names = {p.name for p in self.net.get_parameters()}
            missing, unexpected = sorted(names - set(tensors)), sorted(set(tensors) - names)
            staged = {p.name for _, cell in places for p in cell.get_parameters()}
            if not missing and names - staged:  # a weight no stage loads would run uninitialised
                raise ConvertError(yaml_path, f"{model_class.__name__} has parameters outside the verified stages: "
                                   f"{sorted(names - staged)[:3]}", "verify without --stream")
        if missing or unexpected:
            raise ConvertError(ms_dir, f"checkpoint does not fit {yaml_path.name}: missing {missing[:3]}, "
                               f"unexpected {unexpected[:3]}")
        streamed = tensors is not None
        self.stages = Stages("MindSpore", total, on_stage, self._load if streamed else None,
                             self._drop if streamed else None)
        for place, cell in places:
            cell.register_forward_pre_hook(self.stages.before(place, cell))
            cell.register_forward_hook(self.stages.after(place, cell, lambda out: out.astype(ms.float32).asnumpy()))

    @property
    def captured(self) -> dict[str, np.ndarray]:
        return self.stages.captured

    @property
    def capture(self) -> bool:
        return self.stages.capture

    @capture.setter
    def capture(self, value: bool) -> None:
        self.stages.capture = value

    def _load(self, place: str, cell) -> None:
        for p in cell.get_parameters():
            data = self.ms.Tensor.from_numpy(float32_torch(self.tensors[p.name]).numpy())  # shares, no copy
            if self.device != "CPU":  # the production kernels take the checkpoint's own precision
                data = data.astype(p.dtype)
            # slice_shape: the placeholder left by _drop has another shape than the weight
            p.set_data(data, slice_shape=True)
            del data

    def _drop(self, cell) -> None:
        for p in cell.get_parameters():
            p.set_data(self.ms.Tensor(np.zeros((1,), np.float32)), slice_shape=True)

    def logits(self, ids: np.ndarray) -> np.ndarray:
        """Logits for ids, padded on the right to the net's fixed length (causal: padding cannot leak back)."""
        batch, n = ids.shape
        padded = np.zeros((batch, self.length), dtype=np.int32)
        padded[:, :n] = ids
        out = self.net(self.ms.Tensor(padded))
        logits = out[0] if isinstance(out, tuple) else out
        return logits.astype(self.ms.float32).asnumpy().reshape(batch, self.length, -1)[:, :n]


# The model_config keys that make two checkpoints different models (whatever the architecture: every
# table writes MindFormers' Llama).
STRUCTURAL = ("hidden_size", "num_layers", "num_heads", "n_kv_heads", "vocab_size", "intermediate_size",
              "tie_word_embeddings", "qkv_has_bias", "attn_proj_has_bias")


def refuse_different_models(hf_dir: Path, ms_dir: Path):
    """ConvertError unless MS_DIR can be a conversion of HF_DIR, decided from configs and headers alone.

    Both sides are planned as the converter would (HF config through the table, MindSpore checkpoint
    through the table backwards), which also checks each checkpoint against its own config; then the
    structural keys and the shapes of the tensors both sides name are compared. Loading two models
    only to report garbage logits (or to crash building one) is worse than saying so up front.
    Returns (hf2ms plan of HF_DIR, ms2hf plan of MS_DIR): their tables and checked model_configs.
    """
    from .edges import few
    from .hf_source import open_hf_dir
    from .mapping import select_for_hf
    from .ms_source import open_ms_dir
    from .options import HF2MSOptions, MS2HFOptions
    from .plan import build_ms2hf_plan, build_plan
    from .value_types import show

    hf_source, ms_source = open_hf_dir(hf_dir), open_ms_dir(ms_dir)
    hf_table = select_for_hf(hf_source.config, hf_source.config_file)
    # A YAML that records no table (written by other tools) is read with HF_DIR's; HF_DIR is planned for
    # the seq_length MS_DIR was converted for, which a table's checks may depend on (a Mistral window).
    ms_plan = build_ms2hf_plan(ms_source, MS2HFOptions(), None if ms_source.recorded_table else hf_table)
    hf_plan = build_plan(hf_source, HF2MSOptions(seq_length=ms_plan.model_config.get("seq_length")), hf_table)
    hf_mc, ms_mc = hf_plan.model_config, ms_plan.model_config
    differ = []
    if hf_plan.table.name != ms_plan.table.name:
        differ.append(f"table {ms_plan.table.name} vs {hf_plan.table.name} for config.json")
    for key in STRUCTURAL:
        a, b = hf_mc.get(key), ms_mc.get(key)
        if key == "n_kv_heads":
            a, b = a or hf_mc["num_heads"], b or ms_mc["num_heads"]
        elif isinstance(a, bool) or isinstance(b, bool):
            a, b = bool(a), bool(b)
        if key == "tie_word_embeddings" and a and not b:
            continue  # hf2ms --untie: the tied embedding was copied into lm_head; the same model
        if a != b:
            differ.append(f"model_config.{key} {show(b)} vs {show(a)} from config.json")
    hf_shapes = {n: r.shape for n, r in hf_plan.source.tensors.items()}
    shapes = [f"{t.name} {list(t.shape)} vs {list(hf_shapes[t.name])}" for t in ms_plan.tensors
              if t.name in hf_shapes and hf_shapes[t.name] != t.shape]
    if shapes:  # a differing key explains its shapes: count them; alone, the shapes are the evidence
        differ += [f"{len(shapes)} tensor shapes"] if differ else [few(shapes, 3)]
    if differ:
        raise ConvertError(ms_plan.source.config_file, f"describes a different model than {hf_plan.source.config_file}: "
                           f"{', '.join(differ)}", "MS_DIR is not a conversion of HF_DIR; verify compares a model "
                           "with its own conversion")
    return hf_plan, ms_plan


def load_ms_params(ms, ms_dir: Path) -> dict:
    """Every parameter of MS_DIR, loaded by mindspore itself (the point is that MindSpore can)."""
    params = {}
    for f in ms_checkpoint_files(ms_dir):
        try:
            params.update(ms.load_checkpoint(str(f), format=f.suffix.lstrip(".")))
        except (ValueError, RuntimeError) as e:
            raise ConvertError(f, f"mindspore cannot load this checkpoint: {str(e).splitlines()[0][:200]}") from None
    return params


# ---------------------------------------------------------------------------- the gate

def greedy(step, prompt: list[int], n: int) -> list[int]:
    ids = list(prompt)
    for _ in range(n):
        ids.append(int(np.argmax(step(ids))))
    return ids[len(prompt):]


# The model_config keys, besides the structural ones, that change what the model computes. Kernel,
# dtype, parallelism, batch and generation settings are deliberately absent: they are choices of how
# to run the model, and verify runs both sides its own way (float32, plain kernels).
FORWARD_KEYS = ("theta", "rms_norm_eps", "extend_method", "scaling_factor", "max_position_embedding",
                "pad_token_id", "multiple_of", "ffn_dim_multiplier", "hidden_act", "head_dim", "rope_scaling")


def _same(a, b) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) and not isinstance(b, bool):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0) or a == b
    return a == b


def config_differences(hf_mc: dict, ms_mc: dict, defaults: dict | None = None) -> list[str]:
    """Each forward-pass key where MS_DIR's model_config differs from HF_DIR's config translated through
    the table, as `key <ms value> vs <translated value>`. A key one side leaves out takes MindFormers'
    default (`defaults`), because that is what the model then runs with."""
    from .value_types import show
    defaults = defaults or {}
    out = []
    for key in FORWARD_KEYS:
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



# Whole-model mode holds, per parameter: HF's float32 copy, MindFormers' randomly initialised float32
# copy, the loaded checkpoint and its float32 cast (measured: 18.0 GiB for Llama-3.2-1B's 1.24 G
# parameters), plus the two runtimes.
WHOLE_BYTES_PER_PARAM = 16
RUNTIMES_BYTES = 1 << 30


def whole_model_estimate(tensors: dict) -> int:
    return WHOLE_BYTES_PER_PARAM * sum(math.prod(r.shape) for r in tensors.values()) + RUNTIMES_BYTES



def verify(hf_dir: str | Path, ms_dir: str | Path, options: VerifyOptions | None = None,
           on_stage: Callable[[str, int, int], None] | None = None) -> VerifyReport:
    """Run HF_DIR's and MS_DIR's models on the same tokens and compare logits, hidden states and configs.

    on_stage(name, index, total) is called as each stage of either side finishes ("HF embedding",
    "MindSpore layer.3", ...; total counts both sides' stages); verify prints nothing itself.
    """
    opts = options or VerifyOptions()
    start = time.perf_counter()
    hf_dir, ms_dir = Path(hf_dir), Path(ms_dir)
    if not (hf_dir / "config.json").exists():
        raise ConvertError(hf_dir / "config.json", "not found", "HF_DIR must be a HuggingFace model directory")
    ms_checkpoint_files(ms_dir)  # fail on a missing checkpoint before loading two models
    hf_plan, ms_plan = refuse_different_models(hf_dir, ms_dir)
    cfg = ms_plan.model_config
    vocab = int(cfg["vocab_size"])
    pad = cfg.get("pad_token_id")
    # The model was converted for at most seq_length tokens; beyond it the two sides need not agree
    # (a Mistral sliding window converts exactly only up to it).
    seq_len = min(opts.seq_len, cfg.get("seq_length") or opts.seq_len)
    ids = seeded_tokens(vocab, opts.batch, seq_len, opts.seed, pad)
    prompt = list(opts.prompt_ids) if opts.prompt_ids else ids[0, :8].tolist()
    if opts.generate and any(not 0 <= t < vocab for t in prompt):
        raise ConvertError(None, f"--prompt-ids must be token ids in [0, {vocab})")
    length = max(seq_len, len(prompt) + opts.generate if opts.generate else 0)

    estimate = whole_model_estimate(hf_plan.source.tensors)
    budget = opts.memory_budget if opts.memory_budget is not None else available_memory()
    stream = opts.stream if opts.stream is not None else estimate > budget
    if stream and opts.generate:
        why = "--stream was given" if opts.stream else f"the whole models need about {estimate / 2**30:.1f} GiB, " \
                                                      f"over the memory budget of {budget / 2**30:.1f} GiB"
        raise ConvertError(None, f"--generate runs the whole models, and {why}",
                           "verify without --generate (streamed verify compares logits and every layer)")
    differences = config_differences(hf_plan.model_config, cfg, mindformers_defaults(ms_plan.table))

    total = 2 * (int(cfg["num_layers"]) + 3)
    hf = HFSide(hf_dir, hf_plan.table, hf_plan.source.tensors if stream else None, on_stage, total)
    ref = hf.logits(ids)
    ms = MSSide(ms_dir, cfg, ms_plan.source.config_file, ms_plan.table, opts.device, opts.batch, length,
                ms_plan.source.tensors if stream else None, on_stage, total)
    ms.stages.done = total // 2  # the HF side's stages came first
    tol_key = (opts.device, "any") if opts.device == "CPU" else (opts.device, ms.dtype)
    tol = TOLERANCES[tol_key]

    got = ms.logits(ids)
    m = logits_metrics(ref, got)
    failures = [f"{k} {m[k]:.3g} > {tol[k]:.3g}" for k in ("max_abs_diff", "kl_max") if m[k] > tol[k]]
    if m["cosine_min"] < tol["cosine_min"]:
        failures.append(f"cosine_min {m['cosine_min']:.6f} < {tol['cosine_min']}")

    first, layer_rows = None, []
    if opts.layers or failures or differences:
        first, layer_rows = first_divergence(hf.captured, ms.captured, tol["layer_rel_diff"], seq_len)
        if failures and first is None:
            first = "lm_head"  # every hidden state agrees, so the output projection differs
    failures += [f"model_config.{d}" for d in differences]

    report = VerifyReport(passed=not failures, device=opts.device, dtype="float32" if opts.device == "CPU" else ms.dtype,
                          tolerances=tol, batch=opts.batch, seq_len=seq_len, seed=opts.seed, **m,
                          first_divergent_layer=first if failures else None, layers=layer_rows, failures=failures,
                          mode="streamed" if stream else "whole", whole_model_estimate_bytes=estimate,
                          memory_budget_bytes=budget, config_differences=differences)
    if opts.generate:
        hf.stages.capture = ms.capture = False
        hf_ids = greedy(lambda s: hf.logits(np.array([s]))[0, -1], prompt, opts.generate)
        ms_ids = greedy(lambda s: ms.logits(np.array([s]))[0, -1], prompt, opts.generate)
        step = next((i for i, (a, b) in enumerate(zip(hf_ids, ms_ids)) if a != b), None)
        report.generated_hf, report.generated_ms, report.prompt_ids = hf_ids, ms_ids, prompt
        report.generated_match, report.first_differing_step = step is None, step
        if step is not None:
            report.passed = False
            report.failures.append(f"greedy generation differs from step {step}")
    report.seconds = time.perf_counter() - start
    report.peak_rss_bytes = peak_rss()
    return report


def report_text(r: VerifyReport) -> str:
    verdict = "PASS" if r.passed else "FAIL"
    lines = [f"verify: {verdict} on {r.device} ({r.dtype}), batch {r.batch} x {r.seq_len} tokens, seed {r.seed}, "
             f"{r.seconds:.1f} s", f"  mode: {r.mode}, peak RSS {r.peak_rss_bytes / 2**30:.2f} GiB "
             f"(whole models estimated at {r.whole_model_estimate_bytes / 2**30:.1f} GiB, "
             f"budget {r.memory_budget_bytes / 2**30:.1f} GiB)", "",
             f"  {'metric':<16}{'value':>14}  {'limit':>10}",
             f"  {'max_abs_diff':<16}{r.max_abs_diff:>14.3e}  <= {r.tolerances['max_abs_diff']:.0e}",
             f"  {'mean_abs_diff':<16}{r.mean_abs_diff:>14.3e}",
             f"  {'cosine_min':<16}{r.cosine_min:>14.8f}  >= {r.tolerances['cosine_min']}",
             f"  {'top1_agreement':<16}{r.top1_agreement:>14.4f}",
             f"  {'kl_max':<16}{r.kl_max:>14.3e}  <= {r.tolerances['kl_max']:.0e}"]
    if r.layers:
        lines += ["", f"  {'place':<16}{'max_abs_diff':>14}  {'relative':>10}"]
        lines += [f"  {row['place']:<16}{row['max_abs_diff']:>14.3e}  {row['rel_diff']:>10.2e}"
                  f"{'' if row['ok'] else '  <-- diverges'}" for row in r.layers]
    if r.first_divergent_layer:
        lines += ["", f"  first divergence: {r.first_divergent_layer}"]
    if r.generated_match is not None:
        lines += ["", f"  greedy {len(r.generated_hf)} tokens from {r.prompt_ids}: "
                      f"{'identical' if r.generated_match else f'differ from step {r.first_differing_step}'}"]
    lines += [f"  failed: {f}" for f in r.failures]
    return "\n".join(lines)


def sanitize(d: dict) -> dict:
    """JSON has no NaN/inf: report them as strings rather than emit invalid JSON."""
    return {k: (str(v) if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}
