"""The float64 reference: HF's own modules run again in float64, stage by stage, beside its float32 run.

It is the truth the verdict measures against. HF float32's distance from it is the rounding noise of
a float32 run of this model on this batch; MindSpore's distance from it must stay within a small
factor of that noise (options.NOISE_FACTOR). Each stage is re-run right after its float32 run, while
its weights are loaded, on the reference's own hidden state carried from the stage before: weights
are read once per stage in streamed mode, and memory grows by one stage's weights in float64 (a
decoder layer; the lm_head goes in slices of rows).

transformers' code asks for float32 in a few places whatever the model's dtype (RMSNorm's input,
eager attention's softmax, the rotary angles); during the reference run a torch function mode
serves those requests in float64, so the reference is float64 end to end, which it checks.
"""
from __future__ import annotations

import copy
import time

import numpy as np

LM_HEAD_SLICE_BYTES = 1 << 28   # float64 rows of the output projection widened at once


def _float64_mode():
    import torch
    from torch.overrides import TorchFunctionMode

    class Float64(TorchFunctionMode):
        """Serve every float32 request made under it in float64, and note any float32 result."""

        def __init__(self):
            super().__init__()
            self.float32_from: set[str] = set()

        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = dict(kwargs or {})
            if func is torch.Tensor.float:
                func, args = torch.Tensor.double, args[:1]
            elif func is torch.Tensor.to:
                args = tuple(torch.float64 if a is torch.float32 else a for a in args)
            if kwargs.get("dtype") is torch.float32:
                kwargs["dtype"] = torch.float64
            out = func(*args, **kwargs)
            if isinstance(out, torch.Tensor) and out.dtype == torch.float32:
                self.float32_from.add(getattr(func, "__name__", str(func)))
            return out
    return Float64()


class Reference:
    """The float64 run of one HF model, fed stage by stage from HFSide's hooks."""

    def __init__(self, model, stages, length: int):
        import torch
        self.torch, self.stages, self.length = torch, stages, length
        self.rotary = copy.deepcopy(model.model.rotary_emb).double()  # its buffers too: angles in float64
        self.hidden = None                       # the reference's hidden state, float64
        self.states: dict[str, np.ndarray] = {}  # place -> reference output, cut to `length` tokens
        self.logits: np.ndarray | None = None
        self._rope = None
        self._arena = None       # float64 parameters of the stage being re-run
        self.seconds = 0.0

    def step(self, place: str, module, hook_args: tuple) -> None:
        start = time.perf_counter()
        try:
            self._step(place, module, hook_args)
        finally:
            self.seconds += time.perf_counter() - start

    def _step(self, place: str, module, hook_args: tuple) -> None:
        args, kwargs, output = hook_args
        torch = self.torch
        if place == "embedding":  # a lookup: exact, so the float32 result widened is the float64 one
            self.hidden = output.detach().double()
        elif place == "lm_head":
            self.logits = self._lm_head(module)
            return
        else:
            if place.startswith("layer."):
                kwargs = self._layer_kwargs(dict(kwargs))
                args = args[1:] if args else ()
                kwargs.pop("hidden_states", None)
            else:
                args, kwargs = (), {}
            params = self._float64(module)
            mode = _float64_mode()
            with torch.no_grad(), self.stages.paused(), mode:
                out = torch.func.functional_call(module, params, (self.hidden, *args), kwargs)
            if mode.float32_from:  # a cast this module hard-wires that the mode did not catch
                raise RuntimeError(f"the float64 reference computed {place} partly in float32 "
                                   f"({', '.join(sorted(mode.float32_from))})")
            self.hidden = out[0] if isinstance(out, tuple) else out
        self.states[place] = self.hidden[:, :self.length].numpy()

    def _float64(self, module) -> dict:
        """The module's parameters in float64, in one buffer reused from stage to stage: a fresh
        allocation per layer costs more in page faults than the widening itself (5-10x, measured)."""
        params = [(n, p.detach()) for n, p in module.named_parameters()]
        need = sum(p.numel() for _, p in params)
        if self._arena is None or self._arena.numel() < need:
            self._arena = self.torch.empty(need, dtype=self.torch.float64)
        out, at = {}, 0
        for n, p in params:
            out[n] = self._arena[at:at + p.numel()].view(p.shape)
            out[n].copy_(p)
            at += p.numel()
        return out

    def _layer_kwargs(self, kwargs: dict) -> dict:
        torch = self.torch
        if self._rope is None:
            with torch.no_grad(), _float64_mode():
                self._rope = self.rotary(self.hidden, kwargs["position_ids"])
        kwargs["position_embeddings"] = self._rope
        mask = kwargs.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.is_floating_point():
            kwargs["attention_mask"] = mask.double()
        kwargs["past_key_values"], kwargs["use_cache"] = None, False
        return kwargs

    def _lm_head(self, module) -> np.ndarray:
        torch = self.torch
        self._arena = None  # the layers are done; the lm_head stage is the largest, give it the room
        weight, bias = module.weight.detach(), module.bias
        rows = max(1, LM_HEAD_SLICE_BYTES // (8 * weight.shape[1]))
        h = self.hidden[:, :self.length]
        out = torch.empty((*h.shape[:-1], weight.shape[0]), dtype=torch.float64)
        wide = torch.empty((min(rows, weight.shape[0]), weight.shape[1]), dtype=torch.float64)
        with torch.no_grad():
            for at in range(0, weight.shape[0], rows):
                w = wide[:min(rows, weight.shape[0] - at)]
                w.copy_(weight[at:at + rows])
                b = None if bias is None else bias.detach()[at:at + rows].double()
                out[..., at:at + rows] = torch.nn.functional.linear(h, w, b)
        return out.numpy()
