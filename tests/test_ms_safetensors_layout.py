"""`--format safetensors` writes MindSpore's layout: the weight files beside `param_name_map.json`, which
`mindspore.load_distributed_checkpoint(..., format="safetensors", unified_safetensors_dir=OUT)` reads, and
none of the names MindFormers takes for a HuggingFace checkpoint (`model.safetensors`,
`*model.safetensors.index.json`). Outputs of earlier versions (HF's names, no map) still read everywhere.

One conversion per layout (a single file, four shards) for the module; the old layout is made from a copy
of each by renaming, as earlier versions named the files.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import FIXTURES, refused, run_cli
from llama_convert import (ConvertError, HF2MSOptions, convert_hf2ms, convert_ms2hf, diff_checkpoints,
                           inspect_checkpoint, plan_bulk, plan_ms2hf, run_bulk, verify_conversion)

LAYOUTS = {"single": FIXTURES / "mha-untied-fp32", "sharded": FIXTURES / "gqa-tied-bf16-sharded"}


@pytest.fixture(scope="module")
def outputs(tmp_path_factory) -> dict[str, Path]:
    """layout -> OUT_DIR of `hf2ms --format safetensors` (new), and `old-<layout>` -> the same as earlier
    versions laid it out: model.safetensors, or the shards with model.safetensors.index.json, and no map."""
    root = tmp_path_factory.mktemp("ms-safetensors")
    found = {}
    for layout, src in LAYOUTS.items():
        out = convert_hf2ms(src, root / layout, HF2MSOptions(format="safetensors")).out_dir
        found[layout] = out
        found[f"old-{layout}"] = as_earlier_versions_wrote_it(out, root / f"old-{layout}")
    return found


def as_earlier_versions_wrote_it(new: Path, old: Path) -> Path:
    shutil.copytree(new, old)
    name_map = json.loads((old / "param_name_map.json").read_text())
    (old / "param_name_map.json").unlink()
    files = sorted(set(name_map["weight_map"].values()))
    renamed = {files[0]: "model.safetensors"} if len(files) == 1 else {}
    for before, after in renamed.items():
        (old / before).rename(old / after)
    if len(files) > 1:
        (old / "model.safetensors.index.json").write_text(json.dumps(name_map, indent=2) + "\n")
    record = json.loads((old / "conversion.json").read_text())
    outputs = [f for f in record["outputs"] if f["name"] != "param_name_map.json"]
    for f in outputs:
        f["name"] = renamed.get(f["name"], f["name"])
    if len(files) > 1:
        outputs.append({"name": "model.safetensors.index.json", "size": (old / "model.safetensors.index.json").stat().st_size})
    record["outputs"] = outputs
    (old / "conversion.json").write_text(json.dumps(record, indent=2) + "\n")
    return old


@pytest.fixture(scope="module")
def mindformers(ms):
    import mindformers
    return mindformers


def params_of(ms, files) -> dict[str, tuple[str, np.ndarray]]:
    """name -> (dtype, values widened exactly to float32), as mindspore loads them."""
    found = {}
    for f in files:
        for name, p in ms.load_checkpoint(str(f), format="safetensors").items():
            found[name] = (str(p.dtype), p.astype(ms.float32).asnumpy())
    return found


def assert_same_params(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name][0] == b[name][0], name
        np.testing.assert_array_equal(a[name][1], b[name][1], err_msg=name)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_no_file_has_a_name_mindformers_takes_for_a_huggingface_checkpoint(outputs, mindformers, layout):
    from mindformers.checkpoint.utils import is_hf_checkpoint
    from mindformers.utils import is_hf_safetensors_dir
    out = outputs[layout]
    assert not (out / "model.safetensors").exists() and not list(out.glob("*model.safetensors.index.json"))
    assert not is_hf_checkpoint(str(out))
    assert not is_hf_safetensors_dir(str(out), mindformers.models.LlamaForCausalLM)
    assert is_hf_checkpoint(str(outputs[f"old-{layout}"])) or layout == "sharded"  # what the old names did


@pytest.mark.parametrize("layout", LAYOUTS)
def test_param_name_map_maps_every_parameter_to_the_file_holding_it(outputs, ms, layout):
    out = outputs[layout]
    name_map = json.loads((out / "param_name_map.json").read_text())
    files = sorted(out.glob("*.safetensors"))
    assert len(files) == (1 if layout == "single" else 4)
    holder = {name: f.name for f in files for name in ms.load_checkpoint(str(f), format="safetensors")}
    assert name_map["weight_map"] == holder
    assert name_map["metadata"]["total_size"] == sum(f.stat().st_size for f in files) - sum(
        8 + int.from_bytes(f.read_bytes()[:8], "little") for f in files)  # the tensors' bytes, headers left out


@pytest.mark.parametrize("layout", LAYOUTS)
def test_load_distributed_checkpoint_loads_the_output_into_a_network(outputs, mindformers, ms, layout):
    import yaml
    out = outputs[layout]
    mc = {k: v for k, v in yaml.safe_load((out / "llama_config.yaml").read_text())["model"]["model_config"].items()
          if k not in ("type", "checkpoint_name_or_path")}
    mc.update(use_past=False, is_dynamic=False)  # the weights, without the Ascend YAML's KV cache
    net = mindformers.models.LlamaForCausalLM(mindformers.models.LlamaConfig(**mc))

    not_loaded, unused = ms.load_distributed_checkpoint(net, format="safetensors", unified_safetensors_dir=str(out))

    assert not_loaded == [] and unused == []
    loaded = {p.name: (str(p.dtype), p.astype(ms.float32).asnumpy()) for p in net.get_parameters()}
    assert_same_params(loaded, params_of(ms, out.glob("*.safetensors")))


def one_card_strategy(ms, path: Path, out: Path) -> Path:
    """A strategy file as MindSpore writes one (protobuf ParallelStrategyMap) for one card: every
    parameter whole (dev_matrix [1], no dimension mapped to a device)."""
    from mindspore.train import node_strategy_pb2
    strategy = node_strategy_pb2.ParallelStrategyMap(current_stage=0)
    for f in sorted(out.glob("*.safetensors")):
        for name, p in ms.load_checkpoint(str(f), format="safetensors").items():
            layouts = strategy.parallel_layout_item.add(param_name=name).parallel_layouts
            layouts.field, layouts.opt_weight_shard_step, layouts.opt_weight_shard_size = 0, 0, 0
            layouts.dev_matrix.add(dim=[1])
            layouts.tensor_map.add(dim=[-1] * len(p.shape))
            layouts.param_split_shape.add()
            layouts.indices_offset.add()
    path.write_bytes(strategy.SerializeToString())
    return path


@pytest.mark.parametrize("layout", LAYOUTS)
def test_load_distributed_checkpoint_slices_the_output_for_a_one_card_strategy(outputs, ms, tmp_path, layout):
    out = outputs[layout]
    strategy = one_card_strategy(ms, tmp_path / "strategy.ckpt", out)
    assert ms.build_searched_strategy(str(strategy))

    ms.load_distributed_checkpoint(None, predict_strategy=str(strategy), format="safetensors",
                                   unified_safetensors_dir=str(out), dst_safetensors_dir=str(tmp_path / "sliced"),
                                   max_process_num=1)

    assert_same_params(params_of(ms, [tmp_path / "sliced" / "rank_0" / "net.safetensors"]),
                       params_of(ms, out.glob("*.safetensors")))


def test_without_the_map_mindspore_cannot_load_the_shards_of_earlier_versions(outputs, ms):
    with pytest.raises(ValueError, match="param_name_map.json"):
        ms.load_distributed_checkpoint(None, format="safetensors", unified_safetensors_dir=str(outputs["old-sharded"]),
                                       dst_safetensors_dir="unused", rank_id=0)


# ---------------------------------------------------------------- our readers, on both layouts


@pytest.mark.parametrize("layout", LAYOUTS)
def test_inspect_diff_and_ms2hf_read_the_new_and_the_old_layout_alike(outputs, tmp_path, layout):
    new, old = outputs[layout], outputs[f"old-{layout}"]
    seen = [inspect_checkpoint(out) for out in (new, old)]
    assert seen[0]["side"] == seen[1]["side"] == "ms" and seen[0]["tensors"] == seen[1]["tensors"]
    assert diff_checkpoints(new, old)["same"]
    for name, out in (("new", new), ("old", old)):
        back = convert_ms2hf(out, tmp_path / name).out_dir
        assert diff_checkpoints(LAYOUTS[layout], back, strict_dtype=True)["same"]  # the source, byte for byte


def test_verify_reads_the_old_layout(outputs, ms):
    """(The new layout is verified with every fixture in test_verify.py.)"""
    assert verify_conversion(LAYOUTS["sharded"], outputs["old-sharded"]).passed


def test_bulk_counts_new_and_old_outputs_as_done(outputs, tmp_path):
    hf2ms = [{"src": str(LAYOUTS[layout]), "out": str(outputs[prefix + layout]), "format": "safetensors"}
             for layout in LAYOUTS for prefix in ("", "old-")]
    ms2hf = [{"src": str(outputs[which]), "out": str(tmp_path / which), "direction": "ms2hf"}
             for which in ("sharded", "old-sharded")]
    for rows in (hf2ms, ms2hf):
        manifest = tmp_path / f"{rows[0].get('direction', 'hf2ms')}.jsonl"
        manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
        if rows is ms2hf:
            assert run_bulk(manifest)["exit_code"] == 0
        assert [r["reason"] for r in plan_bulk(manifest)["rows"]] == ["done (conversion.json matches)"] * len(rows)


def test_the_map_alone_marks_a_directory_as_mindspore(outputs, tmp_path):
    out = tmp_path / "weights-only"
    shutil.copytree(outputs["sharded"], out)
    (out / "llama_config.yaml").unlink()
    assert inspect_checkpoint(out)["side"] == "ms"


@pytest.mark.parametrize("mend", ["moved", "missing", "unmapped"])
def test_a_map_that_disagrees_with_the_files_is_refused_by_name(outputs, tmp_path, mend):
    """MindSpore silently skips a parameter mapped to a file that lacks it: the parity gate must not pass it."""
    out = tmp_path / "out"
    shutil.copytree(outputs["sharded"], out)
    data = json.loads((out / "param_name_map.json").read_text())
    weight_map = data["weight_map"]
    name = "model.layers.0.attention.wq.weight"
    if mend == "moved":
        weight_map[name] = "model-00004-of-00004.safetensors"
    elif mend == "missing":
        weight_map["model.layers.9.attention.wq.weight"] = "model-00001-of-00004.safetensors"
    else:
        del weight_map[name]
    (out / "param_name_map.json").write_text(json.dumps(data))
    for read in (inspect_checkpoint, plan_ms2hf, lambda p: verify_conversion(LAYOUTS["sharded"], p)):
        with pytest.raises(ConvertError, match="param_name_map.json"):
            read(out)
    if mend == "moved":  # as the user sees it
        refused(run_cli("inspect", out), "param_name_map.json", "model-00004-of-00004.safetensors")
