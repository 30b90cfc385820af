"""The library API, one function per thing a user does; the CLI is a thin skin over it, and the package's
front door (llama_convert/__init__.py) exports it. Each function imports its rooms when called: a
conversion from bf16 safetensors never imports numpy, torch or MindSpore."""
from __future__ import annotations

from pathlib import Path

from .bulk.options import BulkOptions
from .core.options import HF2MSOptions, MS2HFOptions


def plan_hf2ms(src: str | Path, options: HF2MSOptions | None = None):
    """The full conversion plan from headers alone: nothing is read beyond headers, nothing written."""
    from .sources.hf import open_hf_dir
    from .plan.plan import build_plan
    return build_plan(open_hf_dir(Path(src)), options or HF2MSOptions())


def plan_ms2hf(src: str | Path, options: MS2HFOptions | None = None, config: str | Path | None = None):
    """The plan back to HF from a MindSpore checkpoint and its MindFormers YAML (headers only)."""
    from .sources.detect import open_mindspore
    from .plan.plan import build_ms2hf_plan
    options = options or MS2HFOptions()
    # getattr: build_ms2hf_plan names the wrong options class when it is given one
    return build_ms2hf_plan(open_mindspore(Path(src), Path(config) if config else None, getattr(options, "step", None),
                                           getattr(options, "strategy", None)), options)


def write(plan, out: str | Path, force: bool = False, source: str | Path | None = None, progress=None):
    """Carry out a plan into OUT, all or nothing; returns a report.Result. `source` is the path the
    user named (OUT may not overlap it); by default the plan's source directory. `progress`: a
    progress.Progress to report to (progress.for_terminal() picks the display), by default none."""
    from .output.execute import execute
    return execute(plan, Path(out), force, Path(source) if source is not None else None, progress)


def convert_hf2ms(src: str | Path, out: str | Path, options: HF2MSOptions | None = None, force: bool = False,
                  progress=None):
    """Convert a HF directory into a MindFormers directory; returns a report.Result (its .plan included)."""
    from .output.out_dir import check_out_dir
    check_out_dir(Path(out), force, [Path(src)])  # before reading anything: a wrong OUT is the cheaper error
    return write(plan_hf2ms(src, options), out, force, src, progress)


def convert_ms2hf(src: str | Path, out: str | Path, options: MS2HFOptions | None = None,
                  config: str | Path | None = None, force: bool = False, progress=None):
    """Write a HuggingFace directory (config.json, safetensors, tokenizer files) from MindSpore."""
    from .output.out_dir import check_out_dir
    check_out_dir(Path(out), force, [Path(src), *([Path(config)] if config else [])])
    return write(plan_ms2hf(src, options, config), out, force, src, progress)


def verify_conversion(hf_dir: str | Path, ms_dir: str | Path, options=None, on_stage=None):
    """Parity of MS_DIR's MindFormers model with HF_DIR's transformers model; a verify.VerifyReport.
    on_stage(name, index, total) is called as each stage finishes (see verify.verify).
    (Not named `verify`: that is the submodule's name, which importing it would rebind.)"""
    from .core.extras import needed_for
    with needed_for("verify", "verify"):  # torch, transformers, mindspore, mindformers: imported as it runs
        from .verify import verify as run
        return run(hf_dir, ms_dir, options, on_stage)


def inspect_checkpoint(path: str | Path) -> dict:
    """The tensors of a HF or MindSpore directory, or of one checkpoint file, from headers."""
    from .compare.inspect import inspect
    return inspect(Path(path))


def diff_checkpoints(a: str | Path, b: str | Path, atol: float = 0.0, strict_dtype: bool = False) -> dict:
    """Two checkpoints of either side compared name by name through their mapping tables, by value
    after exact widening (see compare.py for what "the same" means; strict_dtype: byte identity)."""
    from .compare.diff import diff
    return diff(Path(a), Path(b), atol, strict_dtype)


def plan_bulk(manifest: str | Path, options=None) -> dict:
    """What `bulk` would do with each row of MANIFEST (done or why not, memory estimate); runs nothing."""
    from .bulk.driver import dry_run
    return dry_run(Path(manifest), options or BulkOptions())


def run_bulk(manifest: str | Path, options=None, on_row=None) -> dict:
    """Run every row of MANIFEST that is not done; returns the report (also written as bulk-report.json).
    `options`: a BulkOptions; `on_row(k, n, row)` hears each finished row."""
    from .bulk.driver import run_bulk as run
    return run(Path(manifest), options or BulkOptions(), on_row)
