"""verify --adapter: transformers + PEFT (HF_DIR with ADAPTER_DIR) against MindFormers + pet_config (MS_DIR's
model wrapped in mindpet's LoRA layers as its YAML says, every parameter, factors included, loaded strictly),
or against MS_DIR's plain model when it holds the adapter merged (hf2ms --merge-adapter).

The whole models run (no streaming: PEFT wraps the whole model), on CPU in float32 beside a float64 run
of the PEFT model as the reference; the logits pass under the rule of every verify (within NOISE_FACTOR x
HF float32's own distance from the reference). The adapter must also be the one MS_DIR holds: its rank,
alpha (rsLoRA folded) and adapted modules against the pet_config, and every factor's shape.
"""
from __future__ import annotations

import copy
import time
from pathlib import Path

import numpy as np

from ..console.quiet import import_mindformers, import_transformers
from ..core.errors import ConvertError
from ..core.extras import require
from ..core.machine import available_memory, peak_rss
from ..sources.adapter import open_adapter_dir, pet_settings
from ..sources.ms import ms_checkpoint_files
from .metrics import logits_metrics, nonfinite_failure, place_row
from .ms_side import FLOAT32_COMPUTE, load_ms_params
from .memory import whole_model_estimate
from .options import NOISE_FACTOR, VerifyOptions, tolerances
from .report import VerifyReport
from .same_model import refuse_different_models


def adapter_differences(adapter, ms_plan) -> list[str]:
    """Where ADAPTER_DIR is not the adapter MS_DIR's pet_config and factors state."""
    source = ms_plan.source
    rank, alpha, _, _ = pet_settings(source.pet_config, source.config_file)
    if adapter.unstatable is not None:
        return [adapter.unstatable.problem]
    differ = []
    if (adapter.rank, adapter.alpha) != (rank, alpha):
        differ.append(f"adapter r {adapter.rank}, alpha {adapter.alpha:g} vs pet_config lora_rank {rank}, "
                      f"lora_alpha {alpha:g}")
    theirs = {pt.name: pt.shape for pt in ms_plan.adapter_tensors}
    ours = {n: r.shape for n, r in adapter.tensors.items()}
    if theirs != ours:
        only = sorted(set(ours) ^ set(theirs)) or sorted(n for n in ours if ours[n] != theirs[n])
        differ.append(f"adapted modules or factor shapes differ ({len(only)}: {only[0]})")
    return differ


def verify_adapter(hf_dir: Path, ms_dir: Path, opts: VerifyOptions) -> VerifyReport:
    start = time.perf_counter()
    hf_dir, ms_dir = Path(hf_dir), Path(ms_dir)
    if opts.device != "CPU":
        raise ConvertError("--adapter", "verify --adapter runs on CPU only", "leave --device out")
    if opts.stream or opts.generate:
        raise ConvertError("--adapter", "verify --adapter runs the whole models and compares logits",
                           "leave --stream and --generate out")
    if not (hf_dir / "config.json").exists():
        raise ConvertError(hf_dir / "config.json", "not found", "HF_DIR must be a HuggingFace model directory")
    ms_checkpoint_files(ms_dir)
    adapter = open_adapter_dir(Path(opts.adapter))
    hf_plan, ms_plan = refuse_different_models(hf_dir, ms_dir, adapter=True)
    cfg, table = ms_plan.model_config, ms_plan.table
    seq_len = min(opts.seq_len, cfg.get("seq_length") or opts.seq_len)
    from .gate import seeded_tokens
    ids = seeded_tokens(int(cfg["vocab_size"]), opts.batch, seq_len, opts.seed, cfg.get("pad_token_id"))

    hf, reference, ref_seconds = _peft_logits(hf_dir, adapter.root, table, ids)
    got = _mindformers_logits(ms_dir, ms_plan, opts.batch, ids)

    row = place_row("lm_head", reference, hf, got, NOISE_FACTOR)
    failures = [nonfinite_failure(row)] if row["nonfinite"] else []
    if not row["ok"] and not row["nonfinite"]:
        failures.append(f"lm_head: distance {row['distance']:.3g} from HF+PEFT run in float64 is {row['ratio']:.3g} x "
                        f"the float32 noise {row['noise']:.3g} (limit {NOISE_FACTOR:g} x)")
    if ms_plan.source.lora:  # else MS_DIR holds the adapter merged (--merge-adapter): the numbers say it all
        failures += [f"adapter: {d}" for d in adapter_differences(adapter, ms_plan)]
    m = logits_metrics(hf, got)
    report = VerifyReport(passed=not failures, device="CPU", dtype="float32",
                          tolerances={**tolerances("CPU", "float32"), "adapter": str(adapter.root)},
                          batch=opts.batch, seq_len=seq_len, seed=opts.seed, **m,
                          first_divergent_layer="lm_head" if failures else None, logits_distance=row["distance"],
                          logits_noise=row["noise"], logits_ratio=row["ratio"], layers=[row],
                          layers_asked=opts.layers, nonfinite={"place": "lm_head", **row["nonfinite"]}
                          if row["nonfinite"] else None, failures=failures, mode="whole",
                          whole_model_estimate_bytes=whole_model_estimate(hf_plan.source.tensors),
                          memory_budget_bytes=opts.memory_budget or available_memory())
    report.reference_seconds = ref_seconds
    report.seconds = time.perf_counter() - start
    report.peak_rss_bytes = peak_rss()
    return report


def _peft_logits(hf_dir: Path, adapter_dir: Path, table, ids: np.ndarray):
    """transformers + PEFT in float32, and the same in float64 (the reference)."""
    import torch
    transformers = import_transformers()
    peft = require("peft", "verify --adapter")
    model_class = getattr(transformers, table.hf.model_class)
    try:
        base = model_class.from_pretrained(hf_dir, dtype=torch.float32, attn_implementation="eager")
        model = peft.PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    except Exception as e:  # transformers and PEFT raise many types for unreadable directories
        raise ConvertError(adapter_dir, f"transformers + PEFT cannot load this adapter on {hf_dir}: "
                           f"{str(e).splitlines()[0][:200]}") from None
    x = torch.from_numpy(ids)
    with torch.no_grad():
        hf = model(x, use_cache=False).logits.float().numpy()
        started = time.perf_counter()
        wide = copy.deepcopy(model).double()
        reference = wide(x, use_cache=False).logits.numpy()
    return hf, reference, time.perf_counter() - started


def _mindformers_logits(ms_dir: Path, ms_plan, batch: int, ids: np.ndarray) -> np.ndarray:
    """MindFormers' model with mindpet's LoRA layers as pet_config says, float32 on CPU, loaded strictly."""
    mindformers = import_mindformers()
    import mindspore as ms
    from mindformers.pet.models.lora import LoraModel
    from mindformers.pet.pet_config import LoraConfig
    ms.set_context(mode=ms.PYNATIVE_MODE)
    ms.set_device("CPU")
    source, table = ms_plan.source, ms_plan.table
    config_class = getattr(mindformers.models, table.mindformers.config_class)
    model_class = getattr(mindformers.models, table.mindformers.model_class)
    length = ids.shape[1]
    overrides = {"batch_size": batch, "seq_length": length, "use_past": False,
                 **dict(table.mindformers.device["CPU"]), **FLOAT32_COMPUTE}
    try:
        net = model_class(config_class(**{**ms_plan.model_config, **overrides}))
        if source.lora:  # LoraModel, not build_network's PetModel: that one also writes an adapter_config.json
            pet = {k: v for k, v in source.pet_config.items() if k != "pet_type"}  # into MindFormers' output dir
            net = LoraModel(LoraConfig(**pet, param_init_type="float32", compute_dtype="float32"), net)
    except Exception as e:
        raise ConvertError(source.config_file, f"MindFormers cannot build {model_class.__name__} with this "
                           f"pet_config: {(str(e).strip().splitlines() or [type(e).__name__])[0][:200]}") from None
    net.set_train(False)
    params = load_ms_params(ms, ms_dir)
    for k in list(params):
        params[k] = ms.Parameter(params.pop(k).astype(ms.float32), name=k)
    missing, unexpected = ms.load_param_into_net(net, params, strict_load=True)
    if missing or unexpected:
        raise ConvertError(ms_dir, f"checkpoint does not fit {source.config_file.name} with its pet_config: missing "
                           f"{missing[:3]}, unexpected {unexpected[:3]}")
    out = net(ms.Tensor(ids.astype(np.int32)))
    logits = out[0] if isinstance(out, tuple) else out
    return logits.astype(ms.float32).asnumpy().reshape(batch, length, -1)
