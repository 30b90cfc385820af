"""The verify report for a person: the verdict, the rule and its numbers, then what failed and where."""
from __future__ import annotations

from ..core.sizes import human_bytes
from .report import VerifyReport


def _num(x, spec: str) -> str:
    """x formatted by spec, or "-" (not computed: a place that is not finite) in the same width."""
    width = "".join(c for c in spec.split(".")[0] if c.isdigit())
    return format(x, spec) if x is not None else format("-", f">{width or 1}")


def report_text(r: VerifyReport) -> str:
    verdict = "PASS" if r.passed else "FAIL"
    lines = [f"verify: {verdict} on {r.device} ({r.dtype}), batch {r.batch} x {r.seq_len} tokens, seed {r.seed}, "
             f"{r.seconds:.1f} s", f"  mode: {r.mode}, peak RSS {human_bytes(r.peak_rss_bytes, 2)} "
             f"(whole models estimated at {human_bytes(r.whole_model_estimate_bytes)}, "
             f"budget {human_bytes(r.memory_budget_bytes)})", ""]
    tol = r.tolerances
    if tol.get("rule") == "noise_ratio":
        lines += [f"  rule: at every place, MindSpore's distance from HF run in float64 <= {tol['factor']:g} x the "
                  "noise (HF float32's own distance from it)",
                  f"  {'logits':<16}distance {_num(r.logits_distance, '.3e')}  noise {_num(r.logits_noise, '.3e')}  "
                  f"ratio {_num(r.logits_ratio, '.2f')}", ""]
    fixed = tol.get("rule") == "fixed"
    limit = {k: (f"<= {tol[k]:.0e}" if k != "cosine_min" else f">= {tol[k]}") for k in ("max_abs_diff", "cosine_min",
                                                                                       "kl_max") if fixed}
    lines += [f"  {'MindSpore vs HF float32 logits':<32}",
              f"  {'max_abs_diff':<16}{r.max_abs_diff:>14.3e}  {limit.get('max_abs_diff', '')}",
              f"  {'mean_abs_diff':<16}{r.mean_abs_diff:>14.3e}",
              f"  {'cosine_min':<16}{r.cosine_min:>14.8f}  {limit.get('cosine_min', '')}",
              f"  {'top1_agreement':<16}{r.top1_agreement:>14.4f}",
              f"  {'kl_max':<16}{r.kl_max:>14.3e}  {limit.get('kl_max', '')}"]
    lines = [line.rstrip() for line in lines]
    if r.layers and (r.first_divergent_layer or r.nonfinite or not r.passed or r.layers_asked):
        lines += ["", f"  {'place':<16}{'distance':>12}{'noise':>12}{'ratio':>10}{'vs HF f32':>12}"]
        for row in r.layers:
            mark = "" if row["ok"] else "  <-- diverges"
            if row["nonfinite"]:
                mark = "  <-- not finite"
            lines.append(f"  {row['place']:<16}{_num(row['distance'], '12.3e')}{_num(row['noise'], '12.3e')}"
                         f"{_num(row['ratio'], '10.2f')}{_num(row['max_abs_diff'], '12.3e')}{mark}")
    if r.first_divergent_layer:
        lines += ["", f"  first divergence: {r.first_divergent_layer}"]
    if r.generated_match is not None:
        lines += ["", f"  greedy {len(r.generated_hf)} tokens from {r.prompt_ids}: "
                      f"{'identical' if r.generated_match else f'differ from step {r.first_differing_step}'}"]
    lines += [f"  failed: {f}" for f in r.failures]
    return "\n".join(lines)
