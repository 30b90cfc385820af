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

One module per job: options (what is asked, the pass rule), facts (what verify knows of MindFormers'
Llama), metrics, report, stages (the hooks), reference (the float64 run), hf_side, ms_side,
same_model, config_parity, memory (footprint estimates), text, gate (the run).
"""
from __future__ import annotations

from .config_parity import config_differences, mindformers_defaults
from .gate import seeded_tokens, verify
from .hf_side import HFSide
from .memory import streamed_estimate, whole_model_estimate
from .ms_side import MSSide
from .options import NOISE_FACTOR, VerifyOptions
from .report import VerifyReport, sanitize
from .same_model import refuse_different_models
from .text import report_text

__all__ = ["HFSide", "MSSide", "NOISE_FACTOR", "VerifyOptions", "VerifyReport", "config_differences", "mindformers_defaults",
           "refuse_different_models", "report_text", "sanitize", "seeded_tokens", "streamed_estimate", "verify",
           "whole_model_estimate"]
