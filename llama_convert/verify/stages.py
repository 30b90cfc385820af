"""The stages both sides run and compare, and the hooks that capture, load and free them."""
from __future__ import annotations

from operator import attrgetter

import contextlib

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
