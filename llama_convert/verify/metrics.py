"""Numbers compared at each place: non-finite values, distances from the float64 reference against
the float32 noise, and the relative logits metrics reported beside them. numpy only."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .options import UNIT_ROUNDOFF

KINDS = ("nan", "+inf", "-inf")


def census(x: np.ndarray) -> dict | None:
    """How many NaN, +inf and -inf values x holds and where the first one is (batch, token, index),
    or None when every value is finite."""
    bad = ~np.isfinite(x)
    if not bad.any():
        return None
    first = np.unravel_index(int(np.argmax(bad)), x.shape)
    return {"nan": int(np.isnan(x).sum()), "+inf": int(np.isposinf(x).sum()), "-inf": int(np.isneginf(x).sum()),
            "first": [int(i) for i in first]}


def same_non_finite(a: np.ndarray, b: np.ndarray) -> bool:
    """Non-finite in the same places, in the same way (NaN where NaN, +inf where +inf, -inf where -inf)."""
    return all(np.array_equal(kind(a), kind(b)) for kind in (np.isnan, np.isposinf, np.isneginf))


def describe(c: dict) -> str:
    counts = ", ".join(f"{c[k]} {'NaN' if k == 'nan' else k}" for k in KINDS if c[k])
    b, t, *i = c["first"]
    return f"{counts}; first at batch {b}, token {t}" + (f", index {i[0]}" if i else "")


def place_row(place: str, ref: np.ndarray, hf: np.ndarray, ms: np.ndarray, factor: float | None) -> dict:
    """One place compared: MindSpore's and HF float32's distances from the float64 reference `ref`
    (max |difference|), their ratio, and the old relative measure against HF float32. `ref` None (no
    reference run: Ascend) leaves the noise columns empty. Non-finite values on either side fail
    the place and are described."""
    row = {"place": place, "distance": None, "noise": None, "ratio": None, "limit": None,
           "max_abs_diff": _max_abs(ms, hf), "mean_abs_diff": _mean_abs(ms, hf), "rel_diff": None, "ok": True,
           "nonfinite": None}
    with np.errstate(invalid="ignore"):
        row["rel_diff"] = row["max_abs_diff"] / max(float(np.nanmax(np.abs(hf), initial=0.0)), 1e-12)
    hf_bad = census(hf) or (census(ref) if ref is not None else None)
    ms_bad = census(ms)
    if hf_bad or ms_bad:
        row["ok"] = False
        row["nonfinite"] = {"mindspore": ms_bad, "hf": hf_bad,
                            "same_as_hf": bool(hf_bad and ms_bad and same_non_finite(hf, ms))}
        return row
    if ref is None:
        return row
    noise, distance = _max_abs(hf, ref), _max_abs(ms, ref)
    scale = max(noise, UNIT_ROUNDOFF * float(np.abs(ref).max(initial=0.0)))
    ratio = distance / scale if scale > 0 else (0.0 if distance == 0 else float("inf"))
    row |= {"distance": distance, "noise": noise, "ratio": ratio, "ok": factor is None or ratio <= factor,
            "limit": None if factor is None else factor * scale}
    return row


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    if a.size == 0:
        return 0.0
    with np.errstate(invalid="ignore", over="ignore"):
        return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())


def _mean_abs(a: np.ndarray, b: np.ndarray) -> float:
    if a.size == 0:
        return 0.0
    with np.errstate(invalid="ignore", over="ignore"):
        return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


def nonfinite_failure(row: dict) -> str:
    """The failure line for a place where either side is not finite."""
    nf, place = row["nonfinite"], row["place"]
    ms_bad, hf_bad = nf["mindspore"], nf["hf"]
    if ms_bad and hf_bad and nf["same_as_hf"]:
        return (f"{place}: both sides compute the same non-finite values ({describe(ms_bad)}): the HF model "
                "itself does, so nothing can be said about its conversion")
    if ms_bad and hf_bad:
        return f"{place}: MindSpore computes {describe(ms_bad)}; HF computes {describe(hf_bad)}, elsewhere"
    if ms_bad:
        return f"{place}: MindSpore computes {describe(ms_bad)}, where HF is finite"
    return f"{place}: HF computes {describe(hf_bad)}, where MindSpore is finite"


def _log_softmax(x: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):  # numpy's error state is per thread
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))


def logits_metrics(ref: np.ndarray, got: np.ndarray) -> dict[str, float]:
    """MindSpore's logits (`got`) against HF float32's (`ref`): reported beside the rule, not the rule."""
    ref, got = ref.astype(np.float64), got.astype(np.float64)
    # The two log-softmaxes are independent and numpy's loops release the GIL: one runs in a thread
    # beside the rest (the same operations on the same arrays, so the same bits).
    with ThreadPoolExecutor(1) as pool:
        later = pool.submit(_log_softmax, got)
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            diff = np.abs(ref - got)
            cos = (ref * got).sum(-1) / (np.linalg.norm(ref, axis=-1) * np.linalg.norm(got, axis=-1) + 1e-30)
            lp = _log_softmax(ref)
            lq = later.result()
            kl = (np.exp(lp) * (lp - lq)).sum(-1)
    # max() of an array holding NaN is NaN: a non-finite metric stays visible instead of vanishing
    return {"max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
            "cosine_min": float(cos.min()), "top1_agreement": float((ref.argmax(-1) == got.argmax(-1)).mean()),
            "kl_max": float(kl.max()) if np.isnan(kl).any() else float(max(kl.max(), 0.0))}


def fixed_failures(m: dict, rows: list[dict], tol: dict) -> tuple[list[str], str | None]:
    """The fixed-tolerance rule (Ascend): logits metrics against the table, and the first place whose
    relative difference from HF float32 exceeds layer_rel_diff."""
    failures = [f"{k} {m[k]:.3g} > {tol[k]:.3g}" for k in ("max_abs_diff", "kl_max") if not m[k] <= tol[k]]
    if not m["cosine_min"] >= tol["cosine_min"]:
        failures.append(f"cosine_min {m['cosine_min']:.6f} < {tol['cosine_min']}")
    first = None
    for row in rows:
        row["ok"] = row["ok"] and row["rel_diff"] <= tol["layer_rel_diff"]
        if row["rel_diff"]:  # the limit on max_abs_diff that layer_rel_diff sets at this place
            row["limit"] = tol["layer_rel_diff"] * row["max_abs_diff"] / row["rel_diff"]
        if first is None and not row["ok"]:
            first = row["place"]
    return failures, first
