"""The MindSpore side: MindFormers' model built from MS_DIR's YAML, its checkpoint loaded strictly,
in PyNative mode; whole, or streamed with each stage's weights read from disk just before it runs."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..console.quiet import import_mindformers
from ..core.errors import ConvertError
from ..table.loader import Table
from ..sources.ms import ms_checkpoint_files
from .stages import StageBuffers, Stages, capture_places, float32_torch

# verify runs MindFormers in float32 whatever the YAML says, as HF runs: the two sides then differ by
# rounding alone (the table's CPU settings choose the kernels; these, every dtype).
FLOAT32_COMPUTE = {k: "float32" for k in ("compute_dtype", "param_init_type", "layernorm_compute_type",
                                          "softmax_compute_type", "rotary_dtype", "embedding_init_type")}


class MSSide:
    def __init__(self, ms_dir: Path, cfg: dict, yaml_path: Path, table: Table, device: str, batch: int, length: int,
                 tensors: dict | None = None, on_stage=None, total: int = 0, merged: dict | None = None,
                 buffers: StageBuffers | None = None):
        """MindFormers' model built from the YAML; with `tensors` (MS_DIR's headers) streamed; with
        `merged` (a multi-rank directory's merged tensors) whole, loaded from those instead of MS_DIR's files.
        `buffers`: the HF side's stage buffers, done with, to read this side's stages into: their pages are
        already the process's, where new buffers as large as the largest stage would be zero-filled by the
        kernel again (about 1 s on the 1B shape here). They are released after the forward."""
        mindformers = import_mindformers()
        import mindspore as ms
        ms.set_context(mode=ms.PYNATIVE_MODE)
        ms.set_device(device)
        if device == "CPU":
            # PyNative queues each op for a worker thread and the Python thread spins until it ran: on CPU
            # the two share the cores the kernels run on (on 2 cores this side took 1.5-2x as long, the
            # same numbers). MindSpore has no way back, so a library caller's later ops run blocking too.
            ms.runtime.launch_blocking()
        config_class = getattr(mindformers.models, table.mindformers.config_class)
        model_class = getattr(mindformers.models, table.mindformers.model_class)
        self.ms = ms
        self.dtype = cfg.get("param_init_type", "float32")
        # Whole forward passes of a fixed shape: no KV cache, whatever the run YAML's predict settings say.
        overrides = {"batch_size": batch, "seq_length": length, "use_past": False, "is_dynamic": False}
        if device == "CPU":
            overrides |= dict(table.mindformers.device["CPU"]) | FLOAT32_COMPUTE
        self.pad_token_id = cfg.get("pad_token_id")
        self.length = length
        self.ms_dir, self.tensors, self.device = ms_dir, tensors, device
        self.buffers = buffers or StageBuffers()
        try:
            if tensors is None:
                self.net = model_class(config_class(**{**cfg, **overrides}))
            else:  # parameters are created uninitialised: each stage's come from disk when it runs
                from mindspore.nn.utils import no_init_parameters
                with no_init_parameters():
                    self.net = model_class(config_class(**{**cfg, **overrides}))
        except Exception as e:  # the YAML's untyped keys (parallelism, kernels, ...) reach MindFormers as they are
            raise ConvertError(yaml_path, f"MindFormers cannot build {model_class.__name__} from this model_config: "
                               f"{(str(e).strip().splitlines() or [type(e).__name__])[0][:200]}") from None
        self.net.set_train(False)
        places = capture_places(self.net, table.verify.ms_modules)
        if tensors is None:
            params = (load_ms_params(ms, ms_dir) if merged is None else
                      {n: ms.Parameter(ms.Tensor.from_numpy(float32_torch(r).numpy()), name=n) for n, r in merged.items()})
            if device == "CPU":  # one tensor at a time, so the half-precision copies are freed as we go
                for k in list(params):
                    params[k] = ms.Parameter(params.pop(k).astype(ms.float32), name=k)
            missing, unexpected = ms.load_param_into_net(self.net, params, strict_load=True)
        else:
            names = {p.name for p in self.net.get_parameters()}
            missing, unexpected = sorted(names - set(tensors)), sorted(set(tensors) - names)
            staged = {p.name for _, cell in places for p in cell.get_parameters()}
            if not missing and names - staged:  # a weight no stage loads would run uninitialised
                raise ConvertError(yaml_path, f"{model_class.__name__} has parameters outside the verified stages: "
                                   f"{sorted(names - staged)[:3]}", "verify without --stream")
        if missing or unexpected:
            raise ConvertError(ms_dir, f"checkpoint does not fit {yaml_path.name}: missing {missing[:3]}, "
                               f"unexpected {unexpected[:3]}")
        streamed = tensors is not None
        self.stages = Stages("MindSpore", total, on_stage, self._load if streamed else None,
                             self._drop if streamed else None)
        for place, cell in places:
            if streamed:  # MindSpore would initialise a pending parameter at random when its cell is first
                self._drop(cell)  # called, before the hook that loads it: 2 x vocab x hidden normals, for nothing
            cell.register_forward_pre_hook(self.stages.before(place, cell))
            cell.register_forward_hook(self.stages.after(place, cell, lambda out: out.astype(ms.float32).asnumpy()))

    @property
    def captured(self) -> dict[str, np.ndarray]:
        return self.stages.captured

    @property
    def capture(self) -> bool:
        return self.stages.capture

    @capture.setter
    def capture(self, value: bool) -> None:
        self.stages.capture = value

    def _load(self, place: str, cell) -> None:
        params = list(cell.get_parameters())
        # PyNative runs ops asynchronously and Tensor.from_numpy shares memory: nothing may still read the
        # buffers of the stage before when they are refilled.
        _wait_for_queued_ops()
        self.buffers.start([self.tensors[p.name] for p in params])
        for p in params:
            data = self.ms.Tensor.from_numpy(self.buffers.take(self.tensors[p.name]).numpy())  # shares, no copy
            if self.device != "CPU":  # the production kernels take the checkpoint's own precision
                data = data.astype(p.dtype)
            # slice_shape: the placeholder left by _drop has another shape than the weight
            p.set_data(data, slice_shape=True)
            del data

    def _drop(self, cell) -> None:
        for p in cell.get_parameters():
            p.set_data(self.ms.Tensor(np.zeros((1,), np.float32)), slice_shape=True)

    def logits(self, ids: np.ndarray) -> np.ndarray:
        """Logits for ids, padded on the right to the net's fixed length (causal: padding cannot leak back)."""
        batch, n = ids.shape
        padded = np.zeros((batch, self.length), dtype=np.int32)
        padded[:, :n] = ids
        try:
            out = self.net(self.ms.Tensor(padded))
            logits = out[0] if isinstance(out, tuple) else out
            return logits.astype(self.ms.float32).asnumpy().reshape(batch, self.length, -1)[:, :n]
        finally:
            _wait_for_queued_ops()
            self.buffers.release()


def _wait_for_queued_ops() -> None:
    """Until every op PyNative has queued has run, on any device. mindspore.runtime.synchronize() is
    Ascend/GPU only: on CPU it does nothing but log an ERROR line, though CPU ops are queued too."""
    from mindspore.graph.api import _pynative_executor
    _pynative_executor.sync()


def load_ms_params(ms, ms_dir: Path) -> dict:
    """Every parameter of MS_DIR, loaded by mindspore itself (the point is that MindSpore can)."""
    params = {}
    for f in ms_checkpoint_files(ms_dir):
        try:
            params.update(ms.load_checkpoint(str(f), format=f.suffix.lstrip(".")))
        except (ValueError, RuntimeError) as e:
            raise ConvertError(f, f"mindspore cannot load this checkpoint: {str(e).splitlines()[0][:200]}") from None
    return params


