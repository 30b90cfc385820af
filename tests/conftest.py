"""Shared paths and helpers. The tests use real components only: real files, real mindspore."""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

# MindFormers writes its log directory under LOCAL_DEFAULT_PATH (default: ./output); keep the checkout clean.
os.environ.setdefault("LOCAL_DEFAULT_PATH", tempfile.mkdtemp(prefix="mindformers-log-"))

# Tests that press Ctrl-C expect the runs they start to hear it, as from a terminal. A shell that starts the
# suite in the background (`./test.sh &`) hands every child SIGINT ignored; a handler here resets to the
# default across exec.
signal.signal(signal.SIGINT, signal.default_int_handler)

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "fixtures"
SHARED = Path(os.environ.get("LLAMA_CONVERT_SHARED", REPO.parent / "shared"))
REAL_MODELS = SHARED / "real-models"
REAL_CONFIGS = SHARED / "real-configs"
REAL_FAMILY = SHARED / "real-models-family"

FIXTURE_DIRS = sorted(p for p in FIXTURES.iterdir() if (p / "config.json").exists())
REAL_MODEL_DIRS = sorted(p for p in REAL_MODELS.glob("*") if (p / "config.json").exists()) if REAL_MODELS.exists() else []
REAL_CONFIG_FILES = sorted(REAL_CONFIGS.glob("*.json")) if REAL_CONFIGS.exists() else []
REAL_FAMILY_DIRS = sorted(p for p in REAL_FAMILY.glob("*") if (p / "config.json").exists()) if REAL_FAMILY.exists() else []


def _converts_as_it_is(src: Path) -> bool:
    """Real checkpoints of other architectures join every end-to-end test when a table converts them with
    default options. The others (Mistral with a 4-token window: --seq-length 4) have
    their own tests, which also pin down why they are left out here."""
    from llama_convert import ConvertError, plan_hf2ms
    try:
        plan_hf2ms(src)
    except ConvertError:
        return False
    return True


# Families whose HF model is remote code (no transformers class): verify has no HF side; their own tests
# check MindFormers' logits against reference logits and the round trip.
REMOTE_CODE = {"InternLM2ForCausalLM", "BaichuanForCausalLM"}
ALL_MODEL_DIRS = FIXTURE_DIRS + REAL_MODEL_DIRS + [
    p for p in REAL_FAMILY_DIRS
    if _converts_as_it_is(p) and not REMOTE_CODE & set(json.loads((p / "config.json").read_text()).get("architectures", []))]


def _is_llama(src: Path) -> bool:
    return "LlamaForCausalLM" in json.loads((src / "config.json").read_text()).get("architectures", ["LlamaForCausalLM"])


def layout_combos(dirs: list[Path], untie: bool = True) -> list[tuple]:
    """(source, format, qkv_concat[, untie]) for the end-to-end matrices. A Llama source goes through
    every layout. Another family's source goes through two that cross each of its choices once: a
    .ckpt with q/k/v split (and tied as it came) and safetensors fused (and untied). The format and
    untying are written by the same code for every family and crossed in full on the Llama sources;
    what a family changes, its ops, is crossed both ways. The whole product made the suite ~6 min
    longer per new family for no new behaviour."""
    combos: list[tuple] = []
    for src in dirs:
        if _is_llama(src):
            combos += [(src, *c) for c in itertools.product(("ckpt", "safetensors"), (False, True),
                                                            *([(False, True)] if untie else []))]
        else:
            combos += [(src, "ckpt", False, *([False] if untie else [])),
                       (src, "safetensors", True, *([True] if untie else []))]
    return combos


def model_id(p: Path) -> str:
    return p.name


def raw(directory: Path) -> dict[str, tuple[str, tuple, bytes]]:
    """name -> (dtype, shape, bytes) of every tensor, read by our header readers (checked elsewhere)."""
    from llama_convert.formats import ckpt, safetensors as st
    out = {}
    for f in sorted(directory.glob("*.safetensors")):
        out.update({n: (r.dtype, r.shape, r.read().tobytes()) for n, r in st.read_header(f)[0].items()})
    for f in sorted(directory.glob("*.ckpt")):
        out.update({r.name: (r.dtype, r.shape, r.read().tobytes()) for r in ckpt.scan(f)[0]})
    if not out:
        import torch
        state = torch.load(directory / "pytorch_model.bin", weights_only=True)
        out = {n: (str(t.dtype).removeprefix("torch."), tuple(t.shape), t.reshape(-1).view(torch.uint8).numpy().tobytes())
               for n, t in state.items()}
    return out


def run_cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """The installed console script, exactly as a user runs it."""
    exe = Path(sys.executable).parent / "llama-convert"
    return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, timeout=timeout)


def without_progress(stderr: str) -> str:
    """stderr without the progress display's lines (one per finished file when stderr is not a terminal):
    what a refusal says is its one error line, whatever was written before the problem showed."""
    return "\n".join(line for line in stderr.splitlines() if not line.startswith("llama-convert: wrote "))


def refused(proc: subprocess.CompletedProcess, *needles: str, absent: tuple[str, ...] = ()) -> str:
    """The run refused its input as the user must see it: exit 2, one stderr line, no traceback."""
    err = without_progress(proc.stderr).strip()
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-500:], err)
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    for word in absent:
        assert word not in err, err
    return err


def assert_rejected(tmp: Path, src: Path, *needles: str, extra: tuple[str, ...] = (), command: str = "hf2ms",
                    timeout: int = 120) -> str:
    """`command src tmp/out` refuses: exit 2, one stderr line naming the needles, nothing written.
    The timeout makes a run that hangs (a FIFO opened for reading) fail instead of blocking the suite."""
    out = tmp / "out"
    err = refused(run_cli(command, src, out, *extra, timeout=timeout), *needles)
    assert not out.exists()
    assert [p.name for p in tmp.iterdir() if p.name.startswith(".out")] == []  # no partial sibling either
    return err


def tree_hash(root: Path) -> str:
    """One hash of every name, link target and byte under root: any change to the tree changes it."""
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        h.update(str(path.relative_to(root)).encode())
        if path.is_symlink():
            h.update(b"-> " + os.readlink(path).encode())
        elif path.is_file():
            h.update(path.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="session")
def ms():
    import mindspore
    mindspore.set_context(mode=mindspore.PYNATIVE_MODE)
    mindspore.set_device("CPU")
    return mindspore


def synthetic_llama(src: Path, hidden: int, ffn: int, layers: int, vocab: int, heads: int,
                    values: Callable[[tuple[int, ...]], np.ndarray], sharded: bool = False) -> Path:
    """An untied float32 Llama checkpoint of this shape, each tensor `values(shape)`: one model.safetensors,
    or with `sharded` one shard per decoder layer and a last one (copied last) for the embedding, the
    final norm and lm_head, with their index. Big shapes make conversions slow enough to interrupt."""
    from safetensors.numpy import save_file
    src.mkdir(parents=True)
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
              "hidden_size": hidden, "intermediate_size": ffn, "num_hidden_layers": layers,
              "num_attention_heads": heads, "num_key_value_heads": heads, "vocab_size": vocab,
              "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
              "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float32"}
    (src / "config.json").write_text(json.dumps(config))
    shards = []
    for i in range(layers):
        p = f"model.layers.{i}."
        shards.append({**{f"{p}self_attn.{x}.weight": values((hidden, hidden)) for x in ("q_proj", "k_proj", "v_proj", "o_proj")},
                       f"{p}mlp.gate_proj.weight": values((ffn, hidden)), f"{p}mlp.up_proj.weight": values((ffn, hidden)),
                       f"{p}mlp.down_proj.weight": values((hidden, ffn)), f"{p}input_layernorm.weight": values((hidden,)),
                       f"{p}post_attention_layernorm.weight": values((hidden,))})
    shards.append({"model.embed_tokens.weight": values((vocab, hidden)), "model.norm.weight": values((hidden,)),
                   "lm_head.weight": values((vocab, hidden))})
    if not sharded:
        save_file({k: v for shard in shards for k, v in shard.items()}, str(src / "model.safetensors"),
                  metadata={"format": "pt"})
        return src
    weight_map = {}
    for k, tensors in enumerate(shards, 1):
        name = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        save_file(tensors, str(src / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, name))
    (src / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return src


def make_hub_cache(cache: Path, src: Path, repo_id: str, commit: str = "0123456789abcdef0123456789abcdef01234567") -> Path:
    """A HF hub cache as huggingface_hub lays it out, holding the files of `src`: snapshots/COMMIT/FILE
    links to ../../blobs/NAME, LFS files (weights) named by their sha256, small files by a git-style
    40-digit hash, refs/main holding COMMIT. Returns the snapshot directory."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snap, blobs = repo / "snapshots" / commit, repo / "blobs"
    snap.mkdir(parents=True)
    blobs.mkdir(exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    for f in sorted(src.iterdir()):
        data = f.read_bytes()
        lfs = f.suffix in (".safetensors", ".bin", ".model")
        name = hashlib.sha256(data).hexdigest() if lfs else hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        (blobs / name).write_bytes(data)
        (snap / f.name).symlink_to(Path("..", "..", "blobs", name))
    return snap
