"""The HF side: transformers' class for the architecture, in float32 on CPU, whole or streamed, with
the float64 reference run beside it."""
from __future__ import annotations

from operator import attrgetter
from pathlib import Path

import numpy as np

from ..console.quiet import import_transformers
from ..core.errors import ConvertError
from ..table.loader import Table
from .reference import Reference
from .stages import StageBuffers, Stages, capture_places


def hf_model_class(hf_dir: Path, table: Table):
    """transformers' class for the table's models, or a ConvertError when transformers has none."""
    transformers = import_transformers()
    model_class = getattr(transformers, table.hf.model_class, None)
    if model_class is None:  # InternLM2, Baichuan2: remote code, which verify does not run
        raise ConvertError(hf_dir, f"transformers {transformers.__version__} has no {table.hf.model_class} (its "
                           f"modeling code is remote code the model ships, which verify does not run), so verify has no HF side",
                           f"table {table.name}'s conversion is proven by the tests against reference logits "
                           f"(README: Architectures)")
    return model_class


class HFSide:
    def __init__(self, hf_dir: Path, table: Table, tensors: dict | None = None, on_stage=None, total: int = 0,
                 reference_length: int | None = None):
        """transformers' model of the table's class; with `tensors` (HF_DIR's headers) streamed. With
        `reference_length`, each stage is also run in float64 (the reference), cut to that many tokens."""
        import torch
        transformers = import_transformers()
        self.torch = torch
        model_class = hf_model_class(hf_dir, table)
        try:
            if tensors is None:
                self.model = model_class.from_pretrained(hf_dir, dtype=torch.float32, attn_implementation="eager")
            else:
                config = model_class.config_class.from_pretrained(hf_dir)
                with torch.device("meta"):  # the architecture without its weights: they come per stage
                    self.model = model_class._from_config(config, attn_implementation="eager", dtype=torch.float32)
                inner = self.model.model  # rotary frequencies are computed, not loaded: compute them for real
                inner.rotary_emb = type(inner.rotary_emb)(config=self.model.config)
                unmade = [n for n, b in self.model.named_buffers() if b.is_meta]
                if unmade:  # an architecture computing more than rotary frequencies at build time
                    raise ConvertError(hf_dir, f"{model_class.__name__} cannot run streamed: buffers {unmade[:3]} "
                                       "are made when the model is built", "verify with --no-stream")
        except ConvertError:
            raise
        except Exception as e:  # transformers raises many types for unreadable directories
            raise ConvertError(hf_dir, f"transformers cannot load this model: {str(e).splitlines()[0][:200]}") from None
        self.model.eval()
        self.hf_dir, self.tensors = hf_dir, tensors
        self.buffers = StageBuffers()
        streamed = tensors is not None
        self.stages = Stages("HF", total, on_stage, self._load if streamed else None, self._drop if streamed else None)
        self.reference = None
        if reference_length is not None:
            self.reference = Reference(self.model, self.stages, reference_length)
            self.stages.then = self.reference.step
        self.prefix = {id(m): n for n, m in self.model.named_modules()}
        self.embedding = attrgetter(table.verify.hf_modules.embedding)(self.model)
        for place, module in capture_places(self.model, table.verify.hf_modules):
            module.register_forward_pre_hook(self.stages.before(place, module))
            module.register_forward_hook(self.stages.after(place, module, lambda out: out.detach().float().numpy()),
                                         with_kwargs=True)

    @property
    def captured(self) -> dict[str, np.ndarray]:
        return self.stages.captured

    def _load(self, place: str, module) -> None:
        prefix, refs = self.prefix[id(module)], {}
        for n, _ in module.named_parameters():
            name = f"{prefix}.{n}"
            if name not in self.tensors and place == "lm_head":  # tied: the output projection is the embedding
                name = f"{self.prefix[id(self.embedding)]}.{n}"
            if name not in self.tensors:
                raise ConvertError(self.hf_dir, f"has no tensor {name}, which {type(self.model).__name__} needs")
            refs[n] = self.tensors[name]
        self.buffers.start(refs.values())  # the stage before has been dropped: its weights are free
        module.load_state_dict({n: self.buffers.take(ref) for n, ref in refs.items()}, strict=True, assign=True)

    def _drop(self, module) -> None:
        module.to("meta")

    def logits(self, ids: np.ndarray, keep_buffers: bool = False) -> np.ndarray:
        """keep_buffers: the stage buffers stay (the MindSpore side takes them over, see MSSide), else
        they are released."""
        try:
            with self.torch.no_grad():
                return self.model(self.torch.from_numpy(ids), use_cache=False).logits.float().numpy()
        finally:
            if not keep_buffers:
                self.buffers.release()  # room for the other side's
