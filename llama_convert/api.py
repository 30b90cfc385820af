"""The library API, one function per thing a user does; the CLI is a thin skin over it, and the package's
front door (llama_convert/__init__.py) exports it. Each function imports its rooms when called: a
conversion from bf16 safetensors never imports numpy, torch or MindSpore."""
from __future__ import annotations

from pathlib import Path

from .bulk.options import BulkOptions
from .core.options import HF2MSOptions, MS2HFOptions, SourceOptions


def resolve_source(src: str | Path, source: SourceOptions | None = None) -> Path:
    """The local HF directory SRC names: a directory, a hub cache folder models--ORG--NAME (its snapshot at
    source.revision), or a hub repo id found in the local hub cache (fetched only with source.download)."""
    from .sources.hub import resolve_source as resolve
    source = source or SourceOptions()
    return resolve(src, source.revision, source.download)


def plan_hf2ms(src: str | Path, options: HF2MSOptions | None = None, source: SourceOptions | None = None):
    """The full conversion plan from headers alone: nothing is read beyond headers, nothing written.
    SRC may be a hub repo id or cache folder (see resolve_source)."""
    from .sources.hf import open_hf_dir
    from .plan.plan import build_plan
    return build_plan(open_hf_dir(resolve_source(src, source)), options or HF2MSOptions())


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
                  progress=None, source: SourceOptions | None = None):
    """Convert a HF directory (or hub repo id, see resolve_source) into a MindFormers directory; returns a
    report.Result (its .plan included)."""
    from .output.out_dir import check_out_dir
    src = resolve_source(src, source)
    if not force and (done := _already_converted(src, Path(out), options)):
        return done
    check_out_dir(Path(out), force, [src])  # before reading anything: a wrong OUT is the cheaper error
    return write(plan_hf2ms(src, options), out, force, src, progress)


def _already_converted(src: Path, out: Path, options: HF2MSOptions | None):
    """A report.Result for OUT when its conversion.json records this very conversion, as bulk's done-check
    decides it (same version, table, options, source files by sha256, outputs present), else None. A record
    without source hashes (--no-hash) cannot show the sources are the same: then it is not."""
    from .bulk.done import Expected, not_done_reason
    from .core.errors import ConvertError
    from .formats.files import parse_json_object, read_small
    from .output.report import Result
    record_path = out / "conversion.json"
    if not out.is_dir() or not record_path.is_file():
        return None
    plan = plan_hf2ms(src, options)
    if not plan.options.hash or not_done_reason(Expected.of(plan), src, out) is not None:
        return None
    try:
        record = parse_json_object(read_small(record_path, "conversion.json"), record_path, "conversion.json")
    except ConvertError:
        return None
    if record.get("hashes") != "sha256":
        return None
    return Result(out, record.get("outputs", []), record, 0.0, plan, already_converted=True)


def convert_ms2hf(src: str | Path, out: str | Path, options: MS2HFOptions | None = None,
                  config: str | Path | None = None, force: bool = False, progress=None):
    """Write a HuggingFace directory (config.json, safetensors, tokenizer files) from MindSpore."""
    from .output.out_dir import check_out_dir
    check_out_dir(Path(out), force, [Path(src), *([Path(config)] if config else [])])
    return write(plan_ms2hf(src, options, config), out, force, src, progress)


def verify_conversion(hf_dir: str | Path, ms_dir: str | Path, options=None, on_stage=None,
                      source: SourceOptions | None = None):
    """Parity of MS_DIR's MindFormers model with HF_DIR's transformers model; a verify.VerifyReport.
    HF_DIR may be a hub repo id or cache folder (see resolve_source).
    on_stage(name, index, total) is called as each stage finishes (see verify.verify).
    (Not named `verify`: that is the submodule's name, which importing it would rebind.)"""
    from .console.quiet import frameworks_quiet
    from .core.extras import needed_for
    hf_dir = resolve_source(hf_dir, source)
    with needed_for("verify", "verify"), frameworks_quiet():  # torch, transformers, mindspore, mindformers: imported as it runs
        if options is not None and options.adapter:
            from .verify.adapter import verify_adapter
            return verify_adapter(Path(hf_dir), Path(ms_dir), options)
        from .verify import verify as run
        return run(hf_dir, ms_dir, options, on_stage)


def generate_text(out_dir: str | Path, prompt: str, max_new_tokens: int | None = None) -> str:
    """MindFormers' generation from OUT_DIR's YAML as it stands, on the device it names: the prompt and
    its continuation, as text."""
    from .console.quiet import frameworks_quiet
    from .core.extras import needed_for
    with needed_for("generate", "verify"), frameworks_quiet():
        from .verify.generate import generate_text as run
        return run(Path(out_dir), prompt, max_new_tokens)


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


def run_bulk(manifest: str | Path, options=None, on_row=None, on_phase=None) -> dict:
    """Run every row of MANIFEST that is not done; returns the report (also written as bulk-report.json).
    `options`: a BulkOptions; `on_row(k, n, row)` hears each finished row, `on_phase(id, phase)` each row
    starting ("running") and its phases ("convert", "verify"; local executor)."""
    from .bulk.driver import run_bulk as run
    return run(Path(manifest), options or BulkOptions(), on_row, on_phase)
