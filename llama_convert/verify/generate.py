"""The smoke test users run after converting: MindFormers generates text from OUT's YAML as it stands,
on the device the YAML names, as the README's snippet does (build_context first: MindSpore's CPU build
has no TopK/ArgMax kernels, and the YAML's postprocess_use_numpy only takes effect through it)."""
from __future__ import annotations

import atexit
import contextlib
import io
import shutil
import sys
import tempfile
from pathlib import Path

from ..console.quiet import import_mindformers, verbose
from ..core.errors import ConvertError
from ..formats.files import read_small
from ..sources.ms import find_yaml, read_mindformers_yaml
from ..table.loader import safe_yaml


def generate_text(out_dir: Path, prompt: str, max_new_tokens: int | None = None) -> str:
    """MindFormers' Trainer.predict of `prompt` with OUT_DIR's YAML: the prompt and its continuation."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise ConvertError(out_dir, "is not a directory", "give the OUT_DIR of an hf2ms conversion")
    yaml_path = find_yaml(out_dir)
    read_mindformers_yaml(yaml_path)   # checked as every reader checks it, before MindFormers sees it
    processor = safe_yaml(read_small(yaml_path, "MindFormers YAML")).get("processor")
    if not isinstance(processor, dict) or not processor.get("tokenizer"):  # found before seconds of imports
        raise ConvertError(yaml_path, "has no tokenizer (no processor section): the source had no tokenizer files",
                           "put the model's tokenizer.model or tokenizer.json into the source and convert again")
    mindformers = import_mindformers()
    config = mindformers.MindFormerConfig(str(yaml_path))
    # The Trainer writes strategy files under output_dir (./output by default) and the result into
    # save_file (./text_generation_result.txt): neither belongs in the user's working directory.
    config.output_dir = tempfile.mkdtemp(prefix="llama-convert-generate-")
    atexit.register(shutil.rmtree, config.output_dir, True)
    config.save_file = str(Path(config.output_dir) / "result.txt")
    mindformers.build_context(config)
    kwargs = {"max_new_tokens": max_new_tokens} if max_new_tokens else {}
    with contextlib.redirect_stdout(sys.stderr if verbose() else io.StringIO()):
        trainer = mindformers.Trainer(config)
    if config.get("load_ckpt_format") == "safetensors":  # from_pretrained reads only a .ckpt (README, hf2ms)
        kwargs["predict_checkpoint"] = config.load_checkpoint
    try:
        # MindFormers prints its whole config to stdout as it starts: stdout carries only the text.
        with contextlib.redirect_stdout(sys.stderr if verbose() else io.StringIO()):
            result = trainer.predict(input_data=prompt, **kwargs)
    except (ValueError, RuntimeError, TypeError) as e:
        raise ConvertError(yaml_path, f"MindFormers could not generate from it: "
                           f"{(str(e).strip().splitlines() or [type(e).__name__])[0][:200]}") from None
    return result[0]["text_generation_text"][0]
