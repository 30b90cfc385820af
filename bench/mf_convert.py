"""Run one of MindFormers' own converters on a HF Llama directory (for bench/run.py).

    python bench/mf_convert.py pt SRC OUT            # mindformers.models.llama.convert_weight.convert_pt_to_ms
    python bench/mf_convert.py safetensors SRC OUT   # convert_hf_safetensors_multiprocess
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("GLOG_v", "3")


def main() -> None:
    mode, src, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    import mindspore as ms
    ms.set_context(mode=ms.PYNATIVE_MODE)
    ms.set_device("CPU")
    if mode == "pt":
        from mindformers.models.llama.convert_weight import convert_pt_to_ms
        out.mkdir(parents=True, exist_ok=True)
        convert_pt_to_ms(str(src), str(out / "model.ckpt"))
        return
    from mindformers.models import LlamaConfig, LlamaForCausalLM
    from mindformers.utils.safetensors.convert_safetensors import convert_hf_safetensors_multiprocess

    from llama_convert import HF2MSOptions, plan_hf2ms
    fields = plan_hf2ms(src, HF2MSOptions(format="safetensors")).model_config
    convert_hf_safetensors_multiprocess(str(src), str(out), LlamaForCausalLM, LlamaConfig(**fields))


if __name__ == "__main__":
    main()
