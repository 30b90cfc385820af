"""What a conversion did, for people and for scripts: the dry-run plan, the summary, and the
provenance record (conversion.json) that execute writes inside the output directory."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from ..core.sizes import human_bytes
from .hashing import Hashes
from .run_yaml import model_yaml, side_files

TEXT_TOKENIZERS = {"tokenizer.model", "tokenizer.json"}   # what MindFormers' tokenizer classes can be built from
from ..core.paths import resolved
from ..plan.lora import PEFT_FILE
from ..plan.plan import Plan, weights_dtype
from ..sources.hub import hub_origin
from ..core.version import __version__


@dataclass
class Result:
    out_dir: Path
    files: list[dict]
    record: dict
    seconds: float
    plan: Plan
    already_converted: bool = False   # OUT held this very conversion: nothing was written



def _relative(path: Path, root: Path) -> str:
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path.resolve())


def provenance(plan: Plan, outputs: list[dict], hashes: Hashes) -> dict:
    src = plan.source
    record = {
        "tool": "llama-convert", "version": __version__, "direction": plan.direction,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "mapping_table": {"name": plan.table.name, "file": plan.table.path.name, "sha256": plan.table.sha256},
        "options": plan.options.as_dict(),
        "source": {"dir": str(resolved(src.root)), **({"hub": hub} if (hub := hub_origin(src.root)) else {}),
                   "files": [hashes.record(p, _relative(p, src.root)) for p in src.input_files()]},
        "hashes": "sha256" if hashes.enabled else "skipped (--no-hash)",
        "outputs": outputs,
        "tensor_count": len(plan.tensors),
        "tensors": [pt.as_dict() for pt in plan.tensors],
        "skipped": plan.skipped,
        "config": {"ignored": plan.translation.ignored, "notes": plan.translation.notes},
        **({"widened": {"from": plan.widened_from, "to": plan.model_config["param_init_type"],
                        "reason": "--device CPU: MindSpore's CPU kernels have no half precision"}}
           if plan.widened_from else {}),
        **({"ranks": src.ranks} if src.ranks else {}),
    }
    if plan.lora is not None:
        record["adapter"] = adapter_json(plan)
    return record


def adapter_json(plan: Plan) -> dict | None:
    """What was done with a LoRA adapter: its rank, alpha and scale, the factors written, the weights merged."""
    if plan.lora is None:
        return None
    return {**plan.lora.record, "tensors": [t.as_dict() for t in plan.adapter_tensors],
            "merged_into": sorted(plan.merges)}


def plan_json(plan: Plan) -> dict:
    return {"dry_run": True, "source": str(plan.source.root), "options": plan.options.as_dict(),
            "weight_files": plan.weight_files, "tensor_count": len(plan.tensors), "total_bytes": plan.total_bytes,
            "tensors": [t.as_dict() for t in plan.tensors], "skipped": plan.skipped,
            "adapter": adapter_json(plan),
            "model_yaml": model_yaml(plan) if plan.direction == "hf2ms" else None,
            "extra_files": side_files(plan), "ignored_config_keys": plan.translation.ignored,
            "notes": plan.translation.notes}


def plan_text(plan: Plan) -> str:
    rows = [(t.name, "x".join(map(str, t.shape)), t.dtype + (f" (cast {t.cast})" if t.cast else ""),
             t.op + (" + LoRA" if any(x in plan.merges for x in t.sources) else ""), ", ".join(t.sources))
            for t in plan.tensors + plan.adapter_tensors]
    widths = [max(len(r[i]) for r in rows + [("name", "shape", "dtype", "op", "")]) for i in range(4)]
    files = plan.weight_files + ([PEFT_FILE] if plan.adapter_tensors else [])
    lines = [f"plan: {plan.source.root} -> {', '.join(files)} (dry run, nothing written)", ""]
    lines.append("  ".join(h.ljust(w) for h, w in zip(("name", "shape", "dtype", "op"), widths)) + "  sources")
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4])
    casts = sum(1 for t in plan.tensors if t.cast)
    lines += ["", f"total: {len(plan.tensors)} tensors, {human_bytes(plan.total_bytes, 2)}, {casts} cast, "
                  f"{len(plan.skipped)} source tensors skipped"]
    lines += [f"skipped: {s['name']}: {s['reason']}" for s in plan.skipped]
    lines += [f"note: {n}" for n in plan.translation.notes]
    for name, text in side_files(plan).items():
        lines += ["", f"{name}:", text]
    return "\n".join(lines)


def warnings(plan: Plan) -> list[str]:
    """What the user should know before relying on the output: said at conversion time, on stderr."""
    found = []
    if plan.direction == "hf2ms" and not {p.name for p in plan.source.tokenizer_files} & TEXT_TOKENIZERS:
        found.append(f"{plan.source.root} has no tokenizer (tokenizer.model or tokenizer.json), so the output's YAML "
                     "has no processor: MindFormers can run it on token ids (model.generate(ids), verify) but not on "
                     "text (Trainer.predict(input_data=...), llama-convert generate); put the model's tokenizer "
                     "files into the source directory and convert again")
    return found


def result_json(plan: Plan, result: Result) -> dict:
    return {"ok": True, "out_dir": str(result.out_dir), "format": plan.options.format,
            "tensor_count": len(plan.tensors), "bytes": plan.total_bytes, "seconds": round(result.seconds, 3),
            "files": result.files, "skipped": plan.skipped,
            "casts": [t.as_dict() for t in plan.tensors if t.cast], "notes": plan.translation.notes,
            "warnings": warnings(plan), "already_converted": result.already_converted}


def result_text(plan: Plan, result: Result) -> str:
    if result.already_converted:
        return (f"already converted: {result.out_dir} holds the conversion of {plan.source.root} with these options "
                "(same source files by sha256, same mapping table, every output present); nothing written "
                "(--force converts again)")
    casts = [t for t in plan.tensors if t.cast]
    lines = [f"converted {plan.source.root} -> {result.out_dir} in {result.seconds:.2f} s",
             f"  {len(plan.tensors)} tensors, {human_bytes(plan.total_bytes, 2)}, format {plan.options.format}"
             f"{', qkv_concat' if plan.model_config.get('qkv_concat') else ''}, dtype {weights_dtype(plan.tensors)}"
             f", tie_word_embeddings {plan.model_config.get('tie_word_embeddings', False)}"]
    if plan.parallel is not None:
        lines.append(f"  cut for {plan.parallel.ranks} cards ({plan.parallel.spec}): rank_0/ .. "
                     f"rank_{plan.parallel.ranks - 1}/, strategy/, YAML with use_parallel: true")
    if casts:
        kinds = sorted({t.cast for t in casts})
        lossless = all(t.dtype == "float32" for t in casts)  # every float we read widens to float32 exactly
        undone = plan.direction == "ms2hf" and all(t.dtype == plan.source.widened_from for t in casts)
        how = ("lossless widening" if lossless else
               "exact: narrowing back what hf2ms widened" if undone else "rounded to nearest-even")
        lines.append(f"  cast {len(casts)} tensors ({', '.join(kinds)}; {how}), recorded in conversion.json")
    lines += [f"  skipped {s['name']}: {s['reason']}" for s in plan.skipped]
    lines += [f"  note: {n}" for n in plan.translation.notes]
    lines.append("  files: " + ", ".join(f"{f['name']} ({human_bytes(f['size'], 2)})" for f in result.files))
    return "\n".join(lines)
