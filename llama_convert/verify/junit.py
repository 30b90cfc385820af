"""The verify report as a JUnit XML file, the format every CI reads (GitHub Actions and GitLab CI
publish it, Jenkins draws it): one test case per check (config parity, generation, the logits, each
compared place), each with its numbers, a failing one with the failing place and why as its message."""
from __future__ import annotations

import math
import socket
import time
import xml.etree.ElementTree as ET

from .report import VerifyReport

# verify reports generation-setting differences among the config differences, named `generation.KEY`.
_GENERATION = "generation."


def _num(x) -> str:
    if x is None:
        return "-"
    return f"{x:.6g}" if isinstance(x, float) and math.isfinite(x) else str(x)


def _metrics(row: dict) -> str:
    keys = ("distance", "noise", "ratio", "limit", "max_abs_diff", "mean_abs_diff", "rel_diff")
    return " ".join(f"{k}={_num(row.get(k))}" for k in keys)


def _why(row: dict, first: str | None) -> str:
    """The failure message of one place: which, and by how much (or what is not finite)."""
    place = "logits" if row["place"] == "lm_head" else row["place"]
    lead = f"{place}{' (first divergence)' if row['place'] == first else ''}"
    nf = row.get("nonfinite")
    if nf:
        sides = [f"{side} {c['nan']} NaN, {c['+inf']} +inf, {c['-inf']} -inf, first at {c['first']}"
                 for side, c in (("MindSpore", nf.get("mindspore")), ("HF", nf.get("hf"))) if c]
        return f"{lead}: not finite: {'; '.join(sides)}"
    if row.get("ratio") is not None and row.get("limit") is not None:
        return (f"{lead}: distance from the float64 reference {_num(row['distance'])} > limit {_num(row['limit'])} "
                f"(ratio {_num(row['ratio'])} x the float32 noise {_num(row['noise'])})")
    return f"{lead}: max_abs_diff {_num(row['max_abs_diff'])} > limit {_num(row.get('limit'))} " \
           f"(rel_diff {_num(row['rel_diff'])})"


def _case(suite: ET.Element, name: str, failure: str | None, out: str, kind: str = "VerifyFailure") -> None:
    case = ET.SubElement(suite, "testcase", name=name, classname="llama_convert.verify", time="0")
    if failure is not None:
        ET.SubElement(case, "failure", message=failure, type=kind).text = failure
    ET.SubElement(case, "system-out").text = out


def junit_xml(r: VerifyReport, hf_dir: str, ms_dir: str) -> str:
    """The report as a JUnit XML document (one testsuite; test cases in the order verify checks)."""
    suites = ET.Element("testsuites", name="llama-convert verify")
    suite = ET.SubElement(suites, "testsuite", name=f"verify {hf_dir} -> {ms_dir}",
                          timestamp=time.strftime("%Y-%m-%dT%H:%M:%S"), hostname=socket.gethostname(),
                          time=f"{r.seconds:.3f}")
    props = ET.SubElement(suite, "properties")
    for key in ("device", "dtype", "mode", "batch", "seq_len", "seed", "max_abs_diff", "mean_abs_diff", "cosine_min",
                "top1_agreement", "kl_max", "logits_ratio", "first_divergent_layer", "peak_rss_bytes"):
        ET.SubElement(props, "property", name=key, value=_num(getattr(r, key)))
    ET.SubElement(props, "property", name="rule", value=" ".join(f"{k}={v}" for k, v in r.tolerances.items()))

    diffs = [d for d in r.config_differences if not d.startswith(_GENERATION)]
    gen = [d for d in r.config_differences if d.startswith(_GENERATION)]
    _case(suite, "config parity", "; ".join(diffs) if diffs else None,
          "\n".join(diffs) or "every forward-pass key of the model_config equals the HF config translated",
          "ConfigDifference")
    _case(suite, "generation parity", "; ".join(gen) if gen else None,
          "\n".join(gen) or "every generation setting both read is equal (HF GenerationConfig, MindFormers' "
          "GenerationConfig.from_model_config)", "GenerationDifference")
    if r.generated_match is not None:
        _case(suite, "greedy generation", None if r.generated_match else
              f"greedy tokens differ from step {r.first_differing_step}",
              f"hf={r.generated_hf}\nmindspore={r.generated_ms}", "GenerationDifference")

    rows = {row["place"]: row for row in r.layers}
    logits = rows.get("lm_head")
    metric_failures = [f for f in r.failures if f.split()[0] in ("max_abs_diff", "kl_max", "cosine_min")]
    logits_failure = _why(logits, r.first_divergent_layer) if logits and not logits["ok"] else None
    if metric_failures:
        logits_failure = "; ".join(filter(None, [logits_failure, *metric_failures]))
    _case(suite, "logits", logits_failure,
          (_metrics(logits) if logits else "") + f"\ncosine_min={_num(r.cosine_min)} top1_agreement="
          f"{_num(r.top1_agreement)} kl_max={_num(r.kl_max)}")
    for place, row in rows.items():
        if place != "lm_head":
            _case(suite, f"stage {place}", None if row["ok"] else _why(row, r.first_divergent_layer), _metrics(row))

    cases = suite.findall("testcase")
    failed = sum(1 for c in cases if c.find("failure") is not None)
    suite.set("tests", str(len(cases)))
    suite.set("failures", str(failed))
    suite.set("errors", "0")
    suite.set("skipped", "0")
    suites.set("tests", str(len(cases)))
    suites.set("failures", str(failed))
    suites.set("errors", "0")
    suites.set("time", f"{r.seconds:.3f}")
    ET.SubElement(suite, "system-out").text = "\n".join(r.failures) or "PASS"
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


def write_junit(r: VerifyReport, path, hf_dir, ms_dir) -> None:
    from ..core.paths import write_atomically
    write_atomically(path, junit_xml(r, str(hf_dir), str(ms_dir)).encode())
