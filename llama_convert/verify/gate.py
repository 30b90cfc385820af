"""The parity gate: both models on the same tokens, every place compared, one verdict."""
from __future__ import annotations

import contextlib
import gc
import time
from importlib.util import find_spec
from pathlib import Path
from typing import Callable

import numpy as np

from ..console.quiet import import_mindformers
from ..core.errors import ConvertError
from ..core.machine import available_memory, peak_rss
from ..sources.ms import ms_checkpoint_files
from ..sources.ranks import is_rank_dir
from .config_parity import config_differences, generation_differences, mindformers_defaults
from .hf_side import HFSide, hf_model_class
from .memory import whole_model_estimate
from .metrics import fixed_failures, logits_metrics, nonfinite_failure, place_row
from .ms_side import MSSide
from .options import FIXED_TOLERANCES, NOISE_FACTOR, VerifyOptions, tolerances
from .report import VerifyReport
from .same_model import refuse_different_models


def seeded_tokens(vocab: int, batch: int, length: int, seed: int, avoid: int | None) -> np.ndarray:
    """Token ids identical on both sides; never the pad id, which MindFormers masks and HF does not."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, size=(batch, length), dtype=np.int64)
    if avoid is not None and 0 <= avoid < vocab:
        ids[ids == avoid] = (avoid + 1) % vocab
    return ids


def greedy(step, prompt: list[int], n: int) -> list[int]:
    ids = list(prompt)
    for _ in range(n):
        ids.append(int(np.argmax(step(ids))))
    return ids[len(prompt):]


@contextlib.contextmanager
def gc_paused():
    """The cyclic garbage collector off, for importing the frameworks: an import makes millions of
    objects that all live on, and each collection it triggers walks them all again (~1 s of the
    imports' CPU time). Only while nothing else runs: the collector is process-wide, and paused beside
    the HF side's forward it let that side's garbage grow the peak RSS by ~0.1 GiB."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def compare(hf: HFSide, ms: MSSide, ref_logits: np.ndarray, got: np.ndarray, seq_len: int,
            tol: dict) -> tuple[list[dict], list[str], str | None, dict | None]:
    """Every place, the logits last (as "lm_head"): (rows, failures, first divergent place, first
    non-finite place). The rule is tol's: the noise ratio (CPU) or the fixed table (Ascend)."""
    reference = hf.reference
    factor = NOISE_FACTOR if tol["rule"] == "noise_ratio" else None
    rows = []
    for place, hf_state in hf.captured.items():
        truth = reference.states[place] if reference else None
        rows.append(place_row(place, truth, hf_state[:, :seq_len], ms.captured[place][:, :seq_len], factor))
    rows.append(place_row("lm_head", reference.logits if reference else None, ref_logits, got, factor))
    failures, first, nonfinite = [], None, None
    for row in rows:
        if row["ok"]:
            continue
        if row["nonfinite"]:  # the first place says where; later ones inherit it
            if nonfinite is None:
                nonfinite = {"place": row["place"], **row["nonfinite"]}
                failures.append(nonfinite_failure(row))
        elif factor is not None and (first is None or row["place"] == "lm_head"):
            failures.append(f"{row['place']}: distance {row['distance']:.3g} from HF run in float64 is "
                            f"{row['ratio']:.3g} x the float32 noise {row['noise']:.3g} (limit {factor:g} x)")
        first = first or row["place"]
    return rows, failures, first, nonfinite


def verify(hf_dir: str | Path, ms_dir: str | Path, options: VerifyOptions | None = None,
           on_stage: Callable[[str, int, int], None] | None = None) -> VerifyReport:
    """Run HF_DIR's and MS_DIR's models on the same tokens and compare every stage, the logits and the configs.

    on_stage(name, index, total) is called as each stage of either side finishes ("HF embedding",
    "MindSpore layer.3", ...; total counts both sides' stages); verify prints nothing itself.
    """
    opts = options or VerifyOptions()
    start = time.perf_counter()
    hf_dir, ms_dir = Path(hf_dir), Path(ms_dir)
    if not (hf_dir / "config.json").exists():
        raise ConvertError(hf_dir / "config.json", "not found", "HF_DIR must be a HuggingFace model directory")
    if not is_rank_dir(ms_dir):
        ms_checkpoint_files(ms_dir)  # fail on a missing checkpoint before loading two models
    hf_plan, ms_plan = refuse_different_models(hf_dir, ms_dir)
    with gc_paused():  # imports transformers and torch
        hf_model_class(hf_dir, hf_plan.table)  # before anything is loaded: remote-code families have no HF side
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
    dtype = "float32" if opts.device == "CPU" else cfg.get("param_init_type", "float32")
    if opts.device != "CPU" and (opts.device, dtype) not in FIXED_TOLERANCES:
        raise ConvertError(ms_plan.source.config_file, f"no tolerances for {dtype} on {opts.device}")
    tol = tolerances(opts.device, dtype)

    # A missing MindSpore or MindFormers is refused before any model is built; the import itself waits
    # until the HF side is done. Run in a thread beside the HF side's torch work it saved ~2 s, but its
    # ~0.5 GiB then met the HF side's peak (the lm_head stage) and the peak RSS of the 8B shape rose from
    # 5.3 to 6.3 GiB; it also runs `lscpu`, whose vfork child a process-tree RSS counts as a second copy
    # of whatever the process holds at that moment (bench/verify_speed_results.md).
    if find_spec("mindspore") is None or find_spec("mindformers") is None:
        import_mindformers()
    total = 2 * (int(cfg["num_layers"]) + 3)
    hf = HFSide(hf_dir, hf_plan.table, hf_plan.source.tensors if stream else None, on_stage, total,
                reference_length=seq_len if tol["rule"] == "noise_ratio" else None)
    ref = hf.logits(ids, keep_buffers=stream)
    with gc_paused():
        import_mindformers()
    differences = config_differences(ms_plan.table, hf_plan.model_config, cfg, mindformers_defaults(ms_plan.table))
    differences += [f"generation.{d}" for d in generation_differences(ms_plan.table, hf_plan.source.generation_config, cfg)]
    # A multi-rank directory is read through our merge (its files hold slices and optimizer state):
    # the model's tensors only, streamed or whole.
    merged = ms_plan.source.ranks is not None
    weights = {n: r for n, r in ms_plan.source.tensors.items() if n in {s for t in ms_plan.tensors for s in t.sources}}
    ms = MSSide(ms_dir, cfg, ms_plan.source.config_file, ms_plan.table, opts.device, opts.batch, length,
                (weights if merged else ms_plan.source.tensors) if stream else None, on_stage, total,
                merged=weights if merged and not stream else None, buffers=hf.buffers if stream else None)
    ms.stages.done = total // 2  # the HF side's stages came first
    got = ms.logits(ids)

    m = logits_metrics(ref, got)
    rows, failures, first, nonfinite = compare(hf, ms, ref, got, seq_len, tol)
    if tol["rule"] == "fixed" and not nonfinite:
        failures, first = fixed_failures(m, rows[:-1], tol)
        first = first or ("lm_head" if failures else None)
    if not nonfinite:  # finite logits give finite metrics; say so if they ever do not
        failures += [f"logits metric {k} is {v}" for k, v in m.items() if not np.isfinite(v)]
    failures += [d if d.startswith("generation.") else f"model_config.{d}" for d in differences]
    logits_row = rows[-1]
    report = VerifyReport(passed=not failures, device=opts.device, dtype=dtype, tolerances=tol, batch=opts.batch,
                          seq_len=seq_len, seed=opts.seed, **m, first_divergent_layer=first if failures else None,
                          logits_distance=logits_row["distance"], logits_noise=logits_row["noise"],
                          logits_ratio=logits_row["ratio"], layers=rows, layers_asked=opts.layers,
                          nonfinite=nonfinite, failures=failures, mode="streamed" if stream else "whole",
                          whole_model_estimate_bytes=estimate, memory_budget_bytes=budget,
                          config_differences=differences)
    report.reference_seconds = hf.reference.seconds if hf.reference else 0.0
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
