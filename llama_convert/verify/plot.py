"""The verify report drawn, for those who would rather look than read: at every place compared (the
embedding, each decoder layer, the final norm, the logits), MindSpore's max and mean absolute difference
against the limit the rule sets there, on a log scale, failing places in red. PNG or SVG, by the file's
suffix; matplotlib comes from the `plot` extra."""
from __future__ import annotations

import io
import math

from ..core.errors import ConvertError
from ..core.extras import require
from .report import VerifyReport

FORMATS = (".png", ".svg")


def plot_format(path) -> str:
    suffix = str(path).rsplit(".", 1)[-1].lower() if "." in str(path) else ""
    if f".{suffix}" not in FORMATS:
        raise ConvertError(path, "is not a .png or .svg file name", "verify --plot draws PNG or SVG, by the suffix")
    return suffix


def _positive(values: list) -> list[float]:
    """Log-scale values: 0 (an exact place), None and non-finite are not drawn."""
    return [v if isinstance(v, (int, float)) and math.isfinite(v) and v > 0 else math.nan for v in values]


def plot_bytes(r: VerifyReport, fmt: str, title: str) -> bytes:
    """The figure as PNG or SVG bytes. SVG keeps its text as text, so the places can be read from the file."""
    matplotlib = require("matplotlib", "verify --plot")
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    rows = r.layers
    places = ["logits" if row["place"] == "lm_head" else row["place"] for row in rows]
    x = list(range(len(rows)))
    cpu = r.tolerances.get("rule") == "noise_ratio"
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "llama-convert"}):
        fig, ax = plt.subplots(figsize=(max(6.0, 0.28 * len(rows) + 2), 4.5), dpi=100)
        ax.set_yscale("log")
        if cpu:
            ax.plot(x, _positive([row["distance"] for row in rows]), "o-", color="tab:blue", ms=3,
                    label="max |MindSpore - HF float64|")
        ax.plot(x, _positive([row["max_abs_diff"] for row in rows]), "s-", color="tab:green", ms=3,
                label="max |MindSpore - HF float32|")
        ax.plot(x, _positive([row.get("mean_abs_diff") for row in rows]), "^-", color="tab:olive", ms=3,
                label="mean |MindSpore - HF float32|")
        ax.plot(x, _positive([row.get("limit") for row in rows]), "--", color="tab:gray",
                label=f"limit ({r.tolerances['factor']:g} x float32 noise)" if cpu else "limit (layer_rel_diff)")
        bad = [i for i, row in enumerate(rows) if not row["ok"]]
        if bad:
            worst = [rows[i]["distance"] if cpu else rows[i]["max_abs_diff"] for i in bad]
            ax.plot(bad, _positive(worst), "x", color="tab:red", ms=9, mew=2, label="fails")
        ax.set_xticks(x, places, rotation=90, fontsize=7)
        ax.set_ylabel("absolute difference")
        verdict = "PASS" if r.passed else f"FAIL at {r.first_divergent_layer or '; '.join(r.failures)[:60]}"
        ax.set_title(f"{title}\nverify {verdict} ({r.device}, {r.dtype}, {r.mode})", fontsize=9)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=7, loc="best")
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, metadata={"Title": title} if fmt == "svg" else
                    {"Title": title, "Description": "places: " + " ".join(places)})
        plt.close(fig)
    return buf.getvalue()


def write_plot(r: VerifyReport, path, title: str) -> None:
    from ..core.paths import write_atomically
    write_atomically(path, plot_bytes(r, plot_format(path), title))
