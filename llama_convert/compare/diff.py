"""diff: two checkpoints of either side compared name by name through their mapping tables.

What "the same" means. Both tensors are widened exactly (dtypes.widen: every value, the sign of
zero and every NaN payload kept) to the wider of their float dtypes, so a bf16 tensor and its
float32 copy compare by value. With atol 0 two tensors are the same only when every element is
bit-identical after that widening: -0 differs from +0, and a NaN equals only a NaN with the same
bits at the same position. With atol > 0 two finite elements may differ by at most atol (so -0
equals +0), while every element that is not finite on either side must still match bit for bit:
no tolerance hides a NaN or an infinity. strict_dtype makes a dtype difference a difference
(byte identity).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np

from ..core.dtypes import dtype as dtype_info, to_float32, widen
from ..core.options import HF2MSOptions, MS2HFOptions
from ..formats.payload import read_all
from ..formats.tensor import TensorRef
from ..plan.plan import build_ms2hf_plan, build_plan
from ..sources.detect import is_mindspore, open_mindspore
from ..sources.hf import open_hf_dir
from ..plan.lora import PEFT_FILE
from ..formats import safetensors as st

CHUNK = 1 << 22  # elements compared at once: the masks and float64 differences stay a few tens of MB


@dataclass
class View:
    """A checkpoint seen with HF names: name -> (shape, dtype, loader of the raw stored elements)."""
    side: str
    tensors: dict[str, tuple[tuple[int, ...], str, Callable[[], np.ndarray]]]


def hf_view(path: Path) -> View:
    """Either side through its table: a MindSpore checkpoint read backward into HF tensors (in the
    dtype it stores them: a norm widened to float32 stays float32), a HF one as the tensors its
    conversion would use (skipped buffers and tied twins left out)."""
    from ..output.materialize import Materializer
    path = Path(path)
    if is_mindspore(path):
        plan = build_ms2hf_plan(open_mindspore(path), MS2HFOptions())
        make = Materializer(plan)
        stored = [replace(pt, dtype=pt.source_dtypes[0]) if len(set(pt.source_dtypes)) == 1 else pt
                  for pt in plan.tensors + plan.adapter_tensors]   # LoRA factors under PEFT's names
        return View("ms", {pt.name: (pt.shape, pt.dtype, _loader(make, pt)) for pt in stored})
    plan = build_plan(open_hf_dir(path), HF2MSOptions())
    left_out = {s["name"] for s in plan.skipped}
    tensors = {n: (r.shape, r.dtype, _ref_loader(r)) for n, r in plan.source.tensors.items() if n not in left_out}
    adapter = path / PEFT_FILE   # what ms2hf writes of a LoRA checkpoint: compared too, never passed over
    if adapter.exists():
        tensors |= {n: (r.shape, r.dtype, _ref_loader(r)) for n, r in st.read_header(adapter)[0].items()}
    return View("hf", tensors)


def _loader(make, pt):
    def load() -> np.ndarray:
        return read_all(make(pt)).view(dtype_info(pt.dtype).storage)
    return load


def _ref_loader(ref: TensorRef):
    return lambda: ref.read().reshape(-1)


def _common(da: str, db: str) -> str | None:
    """The float dtype both widen into exactly, or None when one of them is not a float."""
    floats = ("bfloat16", "float16", "float32", "float64")
    if da not in floats or db not in floats:
        return da if da == db else None
    return "float64" if "float64" in (da, db) else "float32"


def _show(raw: np.ndarray, i: int, dtype: str) -> str:
    bits = raw.view(np.uint8).reshape(raw.size, -1)[i][::-1].tobytes().hex()  # little-endian storage
    value = float(to_float32(raw[i:i + 1], dtype)[0]) if dtype in ("bfloat16", "float16") else raw[i].item()
    return f"nan (0x{bits})" if value != value else repr(value)


def compare_elements(a: np.ndarray, da: str, b: np.ndarray, db: str, atol: float) -> dict:
    """Elements of two flat raw arrays of equal size compared as the module comment says:
    {"differing", "max_abs_diff" (over elements finite on both sides), "first_nonfinite_mismatch"}."""
    common = _common(da, db)
    if common is None:
        return {"differing": a.size, "max_abs_diff": None, "first_nonfinite_mismatch": None,
                "why": f"{da} and {db} cannot be compared by value"}
    is_float = common.startswith("float")
    differing, worst, first = 0, 0.0, None
    for at in range(0, a.size, CHUNK):
        x, y = (widen(r[at:at + CHUNK], d, common) if is_float else r[at:at + CHUNK] for r, d in ((a, da), (b, db)))
        bits_differ = x.view(f"u{x.itemsize}") != y.view(f"u{y.itemsize}")
        if not is_float:  # integers and booleans: equal or not
            differing += int(bits_differ.sum())
            continue
        finite = np.isfinite(x) & np.isfinite(y)
        with np.errstate(over="ignore"):
            gap = np.abs(x[finite].astype(np.float64) - y[finite].astype(np.float64))
        worst = max(worst, float(gap.max(initial=0.0)))
        odd = bits_differ & ~finite
        if first is None and odd.any():
            i = at + int(np.argmax(odd))
            first = {"index": i, "a": _show(a, i, da), "b": _show(b, i, db)}
        differing += int(odd.sum()) + (int(bits_differ[finite].sum()) if atol == 0 else int((gap > atol).sum()))
    return {"differing": differing, "max_abs_diff": worst, "first_nonfinite_mismatch": first}


def diff(a: Path, b: Path, atol: float = 0.0, strict_dtype: bool = False) -> dict:
    va, vb = hf_view(a), hf_view(b)
    only_a = sorted(set(va.tensors) - set(vb.tensors))
    only_b = sorted(set(vb.tensors) - set(va.tensors))
    rows = []
    for name in [n for n in va.tensors if n in vb.tensors]:
        (sa, da, la), (sb, db, lb) = va.tensors[name], vb.tensors[name]
        row = {"name": name, "shape_a": list(sa), "shape_b": list(sb), "dtype_a": da, "dtype_b": db,
               "elements": math.prod(sa), "differing": None, "max_abs_diff": None, "first_nonfinite_mismatch": None}
        if sa == sb:
            found = compare_elements(la(), da, lb(), db, atol)
            if found["first_nonfinite_mismatch"]:
                found["first_nonfinite_mismatch"]["index"] = [int(i) for i in np.unravel_index(
                    found["first_nonfinite_mismatch"]["index"], sa)]
            row |= found
        row["same"] = row["differing"] == 0 and (da == db or not strict_dtype)
        row["widened"] = row["same"] and da != db
        rows.append(row)
    return {"a": str(a), "b": str(b), "side_a": va.side, "side_b": vb.side,
            "same": not (only_a or only_b) and all(r["same"] for r in rows),
            "only_in_a": only_a, "only_in_b": only_b, "tensors": rows, "atol": atol, "strict_dtype": strict_dtype,
            "widened": sum(r["widened"] for r in rows), "differing_tensors": sum(not r["same"] for r in rows)}


def diff_text(r: dict) -> str:
    """The diff report for a person: the verdict, then one line per name or tensor that differs."""
    if not r["same"]:
        verdict = f"DIFFERENT: {r['differing_tensors']} of {len(r['tensors'])} tensors differ"
        if r["only_in_a"] or r["only_in_b"]:
            verdict += f", {len(r['only_in_a']) + len(r['only_in_b'])} names on one side only"
    elif r["widened"]:
        kinds = sorted({f"{t['dtype_a']} vs {t['dtype_b']}" for t in r["tensors"] if t["widened"]})
        verdict = f"same values; {r['widened']} tensors widened ({', '.join(kinds)}; --strict-dtype to count that)"
    else:
        verdict = "same"
    lines = [f"diff {r['a']} ({r['side_a']}) vs {r['b']} ({r['side_b']}): {verdict}"]
    lines += [f"  only in A: {n}" for n in r["only_in_a"]] + [f"  only in B: {n}" for n in r["only_in_b"]]
    for t in r["tensors"]:
        if t["same"]:
            continue
        if t["shape_a"] != t["shape_b"]:
            what = f"shape {t['shape_a']} vs {t['shape_b']}"
        elif t.get("why"):
            what = t["why"]
        elif t["differing"]:
            what = f"{t['differing']} of {t['elements']} elements differ, max_abs_diff {t['max_abs_diff']:.6g}"
            if r["atol"]:
                what += f" (atol {r['atol']:g})"
            if t["first_nonfinite_mismatch"]:
                m = t["first_nonfinite_mismatch"]
                what += f"; first non-finite mismatch at {m['index']}: {m['a']} vs {m['b']}"
        else:
            what = "same values"
        if t["dtype_a"] != t["dtype_b"]:
            what += f"; dtype {t['dtype_a']} vs {t['dtype_b']}" + (" (--strict-dtype)" if r["strict_dtype"] else "")
        lines.append(f"  {t['name']}: {what}")
    lines.append(f"  {len(r['tensors'])} tensors compared" + (f", atol {r['atol']:g}" if r["atol"] else ", bit for bit"))
    return "\n".join(lines)
