"""Multi-rank MindSpore directories (a training run's output, pre-sliced rank_{k}/ outputs) read as the
one model they hold, with MindSpore as the oracle: run directories are cut from a single-card conversion
by `mindspore.transform_checkpoints` under strategies written for the test (tests/runs.py), with the
optimizer state a training run saves, and our ms2hf of the run directory must write, byte for byte,
the files of our ms2hf of MindSpore's own merge of it.

The full matrix (mp 2 and 4, pp 1 and 2, with and without optimizer shard, .ckpt and safetensors) runs
on gqa-tied-bf16-sharded (tied: its embedding lives on both pipeline stages); every other fixture runs
every layout a MindFormers run of it could save (fixture_cases), and a --qkv-concat conversion one
more. Conversions and MindSpore's merges are made once per module and shared."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from llama_convert import HF2MSOptions, MS2HFOptions, convert_hf2ms, convert_ms2hf, plan_ms2hf
from llama_convert.core.errors import ConvertError
from llama_convert.core.options import parse_size
from llama_convert.formats import ckpt, strategy as st

from conftest import FIXTURE_DIRS, FIXTURES, raw, refused, run_cli
import runs
from runs import LORA

SMALLEST = "gqa-tied-bf16-sharded"
MATRIX = [(mp, pp, opt, fmt) for fmt in ("ckpt", "safetensors") for mp in (2, 4) for pp in (1, 2)
          for opt in (False, True)]


def fixture_cases(fixture: Path) -> list[tuple[int, int, bool, str]]:
    """(mp, pp, optimizer shard, format) for every layout a MindFormers run of this model could save:
    mp 2 and 4 where it divides the heads, KV heads, intermediate size and vocabulary (MindFormers
    refuses n_kv_heads % mp != 0), pp 1 and 2 where it divides the layers, both formats. A model with
    one KV head runs without model parallel: its cases are data parallel (mp 1). The optimizer shard
    alternates over the cases."""
    cfg = json.loads((fixture / "config.json").read_text())
    heads = cfg["num_attention_heads"]
    sizes = (heads, cfg.get("num_key_value_heads") or heads, cfg["intermediate_size"], cfg["vocab_size"])
    mps = [mp for mp in (2, 4) if all(n % mp == 0 for n in sizes)] or [1]
    pps = [pp for pp in (1, 2) if cfg["num_hidden_layers"] % pp == 0]
    cases = []
    for i, (fmt, mp, pp) in enumerate((f, m, p) for f in ("ckpt", "safetensors") for m in mps for p in pps):
        opt = (i + i // len(pps)) % 2 == 1 or mp * pp == 1   # one device per stage: a data-parallel run
        cases.append((mp, pp, opt, fmt))
    return cases


# The full matrix runs on the smallest fixture (mp 4 there too: MindSpore slices any layout, though
# MindFormers would not train its 2 KV heads on 4 cards); every other fixture runs its own cases.
OTHERS = [(p.name, case) for p in FIXTURE_DIRS if p.name != SMALLEST for case in fixture_cases(p)]


class Runs:
    """Single-card conversions and run directories, each built once per session."""

    def __init__(self, ms, root: Path):
        self.ms, self.root = ms, root
        self.singles: dict[tuple, Path] = {}
        self.runs: dict[tuple, tuple[Path, Path]] = {}
        self.merges: dict[Path, Path] = {}

    def single(self, fixture: str, qkv: bool = False, adapter: Path | None = None) -> Path:
        """A single-card conversion, with `adapter` the base plus mindpet's factors and a pet_config."""
        key = (fixture, qkv, adapter)
        if key not in self.singles:
            out = self.root / f"single-{fixture}-{int(qkv)}-{len(self.singles)}"
            convert_hf2ms(FIXTURES / fixture, out, HF2MSOptions(hash=False, qkv_concat=qkv,
                                                               adapter=str(adapter) if adapter else None))
            self.singles[key] = out
        return self.singles[key]

    def run(self, fixture: str, mp: int, pp: int, opt: bool, fmt: str, qkv: bool = False,
            saves: tuple = ((1, 8),), adapter: Path | None = None) -> tuple[Path, Path]:
        """(run directory, merged strategy), the run's YAML placed beside its checkpoint/ as a user would;
        with `adapter` a LoRA run: base weights, mindpet factors, Adam state for the factors only."""
        key = (fixture, mp, pp, opt, fmt, qkv, saves, adapter)
        if key not in self.runs:
            single = self.single(fixture, qkv, adapter)
            run = self.root / ("run-" + "-".join(map(str, key[:6])) + f"-{len(self.runs)}")
            tied = "lm_head.weight" not in {r.name for r in ckpt.scan(single / "model.ckpt")[0]}
            layers = json.loads((FIXTURES / fixture / "config.json").read_text())["num_hidden_layers"]
            merged = runs.build_run(self.ms, single, run, mp=mp, pp=pp, dp=2 if opt else 1, opt=opt, fmt=fmt,
                                    tied=tied, saves=saves, layers=layers)
            shutil.copyfile(single / "llama_config.yaml", run / "llama_config.yaml")
            self.runs[key] = (run, merged)
        return self.runs[key]

    def oracle(self, run: Path, merged: Path, fmt: str) -> Path:
        """MindSpore's own merge of a run directory, made once."""
        if run not in self.merges:
            self.merges[run] = runs.oracle_merge(self.ms, run, merged, self.root / f"oracle-{run.name}", fmt)
        return self.merges[run]

    def fresh(self, fixture: str = SMALLEST, **kw) -> tuple[Path, Path]:
        """A copy of a run directory a test may change."""
        run, merged = self.run(fixture, kw.pop("mp", 2), kw.pop("pp", 1), kw.pop("opt", False),
                               kw.pop("fmt", "ckpt"), **kw)
        copy = self.root / f"copy-{len(os.listdir(self.root))}"
        shutil.copytree(run, copy)
        return copy, merged


@pytest.fixture(scope="module")
def built(ms, tmp_path_factory) -> Runs:
    return Runs(ms, tmp_path_factory.mktemp("ranks"))


def hf_tensors(out: Path) -> dict[str, tuple[str, tuple, bytes]]:
    from safetensors.numpy import load_file
    found = {}
    for f in sorted(out.glob("*.safetensors")):
        found |= {k: (str(v.dtype), v.shape, v.tobytes()) for k, v in load_file(f).items()}
    return found


def output_files(out: Path) -> dict[str, bytes]:
    """Every file of an ms2hf output but conversion.json, which records the sources read (the rank files
    and strategy here, MindSpore's merged file there) and so rightly differs."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name != "conversion.json"}


def assert_same_as_mindspores_merge(built: Runs, tmp: Path, fixture: str, mp: int, pp: int, opt: bool, fmt: str,
                                    qkv: bool = False, shard: str | None = None, adapter: Path | None = None,
                                    merge_adapter: bool = False) -> dict:
    """Our ms2hf of the run directory writes byte for byte the files of our ms2hf of MindSpore's merge of
    it (`shard`: a --max-shard-size that cuts the output into several files with an index; `adapter`: a
    LoRA run of that PEFT adapter, its way back OUT/adapter/ or with `merge_adapter` merged weights)."""
    run, merged = built.run(fixture, mp, pp, opt, fmt, qkv, adapter=adapter)
    oracle = built.oracle(run, merged, fmt)
    options = MS2HFOptions(hash=False, merge_adapter=merge_adapter,
                           **({"max_shard_size": parse_size(shard)} if shard else {}))
    convert_ms2hf(oracle, tmp / "theirs", options, config=run / "llama_config.yaml")
    ours = convert_ms2hf(run, tmp / "ours", options)
    theirs_f, ours_f = output_files(tmp / "theirs"), output_files(tmp / "ours")
    assert ours_f.keys() == theirs_f.keys()
    assert len(hf_tensors(tmp / "ours")) >= 14   # Phi-3 fuses q/k/v and gate/up: 14 tensors
    different = [n for n in ours_f if ours_f[n] != theirs_f[n]]
    assert not different, different
    return ours.record


@pytest.mark.parametrize("mp,pp,opt,fmt", MATRIX,
                         ids=[f"{f}-mp{m}-pp{p}{'-optshard' if o else ''}" for m, p, o, f in MATRIX])
def test_a_run_directory_comes_back_as_mindspores_own_merge_of_it(built, tmp_path, mp, pp, opt, fmt):
    assert_same_as_mindspores_merge(built, tmp_path, SMALLEST, mp, pp, opt, fmt)


@pytest.mark.parametrize("fixture,case", OTHERS, ids=[f"{f}-{c[3]}-mp{c[0]}-pp{c[1]}{'-optshard' if c[2] else ''}"
                                                      for f, c in OTHERS])
def test_every_fixtures_run_directory_comes_back_as_mindspores_merge(built, tmp_path, fixture, case):
    assert_same_as_mindspores_merge(built, tmp_path, fixture, *case)


def test_fused_qkv_slices_merge_and_split_back_as_mindspores_merge(built, tmp_path):
    assert_same_as_mindspores_merge(built, tmp_path, SMALLEST, 2, 2, True, "ckpt", qkv=True)


def test_a_sharded_way_back_cuts_the_same_shards_and_index_as_from_mindspores_merge(built, tmp_path):
    assert_same_as_mindspores_merge(built, tmp_path, SMALLEST, 4, 2, True, "safetensors", shard="20KB")
    assert len(list((tmp_path / "ours").glob("model-*.safetensors"))) > 2


def test_the_way_back_equals_the_model_that_went_in(built, tmp_path):
    run, _ = built.run(SMALLEST, 4, 2, True, "ckpt")
    convert_ms2hf(run, tmp_path / "hf", MS2HFOptions(hash=False))
    source = hf_tensors(FIXTURES / SMALLEST)
    assert hf_tensors(tmp_path / "hf") == source


# ---------------------------------------------------------------- LoRA fine-tuning runs

LORA_CASES = [(2, 1, "ckpt"), (1, 2, "safetensors")]   # model parallel (factors cut), pipeline stages


@pytest.fixture(scope="module")
def peft_adapter(tmp_path_factory) -> Path:
    """A PEFT LoRA on every projection of the smallest fixture (B non-zero, as after training): model
    parallel cuts B of q/k/v/gate/up by rows and A of o/down by columns."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(FIXTURES / SMALLEST, dtype=torch.bfloat16)
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.05, init_lora_weights=False, target_modules=[
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    out = tmp_path_factory.mktemp("peft") / "adapter"
    get_peft_model(base, config).save_pretrained(out)
    return out


@pytest.mark.parametrize("mp,pp,fmt", LORA_CASES, ids=[f"{f}-mp{m}-pp{p}" for m, p, f in LORA_CASES])
def test_a_lora_run_comes_back_as_base_and_peft_adapter_as_from_mindspores_merge(built, tmp_path, peft_adapter,
                                                                                  mp, pp, fmt):
    record = assert_same_as_mindspores_merge(built, tmp_path, SMALLEST, mp, pp, False, fmt, adapter=peft_adapter)
    ours = tmp_path / "ours" / "adapter"
    assert raw(ours) == raw(peft_adapter)   # the factors PEFT wrote, byte for byte
    got, made = (json.loads((d / "adapter_config.json").read_text()) for d in (ours, peft_adapter))
    assert {**got, "target_modules": sorted(got["target_modules"])} == \
        {**made, "target_modules": sorted(made["target_modules"])}
    skipped = {s["name"] for s in record["skipped"]}
    assert "adam_m.model.layers.0.attention.wq.mindpet_delta_lora_a" in skipped
    assert not any(n.startswith("adam_m.") and LORA not in n for n in skipped)   # the base was frozen


def test_peft_loads_a_lora_runs_adapter_onto_its_base(built, tmp_path, peft_adapter):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    run, _ = built.run(SMALLEST, 2, 1, False, "ckpt", adapter=peft_adapter)
    convert_ms2hf(run, tmp_path / "hf", MS2HFOptions(hash=False))
    ids = torch.arange(1, 17).reshape(1, -1)
    with torch.no_grad():
        ours = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tmp_path / "hf"), tmp_path / "hf" / "adapter")
        made = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(FIXTURES / SMALLEST), peft_adapter)
        assert torch.equal(ours.eval()(ids).logits, made.eval()(ids).logits)


def test_a_lora_run_merged_comes_back_as_mindspores_merge_merged(built, tmp_path, peft_adapter):
    assert_same_as_mindspores_merge(built, tmp_path, SMALLEST, 2, 2, False, "ckpt", adapter=peft_adapter,
                                    merge_adapter=True)
    assert not (tmp_path / "ours" / "adapter").exists()
    assert hf_tensors(tmp_path / "ours") != hf_tensors(FIXTURES / SMALLEST)   # the delta is in the weights


def test_optimizer_state_and_bookkeeping_are_skipped_and_listed(built, tmp_path):
    run, _ = built.run(SMALLEST, 2, 1, False, "ckpt")
    record = convert_ms2hf(run, tmp_path / "hf", MS2HFOptions(hash=False)).record
    skipped = {s["name"]: s["reason"] for s in record["skipped"]}
    assert "adam_m.model.layers.0.attention.wq.weight" in skipped and "adam_v.lm_head.weight" not in skipped
    assert {"global_step", "learning_rate", "scale_sense", "epoch_num", "step_num", "loss_scale",
            "current_iterator_step", "last_overflow_iterator_step", "global_batch_size"} <= set(skipped)
    assert record["ranks"]["ranks"] == 2 and record["ranks"]["step"] == "1_8"
    sources = [f["name"] for f in record["source"]["files"]]
    assert any(p.endswith("ckpt_strategy_rank_0.ckpt") for p in sources)
    assert any(p.endswith("llama_rank_1-1_8.ckpt") for p in sources)


def test_a_tensor_that_is_neither_weight_nor_training_state_is_refused(built):
    run, _ = built.fresh()
    ms = built.ms
    for k in range(2):
        f = run / "checkpoint" / f"rank_{k}" / f"llama_rank_{k}-1_8.ckpt"
        params = ms.load_checkpoint(str(f))
        params["mystery.weight"] = ms.Parameter(ms.Tensor([1.0], ms.float32), name="mystery.weight")
        ms.save_checkpoint([{"name": n, "data": p} for n, p in params.items()], str(f))
    with pytest.raises(ConvertError, match=r"1 unknown tensors \(mystery.weight\); neither model weights nor known "
                                           r"training state"):
        plan_ms2hf(run)


def test_each_rank_is_read_from_the_save_mindformers_resumes_from(built):
    run, _ = built.fresh(saves=((1, 8), (1, 16)))
    for k in range(2):  # the newer save by time, which a sort by name would put first
        os.utime(run / "checkpoint" / f"rank_{k}" / f"llama_rank_{k}-1_16.ckpt", (2e9, 2e9))
        os.utime(run / "checkpoint" / f"rank_{k}" / f"llama_rank_{k}-1_8.ckpt", (1e9, 1e9))
    assert plan_ms2hf(run).source.ranks["step"] == "1_16"
    # meta.json: the earliest step every rank recorded as its last
    for k, step in ((0, 16), (1, 8)):
        (run / "checkpoint" / f"rank_{k}" / "meta.json").write_text(json.dumps(
            {"last_epoch": 1, "last_step": step, "last_ckpt_file": f"llama_rank_{k}-1_{step}.ckpt"}))
    chosen = plan_ms2hf(run).source.ranks
    assert chosen["step"] == "1_8" and chosen["chosen_by"].startswith("meta.json")
    assert plan_ms2hf(run, MS2HFOptions(step="16")).source.ranks["step"] == "1_16"
    assert plan_ms2hf(run, MS2HFOptions(step="1_8")).source.ranks["files"]["1"].endswith("llama_rank_1-1_8.ckpt")


def test_a_step_no_rank_saved_is_refused_listing_the_steps_there_are(built):
    run, _ = built.fresh(saves=((1, 8), (2, 8)))
    with pytest.raises(ConvertError, match=r"rank_0: has no checkpoint of step 5 .*1_8, 2_8"):
        plan_ms2hf(run, MS2HFOptions(step="5"))
    with pytest.raises(ConvertError, match=r"step 8 is saved in several epochs.*--step 2_8"):
        plan_ms2hf(run, MS2HFOptions(step="8"))


def test_a_missing_rank_is_refused_naming_it(built):
    run, _ = built.fresh(mp=4)
    shutil.rmtree(run / "checkpoint" / "rank_3")
    proc = run_cli("ms2hf", str(run), str(run.parent / f"{run.name}-hf"))
    line = refused(proc, "rank_3", "not found", "4 ranks")
    assert not (run.parent / f"{run.name}-hf").exists(), line


def test_a_rank_directory_without_its_file_is_refused_naming_it(built):
    run, _ = built.fresh()
    (run / "checkpoint" / "rank_1" / "llama_rank_1-1_8.ckpt").unlink()
    with pytest.raises(ConvertError, match=r"rank_1: holds no \.ckpt checkpoint"):
        plan_ms2hf(run)


def test_two_files_of_one_step_in_a_rank_are_refused_naming_both(built):
    run, _ = built.fresh()
    rank = run / "checkpoint" / "rank_1"
    shutil.copyfile(rank / "llama_rank_1-1_8.ckpt", rank / "other_rank_1-1_8.ckpt")
    os.utime(rank / "llama_rank_1-1_8.ckpt", (2e9, 2e9))
    with pytest.raises(ConvertError, match=r"rank_1: holds two checkpoints of the same step"):
        plan_ms2hf(run)


def test_a_rank_directory_from_another_run_is_refused_naming_it(built, tmp_path):
    run, _ = built.fresh()
    rank = run / "checkpoint" / "rank_1"
    (rank / "llama_rank_1-1_8.ckpt").rename(rank / "llama_rank_1-3_24.ckpt")
    with pytest.raises(ConvertError, match=r"llama_rank_1-3_24.ckpt: is not the save rank 0 made"):
        plan_ms2hf(run)
    # the same name, but another run's training state
    other, _ = built.fresh(mp=2, pp=1, opt=False, fmt="ckpt")
    ms = built.ms
    params = ms.load_checkpoint(str(other / "checkpoint" / "rank_1" / "llama_rank_1-1_8.ckpt"))
    params["global_step"] = ms.Parameter(ms.Tensor([9], ms.int32), name="global_step")
    (rank / "llama_rank_1-3_24.ckpt").unlink()
    ms.save_checkpoint([{"name": n, "data": p} for n, p in params.items()], str(rank / "llama_rank_1-1_8.ckpt"))
    with pytest.raises(ConvertError, match=r"rank_1/llama_rank_1-1_8.ckpt: global_step differs from rank 0"):
        plan_ms2hf(run)
    # a rank beyond what the strategy lays out
    shutil.copytree(run / "checkpoint" / "rank_0", run / "checkpoint" / "rank_2")
    with pytest.raises(ConvertError, match=r"rank_2: is beyond the 2 ranks the strategy"):
        plan_ms2hf(run)


def _rewrite_strategy(run: Path, change) -> None:
    for f in (run / "strategy").glob("*.ckpt"):
        smap = st.read(f)
        st.write(f, st.StrategyMap(smap.current_stage, {n: change(n, lay) for n, lay in smap.layouts.items()},
                                   smap.operators))


def test_a_strategy_that_does_not_fit_the_slices_is_refused_naming_the_file(built):
    run, _ = built.fresh()
    norm = "model.norm_out.weight"
    _rewrite_strategy(run, lambda n, lay: st.Layout(lay.dev_matrix, (0, -1)) if n == norm else lay)
    with pytest.raises(ConvertError, match=r"rank_0/llama_rank_0-1_8.ckpt: model.norm_out.weight: the strategy "
                                           r"ckpt_strategy_rank_0.ckpt does not match the slices found"):
        plan_ms2hf(run)


def test_a_wrong_split_axis_mindspore_would_merge_silently_is_refused_by_the_yamls_shapes(built):
    run, _ = built.fresh()
    wq = "model.layers.0.attention.wq.weight"
    _rewrite_strategy(run, lambda n, lay: st.Layout(lay.dev_matrix, (-1, 0)) if n == wq else lay)
    with pytest.raises(ConvertError, match=r"model.layers.0.attention.wq.weight is \[32, 128\] .* implies \[64, 64\]"):
        plan_ms2hf(run)


def test_a_run_without_a_strategy_or_a_yaml_is_refused_saying_which_flag_gives_it(built, tmp_path):
    run, merged = built.fresh()
    shutil.move(run / "strategy", tmp_path / "elsewhere")
    with pytest.raises(ConvertError, match=r"no strategy file found.*--strategy"):
        plan_ms2hf(run)
    assert plan_ms2hf(run, MS2HFOptions(strategy=str(tmp_path / "elsewhere"))).source.ranks["ranks"] == 2
    assert plan_ms2hf(run, MS2HFOptions(strategy=str(merged))).source.ranks["pipeline_stages"] == 1
    (run / "llama_config.yaml").rename(tmp_path / "train.yaml")
    with pytest.raises(ConvertError, match=r"no MindFormers YAML.*--config"):
        plan_ms2hf(run, MS2HFOptions(strategy=str(merged)))
    assert plan_ms2hf(run, MS2HFOptions(strategy=str(merged)), config=tmp_path / "train.yaml").tensors


def test_checkpoint_dir_and_output_dir_read_alike(built):
    run, _ = built.run(SMALLEST, 2, 2, False, "ckpt")
    names = [t.name for t in plan_ms2hf(run).tensors]
    assert [t.name for t in plan_ms2hf(run / "checkpoint", config=run / "llama_config.yaml").tensors] == names


def test_a_directory_of_rank_slices_with_one_merged_strategy_reads_like_a_run(built, tmp_path):
    run, merged = built.run(SMALLEST, 2, 2, False, "ckpt")
    out = tmp_path / "sliced"  # as `hf2ms --parallel` lays it out: rank_{k}/ at the top, any file name
    for rank in sorted((run / "checkpoint").iterdir()):
        (out / rank.name).mkdir(parents=True)
        shutil.copyfile(next(rank.glob("*.ckpt")), out / rank.name / "model.ckpt")
    shutil.copyfile(merged, out / "strategy.ckpt")
    shutil.copyfile(run / "llama_config.yaml", out / "llama_config.yaml")
    ours = convert_ms2hf(out, tmp_path / "hf", MS2HFOptions(hash=False))
    assert ours.record["ranks"]["pipeline_stages"] == 2 and ours.record["ranks"]["step"] is None
    assert hf_tensors(tmp_path / "hf") == hf_tensors(FIXTURES / SMALLEST)


def test_step_and_strategy_are_refused_for_a_single_checkpoint(built):
    with pytest.raises(ConvertError, match=r"--step is for a multi-rank directory"):
        plan_ms2hf(built.single(SMALLEST), MS2HFOptions(step="8"))


def test_inspect_and_diff_read_a_run_directory_as_its_merged_model(built):
    from llama_convert import diff_checkpoints, inspect_checkpoint
    run, _ = built.run(SMALLEST, 4, 2, True, "safetensors")
    info = inspect_checkpoint(run)
    single = inspect_checkpoint(built.single(SMALLEST))
    shapes = {t["name"]: t["shape"] for t in info["tensors"]}
    assert info["side"] == "ms" and all(shapes[t["name"]] == t["shape"] for t in single["tensors"])
    assert shapes["adam_m.model.layers.1.feed_forward.w2.weight"] == shapes["model.layers.1.feed_forward.w2.weight"]
    assert diff_checkpoints(run, FIXTURES / SMALLEST)["same"]
    assert diff_checkpoints(run, built.single(SMALLEST))["same"]


def test_verify_runs_mindformers_on_the_merged_model(built):
    from llama_convert import verify_conversion
    from llama_convert.verify import VerifyOptions
    run, _ = built.run(SMALLEST, 2, 2, True, "ckpt")
    for stream in (False, True):
        report = verify_conversion(FIXTURES / SMALLEST, run, VerifyOptions(stream=stream, batch=1, seq_len=8))
        assert report.passed and report.mode == ("streamed" if stream else "whole"), report.failures
