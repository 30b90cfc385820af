"""What a verify run found, as one record: the verdict, the numbers behind it, and how it ran."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field


@dataclass
class VerifyReport:
    passed: bool
    device: str
    dtype: str
    tolerances: dict
    batch: int
    seq_len: int
    seed: int
    # MindSpore's logits against HF float32's: the relative metrics reported beside the rule
    max_abs_diff: float
    mean_abs_diff: float
    cosine_min: float
    top1_agreement: float
    kl_max: float
    first_divergent_layer: str | None
    # the rule's numbers for the logits (None where no float64 reference ran: Ascend)
    logits_distance: float | None = None
    logits_noise: float | None = None
    logits_ratio: float | None = None
    layers: list[dict] = field(default_factory=list)   # one row per place, the logits ("lm_head") last
    layers_asked: bool = False                        # --layers: show every place even when all agree
    nonfinite: dict | None = None                     # the first place where either side is not finite
    generated_match: bool | None = None
    first_differing_step: int | None = None
    generated_hf: list[int] | None = None
    generated_ms: list[int] | None = None
    prompt_ids: list[int] | None = None
    seconds: float = 0.0
    reference_seconds: float = 0.0                    # spent in the float64 reference run
    failures: list[str] = field(default_factory=list)
    mode: str = "whole"                               # "whole" or "streamed"
    peak_rss_bytes: int = 0
    whole_model_estimate_bytes: int = 0
    memory_budget_bytes: int = 0
    config_differences: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def sanitize(value):
    """JSON has no NaN or infinity: every non-finite float, however deep, is written as the string
    "nan", "inf" or "-inf" (the documented convention), so the report stays valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if value != value else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: sanitize(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [sanitize(v) for v in value]
    return value
