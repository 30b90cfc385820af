"""The stages both sides run and compare, and the hooks that capture, load and free them."""
from __future__ import annotations

from operator import attrgetter

import contextlib
import math

import numpy as np


def capture_places(model, modules) -> list[tuple[str, object]]:
    """The places compared on both sides, named the same way in every report: `modules` (a table's
    verify.hf_modules or ms_modules) says where each is in this side's model."""
    def at(path: str):
        return attrgetter(path)(model)
    return ([("embedding", at(modules.embedding))] + [(f"layer.{i}", m) for i, m in enumerate(at(modules.layers))]
            + [("final_norm", at(modules.final_norm)), ("lm_head", at(modules.lm_head))])


def float32_torch(ref):
    """A tensor read from disk as a float32 torch tensor, with no float32 copy beyond the result."""
    import torch
    data = torch.from_numpy(ref.read())
    if ref.dtype == "bfloat16":  # read() gives the bits as uint16; the view costs nothing
        return data.view(torch.bfloat16).float()
    return data.float()


_WIDENS = ("bfloat16", "float16", "float32")


class StageBuffers:
    """A stage's weights read from disk and widened to float32 into two buffers reused from stage to
    stage (the bytes as stored, the float32 values), grown to the largest stage. A fresh allocation per
    tensor costs the kernel's zero-filling of every page it touches: widening 65M bfloat16 values into
    a new tensor takes 0.62 s, into a reused one 0.08 s (measured here), and a streamed verify widens
    every weight of the model on both sides. The tensors `take` returns are views into the buffers:
    valid until the next `start`, which the caller makes only once the previous stage's module has let
    go of them (its hooks drop a stage's weights right after it runs)."""

    def __init__(self):
        self._raw = None   # numpy uint8: the stored bytes of one stage's half-precision tensors
        self._f32 = None   # torch float32: one stage's weights, widened
        self._raw_at = self._f32_at = 0

    def start(self, refs) -> None:
        """Make room for the tensors of one stage (TensorRefs), forgetting the stage before."""
        import torch
        raw = sum(r.nbytes for r in refs if r.ranges is not None and r.dtype in ("bfloat16", "float16"))
        values = sum(math.prod(r.shape) for r in refs)
        if self._raw is None or self._raw.size < raw:
            self._raw = None
            self._raw = np.empty(raw, dtype=np.uint8)
        if self._f32 is None or self._f32.numel() < values:
            self._f32 = None
            self._f32 = torch.empty(values, dtype=torch.float32)
        self._raw_at = self._f32_at = 0

    def take(self, ref):
        """`ref`'s values as float32, a view into the buffers (a dtype or source they do not serve: a new tensor)."""
        import torch
        if ref.ranges is None or ref.dtype not in _WIDENS:
            return float32_torch(ref)
        n = math.prod(ref.shape)
        out = self._f32[self._f32_at:self._f32_at + n]
        self._f32_at += n
        if ref.dtype == "float32":  # read straight into place
            ref.ranges.read_into(memoryview(out.numpy()).cast("B"), 0)
            return out.view(ref.shape)
        raw = self._raw[self._raw_at:self._raw_at + ref.nbytes]
        self._raw_at += ref.nbytes
        ref.ranges.read_into(memoryview(raw), 0)
        stored = torch.from_numpy(raw).view(torch.bfloat16 if ref.dtype == "bfloat16" else torch.float16)
        out.copy_(stored)
        return out.view(ref.shape)

    def release(self) -> None:
        self._raw = self._f32 = None


class Stages:
    """Per-stage hooks shared by both sides: capture each place's output, run `then` (the float64
    reference) while the stage's weights are still there, report progress, and in streamed mode load
    the stage's weights before it runs and drop them after."""

    def __init__(self, side: str, total: int, on_stage, load=None, drop=None, then=None):
        self.side, self.total, self.on_stage = side, total, on_stage
        self.load, self.drop, self.then = load, drop, then
        self.captured: dict[str, np.ndarray] = {}
        self.capture = True
        self.done = 0
        self._paused = False

    @contextlib.contextmanager
    def paused(self):
        """Run a stage's module again (the reference does) without these hooks loading, capturing or
        dropping anything."""
        self._paused = True
        try:
            yield
        finally:
            self._paused = False

    def before(self, place, module):
        def hook(*_):
            if self.load and not self._paused:
                self.load(place, module)
        return hook

    def after(self, place, module, to_numpy):
        def hook(_module, *rest):  # (inputs, output) or, with kwargs, (args, kwargs, output)
            if self._paused:
                return
            output = rest[-1]
            if self.capture and place != "lm_head":
                self.captured[place] = to_numpy(output[0] if isinstance(output, tuple) else output)
            if self.capture and self.then:
                self.then(place, module, rest)
            if self.drop:
                self.drop(module)
            if self.capture and self.on_stage:
                self.done += 1
                self.on_stage(f"{self.side} {place}", self.done, self.total)
        return hook
