"""llama-convert: HuggingFace Llama-family checkpoints to MindSpore / MindFormers and back, with proof.

Library API (the CLI is a thin layer over it):

    from llama_convert import HF2MSOptions, MS2HFOptions, plan_hf2ms, convert_hf2ms, convert_ms2hf, verify_conversion
    plan = plan_hf2ms("hf_dir", HF2MSOptions(format="safetensors", qkv_concat=True))  # headers only
    result = convert_hf2ms("hf_dir", "ms_dir")                 # writes ms_dir atomically
    back = convert_ms2hf("ms_dir", "hf_again", MS2HFOptions())
    report = verify_conversion("hf_dir", "ms_dir")             # report.passed
    bulk = run_bulk("models.jsonl", BulkOptions(jobs=2))        # a manifest of rows; bulk["rows"]

The mapping table is chosen from config.json's architectures (or the table a MindFormers YAML
records); `table=` in the options names one instead, by name or path.
"""
from __future__ import annotations

from .api import (convert_hf2ms, convert_ms2hf, diff_checkpoints, generate_text, inspect_checkpoint, plan_bulk, plan_hf2ms,
                  plan_ms2hf, resolve_source, run_bulk, verify_conversion, write)
from .bulk.options import BulkOptions
from .core.errors import ConvertError
from .core.options import HF2MSOptions, MS2HFOptions, SourceOptions
from .core.version import __version__

__all__ = ["BulkOptions", "ConvertError", "HF2MSOptions", "MS2HFOptions", "SourceOptions", "__version__", "convert_hf2ms",
           "convert_ms2hf", "diff_checkpoints", "generate_text", "inspect_checkpoint", "plan_bulk", "plan_hf2ms", "plan_ms2hf",
           "resolve_source", "run_bulk", "verify_conversion", "write"]
