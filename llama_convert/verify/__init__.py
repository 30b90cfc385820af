"""The parity gate: the converted MindFormers model against the HF original, on the same tokens.

Both sides run the real implementations, named by the mapping table: transformers' class for the
architecture (LlamaForCausalLM, Qwen2ForCausalLM, ...) in float32 on CPU, and MindFormers' model
built from OUT_DIR's YAML with the checkpoint loaded strictly, in PyNative mode. Hidden states are
captured after the embedding, after every decoder layer and after the final norm on both sides, and
compared with the logits against HF's model run in float64 (the reference): a place passes when
MindSpore's distance from the reference is within a small factor of HF float32's own (the rounding
noise of float32 on this model and batch), so the gate scales with the model instead of crying wolf
on a big one, and the first place where the two part is named. A NaN or an infinity on either side
fails, wherever it appears.

Two modes run the same forward code. Whole-model mode loads both models as their libraries do.
Streamed mode builds both models without their weights (transformers on the meta device,
MindFormers with parameter initialisation skipped) and gives each stage (embedding, each decoder
layer, final norm, lm_head) its weights from disk just before it runs and takes them away after,
so memory holds one stage per side, whatever the model's size.

Config parity is checked apart from the numbers: a wrong model must not pass because a random model
hides the difference.

One module per job: options (what is asked, the pass rule), metrics, report, stages (the hooks),
reference (the float64 run), hf_side, ms_side, same_model, config_parity, memory (footprint
estimates), text, gate (the run). What verify must know of the architecture (the structural and
forward-pass keys, where each stage's module is on either side, the CPU kernels) is the table's
(`verify:` and `mindformers.device`), so that a family table can change it.
"""
from __future__ import annotations

from importlib import import_module

# Names -> the module that defines them, imported on first use: `from llama_convert.verify.options import
# VerifyOptions` (the command line's declarations) must not pay for numpy, torch or MindSpore.
_WHERE = {"config_differences": "config_parity", "mindformers_defaults": "config_parity", "seeded_tokens": "gate",
          "verify": "gate", "HFSide": "hf_side", "streamed_estimate": "memory", "whole_model_estimate": "memory",
          "MSSide": "ms_side", "NOISE_FACTOR": "options", "VerifyOptions": "options", "VerifyReport": "report",
          "sanitize": "report", "refuse_different_models": "same_model", "report_text": "text"}


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_WHERE)
