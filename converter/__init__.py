"""llama-convert: HuggingFace Llama checkpoints to MindSpore / MindFormers and back, with proof.

Library API (the CLI is a thin layer over it):

    from converter import plan_hf2ms, convert_hf2ms, Options
    plan = plan_hf2ms("hf_dir", Options(format="safetensors", qkv_concat=True))   # headers only
    result = convert_hf2ms("hf_dir", "out_dir", Options())
"""
from __future__ import annotations

from pathlib import Path

from .errors import ConvertError
from .options import Options
from .version import __version__


def plan_hf2ms(src: str | Path, options: Options | None = None):
    """The full conversion plan from headers alone: nothing is read beyond headers, nothing written."""
    from .plan import build_plan
    from .hf_source import open_hf_dir
    return build_plan(open_hf_dir(Path(src)), options or Options())


def convert_hf2ms(src: str | Path, out: str | Path, options: Options | None = None, force: bool = False):
    """Convert a HF Llama directory into a MindFormers directory; returns a report.Result."""
    from .execute import execute
    from .outdir import check_out_dir
    check_out_dir(Path(out), force, [Path(src)])
    return execute(plan_hf2ms(src, options), Path(out), force, Path(src))


def plan_ms2hf(src: str | Path, options: Options | None = None, config: str | Path | None = None):
    """The plan back to HF from a MindSpore checkpoint and its MindFormers YAML (headers only)."""
    from .ms_source import open_ms_dir
    from .plan_back import DEFAULT_SHARD, build_ms2hf_plan
    options = options or Options(format="safetensors", max_shard_size=DEFAULT_SHARD)
    return build_ms2hf_plan(open_ms_dir(Path(src), Path(config) if config else None), options)


def convert_ms2hf(src: str | Path, out: str | Path, options: Options | None = None,
                  config: str | Path | None = None, force: bool = False):
    """Write a HuggingFace directory (config.json, safetensors, tokenizer files) from MindSpore."""
    from .execute import execute
    from .outdir import check_out_dir
    check_out_dir(Path(out), force, [Path(src), *([Path(config)] if config else [])])
    return execute(plan_ms2hf(src, options, config), Path(out), force, Path(src))


__all__ = ["plan_ms2hf", "convert_ms2hf", "ConvertError", "Options", "plan_hf2ms", "convert_hf2ms", "__version__"]
