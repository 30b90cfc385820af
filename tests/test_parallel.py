"""hf2ms --parallel: MindSpore is the oracle for every rank's slice.

For .ckpt, mindspore.transform_checkpoints cuts the single-card conversion by OUR strategy into the
same bytes we wrote for every rank, and merges our ranks back into the single-card conversion. For
safetensors, load_distributed_checkpoint(None, ..., unified_safetensors_dir=...) cuts and
mindspore.parallel.unified_safetensors merges (MindSpore 2.9.0's transform_checkpoints cuts column
blocks of safetensors wrongly, so it is not the oracle there).

The whole matrix (both formats, with and without --qkv-concat, mp 1/2/4, pp 1/2) runs on every fixture,
the cases derived from its config.json: the mp its heads, KV heads, intermediate and hidden sizes divide
and the pp its layers allow; each mp that does not divide is a refusal case. Conversions are shared
per module.
"""
from __future__ import annotations

import glob
import shutil
import json
import os
from pathlib import Path

import numpy as np
import pytest

from conftest import FIXTURE_DIRS, FIXTURES, refused, run_cli
from llama_convert import ConvertError
from llama_convert.api import convert_hf2ms, plan_hf2ms
from llama_convert.core.options import HF2MSOptions, Parallel, flags
from llama_convert.formats import ckpt, safetensors
from llama_convert.formats import strategy as st
from llama_convert.formats.payload import FileRanges, InMemory, block_runs, pick, read_all

FULL = "mha-untied-fp32"  # the fixture every mp of the matrix divides (4 KV heads)
MPS, PPS = (1, 2, 4), (1, 2)


def _config(name: str) -> dict:
    return json.loads((FIXTURES / name / "config.json").read_text())


def must_divide(name: str) -> dict[str, int]:
    """The sizes MindFormers' Llama gives every model-parallel card an equal share of, from config.json."""
    c = _config(name)
    return {"num_attention_heads": c["num_attention_heads"],
            "num_key_value_heads": c.get("num_key_value_heads") or c["num_attention_heads"],
            "intermediate_size": c["intermediate_size"], "hidden_size": c["hidden_size"]}


def divides(name: str, mp: int) -> bool:
    return all(size % mp == 0 for size in must_divide(name).values())


def layout_of(mp: int, pp: int) -> str:
    return f"mp={mp}" + (f",pp={pp}" if pp > 1 else "")


# Every fixture, both formats, with and without --qkv-concat, every mp of MPS its config divides and every
# pp of PPS its layers allow; then data parallel and a vocabulary cut by rows.
CASES = ([(p.name, fmt, qkv, layout_of(mp, pp)) for p in FIXTURE_DIRS for mp in MPS if divides(p.name, mp)
          for pp in PPS if pp <= _config(p.name)["num_hidden_layers"]
          for fmt in ("ckpt", "safetensors") for qkv in (False, True)]
         + [(FULL, "ckpt", False, "mp=2,dp=2,vocab_emb_dp=false"), (FULL, "safetensors", True, "mp=4,vocab_emb_dp=false"),
            ("qwen2-tied-bf16", "safetensors", False, "mp=2,pp=2,dp=2")])
# The widest layout each fixture allows, for the tests that need one per fixture.
WIDEST = {p.name: layout_of(max(mp for mp in MPS if divides(p.name, mp)), 2) for p in FIXTURE_DIRS}


def _id(case) -> str:
    name, fmt, qkv, lay = case
    return f"{name}-{fmt}{'-qkv' if qkv else ''}-{lay}"


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """(fixture, format, qkv, layout or None) -> its conversion, made once per module, without the sha256
    of each file (the hashes are checked by their own test, on a conversion of its own)."""
    made: dict = {}
    root = tmp_path_factory.mktemp("parallel")

    def get(name: str, fmt: str, qkv: bool, layout: str | None) -> Path:
        key = (name, fmt, qkv, layout)
        if key not in made:
            out = root / f"{len(made)}"
            convert_hf2ms(FIXTURES / name, out, HF2MSOptions(format=fmt, qkv_concat=qkv, parallel=layout,
                                                                  hash=False))
            made[key] = out
        return made[key]
    return get


def tensors(path: Path) -> dict[str, tuple[str, tuple[int, ...], bytes]]:
    """name -> (dtype, shape, bytes) of one weight file, read by our scanners (the bytes are what count)."""
    refs = ckpt.scan(path)[0] if path.suffix == ".ckpt" else list(safetensors.read_header(path)[0].values())
    return {r.name: (r.dtype, tuple(r.shape), read_all(r.ranges).tobytes()) for r in refs}


def merged_strategy(out: Path, into: Path) -> Path:
    import mindspore
    into.mkdir(parents=True, exist_ok=True)
    mindspore.merge_pipeline_strategys(str(out / "strategy"), str(into / "merged.ckpt"))
    return into / "merged.ckpt"


def single_tensors(single: Path) -> dict:
    found: dict = {}
    for f in sorted(single.glob("*.ckpt")) + sorted(single.glob("*.safetensors")):
        found.update(tensors(f))
    return found


def unified_dir(single: Path, into: Path) -> Path:
    """The single-card safetensors as MindSpore's unified loader wants them: with param_name_map.json."""
    into.mkdir()
    names = {}
    for f in single.glob("*.safetensors"):
        os.symlink(f, into / f.name)
        names.update({n: f.name for n in safetensors.read_header(f)[0]})
    (into / "param_name_map.json").write_text(json.dumps(names))
    return into


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_mindspore_cuts_the_single_card_conversion_into_our_ranks_and_merges_ours_back_into_it(case, outputs,
                                                                                              tmp_path):
    import mindspore

    name, fmt, qkv, layout = case
    ours, single = outputs(name, fmt, qkv, layout), outputs(name, fmt, qkv, None)
    spec = Parallel.parse(layout)
    strategy = merged_strategy(ours, tmp_path)
    if fmt == "ckpt":
        (tmp_path / "src" / "rank_0").mkdir(parents=True)
        os.symlink(single / "model.ckpt", tmp_path / "src" / "rank_0" / "model.ckpt")
        mindspore.transform_checkpoints(str(tmp_path / "src"), str(tmp_path / "cut"), "checkpoint_", None, str(strategy))
        mindspore.transform_checkpoints(str(ours), str(tmp_path / "merged"), "merged_", str(strategy), None)
        theirs = {k: tmp_path / "cut" / f"rank_{k}" / f"checkpoint_{k}.ckpt" for k in range(spec.ranks)}
    else:
        unified = unified_dir(single, tmp_path / "unified")
        for k in range(spec.ranks):
            mindspore.load_distributed_checkpoint(None, predict_strategy=str(strategy), format="safetensors",
                                                  unified_safetensors_dir=str(unified),
                                                  dst_safetensors_dir=str(tmp_path / "cut"), rank_id=k)
        mindspore.parallel.unified_safetensors(str(ours), str(strategy), str(tmp_path / "merged"))
        theirs = {k: tmp_path / "cut" / f"rank_{k}" / "net.safetensors" for k in range(spec.ranks)}
    assert sorted(p.name for p in ours.glob("rank_*")) == sorted(f"rank_{k}" for k in range(spec.ranks))
    for k, path in theirs.items():
        assert tensors(ours / f"rank_{k}" / f"checkpoint_{k}.{fmt}") == tensors(path), f"rank {k}"
    merged = {}
    for f in sorted(glob.glob(str(tmp_path / "merged" / "**" / f"*.{fmt}"), recursive=True)):
        merged.update(tensors(Path(f)))
    assert merged == single_tensors(single)


def test_the_matrix_gives_every_fixture_each_mp_either_as_cases_in_both_formats_or_as_a_refusal():
    for p in FIXTURE_DIRS:
        cut = {int(lay.split(",")[0][3:]) for name, _, _, lay in CASES if name == p.name}
        refused_mps = {mp for name, mp in REFUSED_MPS if name == p.name}
        assert cut | refused_mps >= set(MPS) and not cut & refused_mps and 1 in cut, p.name
        assert {(fmt, qkv, lay) for name, fmt, qkv, lay in CASES if name == p.name} >= {
            (fmt, qkv, layout_of(1, pp)) for fmt in ("ckpt", "safetensors") for qkv in (False, True) for pp in PPS}
    assert {lay for *_, lay in CASES} >= {layout_of(mp, pp) for mp in MPS for pp in PPS}


def test_model_parallel_ranks_hold_distinct_row_and_column_blocks_and_data_parallel_ranks_repeat_them(outputs):
    out = outputs(FULL, "ckpt", False, "mp=2,dp=2,vocab_emb_dp=false")
    ranks = [tensors(out / f"rank_{k}" / f"checkpoint_{k}.ckpt") for k in range(4)]
    wq, wo = "model.layers.0.attention.wq.weight", "model.layers.0.attention.wo.weight"
    assert ranks[0][wq][1] == (32, 64) and ranks[0][wo][1] == (64, 32)
    assert ranks[0][wq] != ranks[1][wq] and ranks[0][wq] == ranks[2][wq] and ranks[1][wo] == ranks[3][wo]
    emb = "model.tok_embeddings.embedding_weight"
    assert ranks[0][emb][1] == (128, 64)  # vocab_emb_dp false: the vocabulary is cut by rows
    norm = "model.norm_out.weight"
    assert all(r[norm] == ranks[0][norm] for r in ranks)


def test_each_pipeline_stage_holds_its_layers_the_embedding_first_and_norm_and_lm_head_last(outputs):
    out = outputs(FULL, "ckpt", False, "mp=1,pp=2")
    first, last = (set(tensors(out / f"rank_{k}" / f"checkpoint_{k}.ckpt")) for k in (0, 1))
    assert "model.tok_embeddings.embedding_weight" in first and "model.layers.0.attention.wq.weight" in first
    assert {"lm_head.weight", "model.norm_out.weight", "model.layers.1.attention.wq.weight"} <= last
    assert not first & last


def test_a_tied_embedding_sits_on_the_first_and_the_last_stage(outputs):
    out = outputs("gqa-tied-bf16-sharded", "ckpt", True, "mp=2,pp=2")
    emb = "model.tok_embeddings.embedding_weight"
    for k in range(4):
        assert emb in tensors(out / f"rank_{k}" / f"checkpoint_{k}.ckpt")
    stages = [st.read(p) for p in sorted((out / "strategy").glob("*.ckpt"))]
    assert [s.operators[0].stage for s in stages] == [0, 1] and all(emb in s.layouts for s in stages)


@pytest.mark.parametrize("layers,pp,offset,stages", [(2, 2, (0, 0), [0, 1]), (5, 2, (1, 0), [0, 0, 0, 1, 1]),
                                                     (7, 4, (1, 1, 1, 0), [0, 0, 1, 1, 2, 2, 3]),
                                                     (6, 4, (0, 1, 1, 0), [0, 1, 1, 2, 2, 3])])
def test_layers_go_to_stages_as_mindformers_layer_setting_assigns_them_with_the_remainder_as_offset(
        layers, pp, offset, stages):
    from llama_convert.plan.parallel import stage_layers
    assert stage_layers(layers, pp) == (offset, stages)
    from mindformers.parallel_core.training_graph.transformer.utils import LayerSetting
    from mindformers.modules.transformer.transformer import TransformerOpParallelConfig
    setting = LayerSetting(layers, list(offset), TransformerOpParallelConfig(pipeline_stage=pp))
    assert [int(s) for s in setting.pp_ids] == stages


def test_the_strategy_files_are_mindspores_per_stage_files_and_conversion_json_hashes_every_rank_file(tmp_path):
    import mindspore
    out = tmp_path / "out"
    convert_hf2ms(FIXTURES / FULL, out, HF2MSOptions(format="safetensors", parallel="mp=2,pp=2"))
    assert sorted(p.name for p in (out / "strategy").iterdir()) == ["ckpt_strategy_rank_0.ckpt",
                                                                     "ckpt_strategy_rank_2.ckpt"]
    layouts = mindspore.build_searched_strategy(str(out / "strategy" / "ckpt_strategy_rank_0.ckpt"))
    wo = layouts["model.layers.0.attention.wo.weight"]
    assert tuple(wo.dev_matrix[0].dim) == (1, 2) and tuple(wo.tensor_map[0].dim) == (-1, 0)
    record = json.loads((out / "conversion.json").read_text())
    hashed = {o["name"]: o["sha256"] for o in record["outputs"]}
    files = [p for p in out.rglob("*") if p.is_file() and p.name != "conversion.json"]
    assert {str(p.relative_to(out)) for p in files} == set(hashed)
    import hashlib
    assert all(hashlib.sha256(p.read_bytes()).hexdigest() == hashed[str(p.relative_to(out))] for p in files)
    assert record["options"]["parallel"] == "mp=2,pp=2,dp=1"


@pytest.mark.parametrize("fmt", ["ckpt", "safetensors"])
def test_mindformers_sees_a_multi_rank_checkpoint_and_finds_each_ranks_file(outputs, fmt):
    from mindformers.tools.register import MindFormerConfig
    from mindformers.trainer.utils import check_path_include_total_ckpt, get_distribute_checkpoint_path
    from mindformers.utils.load_checkpoint_utils import (CheckpointFileMode, _get_checkpoint_mode,
                                                         validate_config_with_file_mode)
    out = outputs(FULL, fmt, False, "mp=2,pp=2")
    config = MindFormerConfig(str(out / "llama_config.yaml"))
    assert config.load_checkpoint == str(out) and config.src_strategy_path_or_dir == str(out / "strategy")
    config.checkpoint = MindFormerConfig(load_path=config.load_checkpoint)
    mode = _get_checkpoint_mode(config)
    assert mode == CheckpointFileMode.MULTI_CHECKPOINT_FILE_WITH_RANK_ID.value
    validate_config_with_file_mode(mode, config.use_parallel, config.auto_trans_ckpt)
    assert not check_path_include_total_ckpt(str(out))
    for k in range(4):
        assert get_distribute_checkpoint_path(str(out), k, fmt) == str(out / f"rank_{k}" / f"checkpoint_{k}.{fmt}")
    from mindformers.modules.transformer.transformer import TransformerOpParallelConfig
    pc = TransformerOpParallelConfig(**config.parallel_config)  # as build_parallel_config makes it
    assert (pc.data_parallel, pc.model_parallel, pc.pipeline_stage, pc.vocab_emb_dp) == (1, 2, 2, True)
    assert config.model.model_config.offset == [0, 0] and config.auto_trans_ckpt is False


@pytest.mark.parametrize("device", ["CPU", "Ascend"])
def test_every_parallel_yaml_passes_mindformers_validators(device, tmp_path):
    from mindformers.core.context.validators import execute_validator
    from mindformers.tools.register import MindFormerConfig
    from llama_convert.output.run_yaml import yaml_text
    for name, layout in WIDEST.items():
        for spec in (layout, "mp=1,pp=2,dp=2,vocab_emb_dp=false"):
            plan = plan_hf2ms(FIXTURES / name, HF2MSOptions(device=device, parallel=spec))
            path = tmp_path / f"{name}-{spec}.yaml"
            path.write_text(yaml_text(plan, tmp_path))
            execute_validator(MindFormerConfig(str(path)))


# Every (fixture, mp) whose config does not divide, for the mp of the matrix and two more (3, 8).
REFUSED_MPS = [(p.name, mp) for p in FIXTURE_DIRS for mp in (*MPS, 3, 8) if not divides(p.name, mp)]


@pytest.mark.parametrize("name,mp", REFUSED_MPS, ids=[f"{n}-mp={mp}" for n, mp in REFUSED_MPS])
def test_a_model_parallel_mindformers_refuses_is_refused_naming_the_dimension_and_the_values_that_work(name, mp):
    with pytest.raises(ConvertError) as e:
        plan_hf2ms(FIXTURES / name, HF2MSOptions(parallel=f"mp={mp}"))
    said, sizes = str(e.value), must_divide(name)
    assert any(f"{key} is {size}, which model_parallel {mp} does not divide" in said
               for key, size in sizes.items() if size % mp), said
    works = [m for m in range(1, max(sizes.values()) + 1) if divides(name, m)]
    assert f"(use mp = {', '.join(map(str, works))})" in said, said


@pytest.mark.parametrize("name", [p.name for p in FIXTURE_DIRS])
def test_more_pipeline_stages_than_layers_is_refused_naming_the_layer_count(name):
    layers = _config(name)["num_hidden_layers"]
    with pytest.raises(ConvertError) as e:
        plan_hf2ms(FIXTURES / name, HF2MSOptions(parallel=f"mp=1,pp={layers + 1}"))
    assert f"has {layers} layers, fewer than the pipeline stages" in str(e.value)
    assert f"(use pp <= {layers})" in str(e.value)


def test_the_refusal_is_one_line_and_exit_2_with_nothing_written(tmp_path):
    proc = run_cli("hf2ms", FIXTURES / "mqa-bias-fp16-bin", tmp_path / "out", "--parallel", "mp=2")
    refused(proc, "config.json", "num_key_value_heads is 1", "use mp = 1")
    assert not (tmp_path / "out").exists()
    refused(run_cli("hf2ms", FIXTURES / FULL, tmp_path / "out", "--parallel", "pp=2"), "--parallel", "mp=M")
    refused(run_cli("hf2ms", FIXTURES / FULL, tmp_path / "out", "--parallel", "mp=2", "--max-shard-size", "1MB"),
            "--max-shard-size")


@pytest.mark.parametrize("text,canonical", [("mp=8", "mp=8,pp=1,dp=1"), (" mp=4, pp=2 ", "mp=4,pp=2,dp=1"),
                                            ("model_parallel=2,data_parallel=2", "mp=2,pp=1,dp=2"),
                                            ("mp=2,vocab_emb_dp=false", "mp=2,pp=1,dp=1,vocab_emb_dp=false")])
def test_parallel_is_written_in_a_few_ways_and_recorded_one_way(text, canonical):
    assert str(Parallel.parse(text)) == canonical
    assert flags(HF2MSOptions)["parallel"].manifest  # a bulk manifest row may set it


@pytest.mark.parametrize("text", ["", "mp", "mp=0", "mp=two", "pp=2", "mp=2,mp=4", "tp=2", "mp=2,vocab_emb_dp=maybe"])
def test_a_parallel_spec_that_cannot_be_read_says_how_to_write_it(text):
    with pytest.raises(ValueError):
        Parallel.parse(text)


def test_a_rank_reads_a_row_block_as_one_range_and_a_column_block_as_one_range_per_row(tmp_path):
    full = np.arange(6 * 8, dtype=np.float32).reshape(6, 8)
    path = tmp_path / "t.bin"
    path.write_bytes(b"\0" * 100 + full.tobytes())
    src = FileRanges(path, ((100, full.nbytes),))
    rows = pick(src, block_runs(full.shape, 4, (slice(3, 6), slice(0, 8))))
    cols = pick(src, block_runs(full.shape, 4, (slice(0, 6), slice(4, 8))))
    assert isinstance(rows, FileRanges) and len(rows.segments) == 1
    assert isinstance(cols, FileRanges) and len(cols.segments) == 6
    assert read_all(rows).tobytes() == full[3:6].tobytes() and read_all(cols).tobytes() == full[:, 4:].tobytes()
    in_memory = pick(InMemory(full), block_runs(full.shape, 4, (slice(0, 6), slice(0, 4))))
    assert read_all(in_memory).tobytes() == full[:, :4].tobytes()


def test_force_replaces_an_earlier_parallel_output_but_not_one_a_user_added_to(tmp_path):
    out = tmp_path / "out"
    options = HF2MSOptions(parallel="mp=2")
    convert_hf2ms(FIXTURES / FULL, out, options)
    convert_hf2ms(FIXTURES / FULL, out, options, force=True)
    (out / "rank_1" / "notes.txt").write_text("mine")
    with pytest.raises(ConvertError, match="rank_1/notes.txt"):
        convert_hf2ms(FIXTURES / FULL, out, options, force=True)
    assert (out / "rank_1" / "notes.txt").read_text() == "mine"


CHILD = "extends: llama\nname: child\nhf: {architectures: [ChildForCausalLM], model_type: child, model_class: ChildForCausalLM}\n"


@pytest.mark.parametrize("rules,said", [
    ("  - {name: 'model.layers.{i}.attention_norm.weight', from: [attn_norm], split: none, stage: last}\n",
     "ms_tensors[0] (model.layers.{i}.attention_norm.weight): stage: last on a tensor of every layer"),
    ("  - {name: model.norm_out.weight, from: [norm], split: diagonal}\n", "ms_tensors[0].split: \"diagonal\""),
], ids=["stage-on-a-layer", "unknown-split"])
def test_a_tables_split_and_stage_words_are_checked_when_it_loads(tmp_path, rules, said):
    from llama_convert.table.loader import load_table
    path = tmp_path / "child.yaml"
    path.write_text(CHILD + "ms_tensors:\n" + rules)
    with pytest.raises(ConvertError) as e:
        load_table(str(path))
    assert e.value.one_line().startswith(f"{path}: {said}"), e.value.one_line()


def test_parallel_refuses_a_table_that_does_not_say_how_a_tensor_is_cut(tmp_path):
    import yaml
    from llama_convert.table.loader import load_table
    from llama_convert.table.loader import tables_dir
    rules = yaml.safe_load((tables_dir() / "llama.yaml").read_text())["ms_tensors"]
    for rule in rules:
        if rule["name"] == "model.norm_out.weight":
            del rule["split"]
    path = tmp_path / "child.yaml"
    shutil.copy(tables_dir() / "llama.yaml", tmp_path / "llama.yaml")
    path.write_text("extends: llama.yaml\nname: child\n" + yaml.safe_dump({"ms_tensors": rules}))
    load_table(str(path))  # a table without split words converts to one card as before
    with pytest.raises(ConvertError, match="model.norm_out.weight has no `split:`") as e:
        plan_hf2ms(FIXTURES / FULL, HF2MSOptions(parallel="mp=2", table=str(path)))
    assert str(path) in str(e.value)


def test_a_bulk_manifest_row_may_ask_for_parallel_output_and_a_bad_spec_fails_that_row_alone(tmp_path):
    from llama_convert.bulk.manifest import read_manifest
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in [
        {"src": str(FIXTURES / FULL), "out": "a", "parallel": "mp=4,pp=2"},
        {"src": str(FIXTURES / FULL), "out": "b", "parallel": "mp=four"}]) + "\n")
    good, bad = read_manifest(manifest)
    assert good.problem is None and good.options.parallel == "mp=4,pp=2,dp=1"
    assert bad.problem is not None and "parallel" in bad.problem and "mp" in bad.problem


def test_a_column_block_gathered_in_pieces_is_sliced_as_mindspore_slices_a_large_tensor(outputs, tmp_path):
    import mindspore
    small = tmp_path / "small"
    convert_hf2ms(FIXTURES / FULL, small, HF2MSOptions(parallel="mp=2", ckpt_slice_bytes=1000))
    for k in range(2):
        ours = small / f"rank_{k}" / f"checkpoint_{k}.ckpt"
        loaded = mindspore.load_checkpoint(str(ours))
        whole = tensors(outputs(FULL, "ckpt", False, "mp=2") / f"rank_{k}" / f"checkpoint_{k}.ckpt")
        assert set(loaded) == set(whole)
        for name, (dt, shape, data) in whole.items():
            assert loaded[name].asnumpy().tobytes() == data and tuple(loaded[name].shape) == shape, name
        wo = {r.name: r for r in ckpt.scan(ours)[0]}["model.layers.0.attention.wo.weight"]
        assert len(wo.ranges.segments) == 9  # 64 x 32 float32 = 8192 bytes in slices of 1000 bytes
