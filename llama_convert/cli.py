"""The `llama-convert` command: a thin click layer over the library API.

Exit codes: 0 success, 1 a check found a difference (verify, diff), 2 bad input or usage (a missing
optional dependency included), 3 a bug of ours. A reader of stdout or stderr that goes away does not
change them: the work finishes and the command exits as the work ended.
"""
from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import click
import dataclasses

from .core.version import __version__
from .core.errors import printable
from .core.sizes import human_bytes
from .bulk.options import BulkOptions
from .core.options import Flag, GenerateOptions, HF2MSOptions, MS2HFOptions, SourceOptions, flags
from .console.exits import ending, sigterm_raises
from .console.streams import standard_streams
from .core.signals import Terminated
from .verify.options import VerifyOptions


def _echo(text: str = "", err: bool = False, nl: bool = True) -> None:
    """Print for a person or a script: a path's non-UTF-8 bytes as \\xNN, whatever the locale."""
    click.echo(printable(text), err=err, nl=nl)


class _Group(click.Group):
    def main(self, *args, **kwargs):
        restore = standard_streams()
        try:
            return super().main(*args, **kwargs)
        finally:
            restore()

    def invoke(self, ctx):
        # Every ending is console/exits.py's (shared with bulk's row runner); only click's usage errors
        # are the CLI's own. sys.exit, not a return: click's Exit must not be mistaken for an error.
        with sigterm_raises():
            try:
                return super().invoke(ctx)
            except click.UsageError as e:  # click's own report is several lines; scripts grep one
                where = f"{e.ctx.info_name}: " if e.ctx and e.ctx.parent else ""
                hint = f" (see '{e.ctx.command_path} --help')" if e.ctx else ""
                _echo(f"llama-convert: error: {where}{' '.join(e.format_message().split())}{hint}", err=True)
                sys.exit(2)
            except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
                raise
            except (Exception, KeyboardInterrupt, Terminated) as e:
                code, line = ending(e, f"llama-convert {ctx.invoked_subcommand}")
                _echo(line, err=True)
                sys.exit(code)


def _tolerance(ctx, param, value):
    if not math.isfinite(value) or value < 0:
        raise click.BadParameter(f"{value} is not a tolerance; give a finite number >= 0")
    return value


class _FlagType(click.ParamType):
    """A declared option's values, read by its own parser (core/options.py) as a manifest reads them."""

    def __init__(self, flag: Flag):
        self.flag = flag
        self.name = "/".join(flag.choices) if flag.choices else (flag.metavar or "VALUE")

    def get_metavar(self, param, ctx=None) -> str:
        return f"[{'|'.join(self.flag.choices)}]" if self.flag.choices else (self.flag.metavar or "VALUE")

    def shell_complete(self, ctx, param, incomplete):
        from click.shell_completion import CompletionItem
        return [CompletionItem(c) for c in self.flag.choices if c.lower().startswith(incomplete.lower())]

    def convert(self, value, param, ctx):
        try:
            return self.flag.parse(value)
        except ValueError as e:
            self.fail(str(e), param, ctx)


def _declared(cls: type, skip: tuple[str, ...] = ()):
    """The click options of every option `cls` declares (core/options.py), in declaration order. Their
    click default is None, so that an option not given takes the dataclass's own default: the default
    is declared once too, and --help shows it."""
    fields = {f.name: f for f in dataclasses.fields(cls)}

    def one(name: str, flag: Flag):
        dash = (flag.name or name).replace("_", "-")
        default = fields[name].default
        shown = flag.default_text or (None if default in (None, dataclasses.MISSING) or isinstance(default, bool)
                                      else _shown_default(cls, name, default))
        if shown is None and (flag.negatable or flag.tri_state) and isinstance(default, bool):
            shown = f"--{dash}" if default else f"--no-{dash}"
        help_text = flag.help + (f" [default: {shown}]" if shown else "")
        if fields[name].type in ("bool", "bool | None"):
            if flag.negatable or flag.tri_state:
                return click.option(f"--{dash}/--no-{dash}", name, default=None, help=help_text)
            return click.option(f"--{dash}", name, is_flag=True, default=None, help=help_text)
        return click.option(f"--{dash}", name, type=_FlagType(flag), default=None, multiple=flag.multiple,
                            help=help_text)

    def decorate(command):
        for name, flag in reversed(list(flags(cls).items())):
            if name not in skip:
                command = one(name, flag)(command)
        return command
    return decorate


def _shown_default(cls: type, name: str, default) -> str:
    return human_bytes(default) if name.endswith(("_size", "_budget")) and isinstance(default, int) else str(default)


def _given(cls: type, values: dict):
    """The options object for what the command line gave: options not given keep their declared defaults."""
    return cls(**{k: v for k, v in values.items() if v is not None and v != ()})


def _source(values: dict) -> SourceOptions:
    """SourceOptions taken out of a command's options (the rest stay: they are the command's own)."""
    return _given(SourceOptions, {name: values.pop(name) for name in flags(SourceOptions)})


def _show_versions(ctx, param, value) -> None:
    if not value or ctx.resilient_parsing:
        return
    from .console.quiet import versions
    _echo(f"llama-convert {__version__}")
    for name, version in versions().items():
        _echo(f"  {name} {version or 'not installed'}")
    ctx.exit()


def _verbosity(command):
    """-q/--quiet and -v/--verbose, the same on every command. Their callbacks run while the command
    line is parsed, before the command imports MindSpore or MindFormers."""
    def quiet(ctx, param, value):
        ctx.meta["llama_convert.quiet"] = value
        return value

    def verbose(ctx, param, value):
        if value and ctx.meta.get("llama_convert.quiet"):
            raise click.UsageError("-q/--quiet and -v/--verbose contradict each other; give one", ctx)
        from .console.quiet import settle
        settle(value)
        return value
    command = click.option("-v", "--verbose", is_flag=True, expose_value=False, callback=verbose,
                           help="Let MindSpore and MindFormers log as they do by default.")(command)
    return click.option("-q", "--quiet", is_flag=True, expose_value=False, callback=quiet, is_eager=True,
                        help="No progress and no summary: errors only (and --json's output).")(command)


def _quiet() -> bool:
    return bool(click.get_current_context().meta.get("llama_convert.quiet"))


def _progress():
    from .console.progress import for_terminal
    return for_terminal(_quiet())


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_show_versions,
              help="Show our version and those of mindspore, mindformers, transformers and torch, then exit.")
def main() -> None:
    """Convert Llama checkpoints between HuggingFace and MindSpore/MindFormers, and prove nothing changed.

    \b
    Typical use:
      llama-convert hf2ms ./Llama-3.2-1B ./llama-ms            # MindSpore .ckpt + llama_config.yaml
      llama-convert hf2ms ./Llama-3.2-1B ./out --dry-run       # show the plan, write nothing

    Exit status: 0 success, 1 a check failed, 2 bad input or usage (a missing optional dependency
    too), 3 an internal error (a bug). A closed or abandoned stdout/stderr does not change it.
    Shell completion: eval "$(_LLAMA_CONVERT_COMPLETE=bash_source llama-convert)" (zsh_source, fish_source).
    """


_FORCE = click.option("--force", is_flag=True,
                      help="Replace OUT_DIR if it is empty, a symlink (the link only), or an earlier llama-convert "
                           "output holding exactly the files its conversion.json lists.")
_JSON = click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary on stdout.")


def _show_plan(plan, as_json: bool) -> None:
    from .output import report
    _echo(json.dumps(report.plan_json(plan), indent=2) if as_json else report.plan_text(plan))


@main.command()
@click.argument("src_dir", type=click.Path(path_type=Path))
@click.argument("out_dir", type=click.Path(path_type=Path))
@_declared(HF2MSOptions)
@_declared(SourceOptions)
@click.option("--dry-run", is_flag=True, help="Print the plan and the YAML; read no tensor data, write nothing.")
@_FORCE
@click.option("--verify", "then_verify", is_flag=True,
              help="After converting, run `verify` with its defaults on CPU; exit 1 if parity fails.")
@_JSON
@_verbosity
def hf2ms(src_dir: Path, out_dir: Path, dry_run: bool, force: bool, then_verify: bool, as_json: bool,
          **options) -> None:
    """Convert the HuggingFace checkpoint in SRC_DIR into a MindFormers directory OUT_DIR.

    SRC_DIR may also be a hub repo id (org/name, at --revision) found in the local hub cache, fetched
    only with --download, or a hub cache folder models--ORG--NAME.

    \b
    OUT_DIR will hold: model.ckpt (or model*.safetensors), llama_config.yaml (a
    MindFormers run configuration for run_mode predict), conversion.json (provenance:
    hashes, options, skipped tensors) and the tokenizer files of SRC_DIR.

    \b
    Sources: model.safetensors, sharded safetensors with index, pytorch_model.bin (+ index).
    Architectures: Llama, Qwen2, Mistral (see `--table`; the README lists what each proves).
    """
    import llama_convert as api
    from .output import report

    src_dir = api.resolve_source(src_dir, _source(options))
    opts = _given(HF2MSOptions, options)
    if dry_run:
        _show_plan(api.plan_hf2ms(src_dir, opts), as_json)
        return
    with _progress() as progress:
        result = api.convert_hf2ms(src_dir, out_dir, opts, force=force, progress=progress)
    summary = report.result_json(result.plan, result)
    if not _quiet() and not as_json:   # --json carries them as "warnings"
        for warning in summary["warnings"]:
            _echo(f"llama-convert: warning: {warning}", err=True)
    if not then_verify:
        if as_json or not _quiet():
            _echo(json.dumps(summary, indent=2) if as_json else report.result_text(result.plan, result))
        return
    from .verify import report_text, sanitize
    checked = api.verify_conversion(src_dir, out_dir, VerifyOptions(adapter=opts.adapter) if opts.adapter else None)
    if as_json:
        _echo(json.dumps({**summary, "verify": sanitize(checked.as_dict())}, indent=2))
    elif not _quiet():
        _echo(report.result_text(result.plan, result) + "\n\n" + report_text(checked))
    sys.exit(0 if checked.passed else 1)


@main.command()
@click.argument("ms_dir", type=click.Path(path_type=Path))
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option("--config", "config", type=click.Path(path_type=Path), default=None,
              help="MindFormers YAML with model.model_config [default: MS_DIR/llama_config.yaml].")
@_declared(MS2HFOptions)
@click.option("--dry-run", is_flag=True, help="Print the plan and config.json; write nothing.")
@_FORCE
@_JSON
@_verbosity
def ms2hf(ms_dir: Path, out_dir: Path, config: Path | None, dry_run: bool, force: bool, as_json: bool,
          **options) -> None:
    """Convert a MindSpore checkpoint (MS_DIR: a directory, .ckpt or .safetensors) back to HuggingFace.

    \b
    MS_DIR may also be a training run's output/ (checkpoint/rank_{k}/ + strategy/), its
    checkpoint/, or a directory of rank_{k}/ slices: the ranks' slices are merged as they are
    read, by the strategy, from the save MindFormers would resume from (or --step).

    \b
    Fused w_qkv / w_gate_hidden are split by the inverse ops of the same mapping table;
    tied models get no lm_head. Optimizer state and training bookkeeping (adam_m.*,
    adam_v.*, accu_grads.*, global_step, learning_rate, ...) are skipped and reported.
    OUT_DIR gets config.json (architectures and model_type from the table),
    generation_config.json, model*.safetensors (+ index), tokenizer files and conversion.json.
    """
    import llama_convert as api
    from .output import report

    opts = _given(MS2HFOptions, options)
    if dry_run:
        _show_plan(api.plan_ms2hf(ms_dir, opts, config), as_json)
        return
    with _progress() as progress:
        result = api.convert_ms2hf(ms_dir, out_dir, opts, config, force=force, progress=progress)
    if as_json or not _quiet():
        _echo(json.dumps(report.result_json(result.plan, result), indent=2) if as_json
                   else report.result_text(result.plan, result))


@main.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@_verbosity
def inspect(path: Path, as_json: bool) -> None:
    """List the tensors of PATH: a HF directory, a MindSpore directory, a .ckpt, or a .safetensors file.

    Shows name, shape, dtype and bytes, with totals, read from headers where the format allows
    (safetensors, ckpt); pytorch .bin files are memory-mapped.
    """
    import llama_convert as api
    info = api.inspect_checkpoint(path)
    if as_json:
        _echo(json.dumps(info, indent=2))
        return
    rows = info["tensors"]
    width = max([len(r["name"]) for r in rows] + [4])
    _echo(f"{info['path']} ({info['side'].upper()} checkpoint)")
    _echo(f"{'name':<{width}}  {'shape':<16}  {'dtype':<9}  {'bytes':>12}")
    for r in rows:
        _echo(f"{r['name']:<{width}}  {'x'.join(map(str, r['shape'])):<16}  {r['dtype']:<9}  {r['bytes']:>12,}")
    by = ", ".join(f"{k} {v:,} B" for k, v in info["bytes_by_dtype"].items())
    _echo(f"total: {info['tensor_count']} tensors, {info['total_bytes']:,} bytes ({by})")


@main.command()
@click.argument("a", type=click.Path(path_type=Path))
@click.argument("b", type=click.Path(path_type=Path))
@click.option("--atol", type=float, default=0.0, show_default=True, callback=_tolerance,
              help="Largest difference between two finite elements still called equal: a finite number >= 0 "
                   "(inf and nan are refused: they would call any two checkpoints equal). NaN and infinities "
                   "must match bit for bit whatever --atol says.")
@click.option("--strict-dtype", is_flag=True,
              help="A dtype difference is a difference (byte identity); by default an exact widening, such as "
                   "bfloat16 stored as float32, compares by value.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@_verbosity
def diff(a: Path, b: Path, atol: float, strict_dtype: bool, as_json: bool) -> None:
    """Compare two checkpoints of either side through the mapping table.

    A MindSpore directory is read as the HF tensors it maps back to (fused tensors split), so
    a HF model and its conversion compare name by name. Tensors compare by value after exact
    widening: with --atol 0 (the default) every element must be bit-identical (-0 and +0
    differ, NaNs must match bit for bit). Reports names missing on either side, shape
    differences, and per tensor how many elements differ, the largest difference and the
    first NaN or infinity that does not match.

    Exit status: 0 the same, 1 they differ, 2 bad input.
    """
    import llama_convert as api
    from .compare.diff import diff_text
    r = api.diff_checkpoints(a, b, atol, strict_dtype)
    if as_json:
        _echo(json.dumps(r, indent=2))
    elif not _quiet():
        _echo(diff_text(r))
    sys.exit(0 if r["same"] else 1)


@main.command()
@click.argument("hf_dir", type=click.Path(path_type=Path))
@click.argument("ms_dir", type=click.Path(path_type=Path))
@_declared(VerifyOptions)
@_declared(SourceOptions)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@click.option("--junit", type=click.Path(path_type=Path), default=None, metavar="FILE",
              help="Also write the result as JUnit XML for CI: config parity, the logits and each compared place "
                   "as test cases, a failing one with its place and numbers.")
@click.option("--plot", type=click.Path(path_type=Path), default=None, metavar="FILE",
              help="Also draw each place's max and mean difference against the limit, as FILE.png or FILE.svg "
                   "(needs the plot extra).")
@_verbosity
def verify(hf_dir: Path, ms_dir: Path, as_json: bool, junit: Path | None, plot: Path | None, **options) -> None:
    """Prove that the MindFormers model in MS_DIR computes what the HF model in HF_DIR computes.

    \b
    Runs transformers' class for the architecture (LlamaForCausalLM, Qwen2ForCausalLM, ...;
    float32, CPU) and MindFormers' LlamaForCausalLM (built from MS_DIR/llama_config.yaml,
    checkpoint loaded strictly) on the same seeded tokens. At every place (embedding, layer.N,
    final_norm, the logits as lm_head) MindSpore's distance from HF run in float64 must stay within
    8 x HF float32's own (its rounding noise on this model and batch); a NaN or infinity on either
    side fails. The first place that fails is named. --seq-len is capped at the YAML's seq_length,
    the longest input the model was converted for. The configs are compared too: each forward-pass
    key of MS_DIR's model_config that differs from HF_DIR's config translated through the table
    fails verify, by name.

    \b
    Streamed mode (--stream, or automatic when the whole models would not fit in memory) runs
    the same modules stage by stage (embedding, each decoder layer, final norm, lm_head) with
    only that stage's weights in memory, so any size verifies in a few GB. --generate needs
    the whole models. The report says which mode ran and its peak RSS.

    Exit status: 0 parity holds, 1 it does not, 2 bad input.
    """
    import llama_convert as api
    from .verify import report_text, sanitize
    progress = _progress()
    hf_dir = api.resolve_source(hf_dir, _source(options))
    _report_files(junit, plot, [hf_dir, ms_dir])  # a wrong report path is found before a minute of work
    r = api.verify_conversion(hf_dir, ms_dir, _given(VerifyOptions, options), on_stage=progress.stage)
    progress.close()
    if junit:
        from .verify.junit import write_junit
        write_junit(r, junit, hf_dir, ms_dir)
    if plot:
        from .verify.plot import write_plot
        write_plot(r, plot, f"{hf_dir} -> {ms_dir}")
    if as_json or not _quiet():
        _echo(json.dumps(sanitize(r.as_dict()), indent=2) if as_json else report_text(r))
    sys.exit(0 if r.passed else 1)


def _report_files(junit: Path | None, plot: Path | None, checkpoints: list[Path]) -> None:
    from .core.paths import report_target
    if junit:
        report_target(junit, "--junit", checkpoints)
    if plot:
        from .core.extras import require
        from .verify.plot import plot_format
        report_target(plot, "--plot", checkpoints)
        plot_format(plot)
        require("matplotlib", "verify --plot")


@main.command()
@click.argument("out_dir", type=click.Path(path_type=Path))
@_declared(GenerateOptions)
@_verbosity
def generate(out_dir: Path, **options) -> None:
    """Generate text with MindFormers from OUT_DIR's YAML, on the device it names: the smoke test after
    converting (`llama-convert generate ./llama-ms --prompt "Once upon a time"`). Prints the prompt and
    its continuation. Needs the tokenizer files the source shipped.

    Exit status: 0 text generated, 2 bad input (no tokenizer, a missing extra).
    """
    import llama_convert as api
    opts = _given(GenerateOptions, options)
    if opts.prompt is None:
        raise click.UsageError("give --prompt TEXT")
    _echo(api.generate_text(out_dir, opts.prompt, opts.max_new_tokens))


class _Bulk(click.Group):
    """`bulk MANIFEST ...` runs a manifest; `bulk plan ...` writes one. Anything but `plan` is a manifest."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = ["run", *args]
        return super().parse_args(ctx, args)


@main.group(cls=_Bulk)
def bulk() -> None:
    """Convert many checkpoints from a manifest: resumable, memory-aware, locally or on Ray.

    \b
      llama-convert bulk models.jsonl --jobs 2          # run (same as `bulk run`)
      llama-convert bulk plan --from-dir ./hf ./ms > models.jsonl
      llama-convert bulk plan --from-hf-cache ./ms > models.jsonl

    Options of a run: `llama-convert bulk run --help`.
    """


class _BulkScreen:
    """What bulk shows while it runs. A line per finished row; on a terminal also, below them, the rows
    running now with their phase and a bar of rows done, redrawn as they change. Rows finish and change
    phase on worker threads: one lock keeps lines whole."""

    def __init__(self, live: bool):
        import threading
        self.live, self.lock, self.running, self.done, self.total = live, threading.Lock(), {}, 0, 0

    def _status(self) -> str:
        k, n = self.done, self.total
        bar = "#" * (30 * k // max(n, 1)) + "." * (30 - 30 * k // max(n, 1))
        now = ", ".join(f"{row_id} ({phase})" for row_id, phase in self.running.items())
        return f"[{k}/{n or '?'}] {bar}" + (f" running: {now}" if now else "")

    def _redraw(self) -> None:
        if self.live:
            _echo("\r\033[K" + self._status()[:max(20, shutil.get_terminal_size().columns - 1)], err=True, nl=False)

    def phase(self, row_id: str, phase: str) -> None:
        with self.lock:
            if phase != "running" or row_id not in self.running:
                self.running[row_id] = phase if phase != "running" else "starting"
            self._redraw()

    def finished(self, k: int, n: int, row: dict) -> None:
        with self.lock:
            self.done, self.total = k, n
            self.running.pop(row["id"], None)
            secs = sum((row.get("seconds") or {}).values())
            why = f" ({row['reason']})" if row["status"] in ("failed", "invalid", "verify_failed") else ""
            _echo(("\r\033[K" if self.live else "") + f"[{k}/{n}] {row['id']} {row['status']} {secs:.1f}s{why}",
                  err=True)
            self._redraw()

    def close(self) -> None:
        if self.live:
            _echo("\r\033[K", err=True, nl=False)


@bulk.command("run")
@click.argument("manifest", type=click.Path(path_type=Path))
@_declared(BulkOptions)
@click.option("--dry-run", is_flag=True, help="Say what each row would do and need; run nothing.")
@_JSON
@_verbosity
def bulk_run(manifest: Path, dry_run: bool, as_json: bool, **options) -> None:
    """Run every row of MANIFEST (JSONL, CSV or YAML); skip rows whose conversion.json says they are done.

    \b
    Rows: src, out, optional id, direction (hf2ms|ms2hf), verify, and the direction's
    options by long name with _ (format, dtype, qkv_concat, untie, seq_length,
    max_shard_size, device, hash, table; ms2hf: config). Relative paths are relative
    to MANIFEST.

    Exit status: 0 every row converted or skipped, 1 a verify failed, 2 a row failed or was invalid.
    """
    import llama_convert as api
    from .bulk.journal import table_text

    opts = _given(BulkOptions, options)
    if dry_run:
        plan = api.plan_bulk(manifest, opts)
        if as_json:
            _echo(json.dumps(plan, indent=2))
        else:
            for r in plan["rows"]:
                _echo(f"{r['id']}: {r['action']} ({r['reason']}), needs {human_bytes(r['memory_estimate'], 2)}")
        sys.exit(plan["exit_code"])
    live = sys.stderr.isatty() and not _quiet()
    screen = _BulkScreen(live)
    report = api.run_bulk(manifest, opts, on_row=None if _quiet() else screen.finished,
                          on_phase=screen.phase if live else None)
    screen.close()
    if as_json:
        _echo(json.dumps(report, indent=2))
    elif not _quiet():
        _echo(table_text(report) + f"\nreport: {report['report']}")
    sys.exit(report["exit_code"])


@bulk.command("plan")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option("--from-hf-cache", "from_cache", is_flag=True,
              help="PATHS: [CACHE_DIR] OUT_ROOT; every model snapshot of the hub cache (refs/main read offline).")
@click.option("--from-dir", "from_dir", is_flag=True, help="PATHS: ROOT OUT_ROOT; every model directory under ROOT.")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None, help="Write the manifest here [default: stdout].")
def bulk_plan(paths: tuple[Path, ...], from_cache: bool, from_dir: bool, output: Path | None) -> None:
    """Write a JSONL manifest for `bulk`: from a HF hub cache or from a directory of models."""
    from .bulk import sources
    if from_cache == from_dir:
        raise click.UsageError("give one of --from-hf-cache [CACHE_DIR] OUT_ROOT or --from-dir ROOT OUT_ROOT")
    if from_cache and len(paths) in (1, 2):
        cache = paths[0] if len(paths) == 2 else sources.default_hf_cache()
        text = sources.manifest_text(sources.rows_from_hf_cache(cache, paths[-1]), f"the hub cache {cache}")
    elif from_dir and len(paths) == 2:
        text = sources.manifest_text(sources.rows_from_dir(*paths), str(paths[0]))
    else:
        raise click.UsageError("--from-hf-cache takes [CACHE_DIR] OUT_ROOT, --from-dir takes ROOT OUT_ROOT")
    if output:
        output.write_text(text)
    else:
        _echo(text, nl=False)


if __name__ == "__main__":
    main()
