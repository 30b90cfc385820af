"""One table per architecture: chosen by the model, extended by difference, checked when loaded, and
read both ways; the library API keeps the two directions' options apart."""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import FIXTURES, REAL_CONFIGS, refused, run_cli
from llama_convert import HF2MSOptions, MS2HFOptions, convert_hf2ms, convert_ms2hf, plan_hf2ms, plan_ms2hf
from llama_convert.table.config_rules import RULES, translate
from llama_convert.core.errors import ConvertError
from llama_convert.table.loader import load_table, select_for_hf, shipped_tables, tables_dir

FAMILY_CONFIGS = sorted((REAL_CONFIGS / "family").glob("*.json")) if (REAL_CONFIGS / "family").exists() else []
QWEN2 = FIXTURES / "qwen2-tied-bf16"
LLAMA = FIXTURES / "mha-untied-fp32"


def hf_copy(src: Path, tmp: Path, **config) -> Path:
    dst = tmp / "src"
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps({**cfg, **config}))
    return dst


# ------------------------------------------------------------------ the shipped tables

def test_every_shipped_table_loads_and_claims_its_own_architectures():
    tables = shipped_tables()
    assert {t.name for t in tables} >= {"llama", "qwen2", "mistral"}
    claimed = [a for t in tables for a in t.hf.architectures]
    assert len(claimed) == len(set(claimed)), "an architecture is claimed by two tables"
    for t in tables:
        assert t.hf.model_class in t.hf.architectures, t.name  # ms2hf writes one it would read back


def test_every_config_rule_has_its_inverse():
    assert all(r.inverse is not None for r in RULES.values()), [n for n, r in RULES.items() if r.inverse is None]


@pytest.mark.parametrize("fixture,table", [("mha-untied-fp32", "llama"), ("gqa-llama3-rope", "llama"),
                                           ("qwen2-tied-bf16", "qwen2"), ("qwen2-untied-fp32-sharded", "qwen2")])
def test_the_table_is_chosen_by_the_configs_architecture(fixture, table):
    assert plan_hf2ms(FIXTURES / fixture).table.name == table


def test_without_a_known_architecture_model_type_chooses(tmp_path):
    src = hf_copy(QWEN2, tmp_path, architectures=["Qwen2ForSomethingNew"])
    assert select_for_hf(json.loads((src / "config.json").read_text()), src / "config.json").name == "qwen2"


def test_an_architecture_no_table_converts_is_one_line_naming_it_and_the_tables(tmp_path):
    src = hf_copy(LLAMA, tmp_path, architectures=["GPTNeoXForCausalLM"], model_type="gpt_neox",
                  use_sliding_window=False)
    refused(run_cli("hf2ms", src, tmp_path / "out"), "config.json: architectures", "GPTNeoXForCausalLM",
            "not converted by any mapping table", "qwen2: Qwen2ForCausalLM", "--table",
            absent=("unknown config key", "use_sliding_window"))


def test_table_overrides_the_choice_and_the_wrong_table_says_so_by_key(tmp_path):
    refused(run_cli("hf2ms", QWEN2, tmp_path / "out", "--table", "llama"), "config.json: architectures",
            "not converted by table llama")


def test_table_accepts_a_path(tmp_path):
    for name in ("llama.yaml", "qwen2.yaml"):
        shutil.copy(tables_dir() / name, tmp_path / name)
    proc = run_cli("hf2ms", QWEN2, tmp_path / "out", "--table", tmp_path / "qwen2.yaml", "--dry-run", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["model_yaml"]["model"]["model_config"]["qkv_has_bias"] is True


def test_an_unknown_table_name_lists_the_shipped_ones(tmp_path):
    refused(run_cli("hf2ms", QWEN2, tmp_path / "out", "--table", "qwen3"), "--table qwen3", "no such mapping table",
            "llama", "qwen2")


# ------------------------------------------------------------------ extends, and the checks at load time

def write_table(tmp: Path, name: str, text: str) -> Path:
    shutil.copy(tables_dir() / "llama.yaml", tmp / "llama.yaml")
    path = tmp / f"{name}.yaml"
    path.write_text(text)
    return path


HEAD = "extends: llama\nname: child\n"
BASE = HEAD + "hf: {architectures: [ChildForCausalLM], model_type: child, model_class: ChildForCausalLM}\n"


def test_a_table_that_extends_another_states_only_its_differences(tmp_path):
    path = write_table(tmp_path, "child", BASE + "config:\n  mlp_bias: null\n  new_key: {ignore: harmless}\n")
    child, base = load_table(str(path)), load_table()
    assert child.hf.model_type == "child" and "mlp_bias" not in child.config
    assert child.config["new_key"].verb == "ignore" and child.config["new_key"].ignore == "harmless"
    assert child.ms_tensors == base.ms_tensors and child.hf_tensors == base.hf_tensors
    assert child.sha256 != base.sha256  # a change to either file changes what a conversion depended on


@pytest.mark.parametrize("text,said", [
    ("extends: child.yaml\nname: child\n", "extends itself"),
    ("extends: nowhere\nname: child\n", "extends: 'nowhere': no table nowhere.yaml among the shipped tables"),
    ("extends: ./nowhere.yaml\nname: child\n", "extends: './nowhere.yaml': no table"),
    (BASE + "sections: {}\n", "unknown section 'sections'"),
    (BASE + "flags:\n  tied: {is: 'tie_word_embedings'}\n", "flags.tied: 'tie_word_embedings' reads 'tie_word_embedings'"),
    (BASE + "flags:\n  tied: {is: '__import__(\"os\")'}\n", "flags.tied: '__import__(\"os\")': only len, set, min, max may be called"),
    (BASE + "dims:\n  kv: kv_heads * head_dimension\n", "dims.kv: 'kv_heads * head_dimension' reads 'head_dimension'"),
    (BASE + "config:\n  sliding_window: {check: 'value >>= 1', type: int}\n", "config.sliding_window: 'value >>= 1' is not an expression"),
    (BASE + "config:\n  sliding_window: {check: 'value > 1'}\n", "config.sliding_window: declares no `type:`"),
    (HEAD + "hf: {model_class: null}\n", "hf.model_class: missing"),
    (HEAD + "hf: {model_typ: child}\n", "hf: unknown word 'model_typ'"),
    (HEAD + "hf: {model_class: 7}\n", "hf.model_class: 7 is an integer; expected a string"),
    (HEAD + "hf: {model_class: OtherForCausalLM}\n", "hf.model_class: 'OtherForCausalLM' is not among architectures"),
    (BASE + "config:\n  new_key: {ignore: x}\nconfig:\n  other_key: {ignore: y}\n",
     "mapping table is not valid YAML: 'config' is written twice in one mapping (line 6)"),
    (BASE + "dims: [vocab, hidden]\n", "dims: is a list; expected a mapping"),
    (BASE + "generation:\n  top_k: {to: top_k, type: nonneg_int, via: kv_heads}\n", "generation.top_k: unknown word 'via'"),
    (BASE + "model_config:\n  theta: {type: positive_number, fail: 'no'}\n",
     "model_config.theta: says fail: or hint: without check:"),
    (BASE + "config:\n  sliding_window: {check: 'value > 1', type: int, fail: 'over {window}'}\n",
     "config.sliding_window: fail: {window} is neither {value} nor a typed model_config key"),
    (BASE + "config:\n  sliding_window: {check: 'value > 1', type: int, fail: 'over {value'}\n",
     "config.sliding_window: fail: "),
    (BASE + "config:\n  use_cache: {require: [1], type: bool}\n", "config.use_cache.require: is a list; expected a string, an integer, a number, a boolean or null"),
    (BASE + "mindformers: {device: {CPU: null}}\n", "mindformers.device: names Ascend"),
    (BASE + "ms_tensors:\n  - {name: lm_head.weight, from: [embed], op: transpose}\n",
     "ms_tensors[0] (lm_head.weight): unknown op 'transpose'"),
    (BASE + "ms_tensors:\n  - {name: lm_head.weight, from: [embed], dtype: half}\n",
     "ms_tensors[0].dtype: \"half\" is a string; expected one of param, norm"),
    (BASE + "ms_tensors:\n  - {name: 'model.layers.{i}.embedding', from: [embed]}\n",
     "ms_tensors[0] (model.layers.{i}.embedding): {i} is in the name of it but not of embed"),
    (BASE + "hf_tensors:\n  norm: {name: 'model.layers.{layer}.norm.weight', shape: [hidden]}\n",
     "hf_tensors.norm: 'model.layers.{layer}.norm.weight' holds '{layer}'"),
    (BASE + "verify: {forward: [theta, rope_theta]}\n", "verify.forward: 'rope_theta' is not a model_config key"),
    (BASE + "verify: {ms_modules: {final_norm: 'model.norm_out()'}}\n",
     "verify.ms_modules.final_norm: 'model.norm_out()' is not an attribute path"),
    (BASE + "verify: null\n", "verify: missing (expected a mapping of structural, forward, hf_modules, ms_modules"),
    (BASE + "ms_tensors:\n  - {name: lm_head.weight, from: [embed, norm], op: qkv_grouped, part: 0}\n",
     "ms_tensors[0] (lm_head.weight): part 0 of qkv_grouped needs one source"),
    (BASE + "ms_tensors:\n  - {name: lm_head.weight, from: [embed, norm]}\n",
     "ms_tensors[0] (lm_head.weight): copy packs 1 tensor, from names 2"),
], ids=["cycle", "missing-base", "missing-base-file", "unknown-section", "flag-reads-untyped-key", "flag-calls-code",
        "dims-undefined", "check-syntax", "check-untyped", "no-hf-class", "misspelled-header-word",
        "header-wrong-type", "model-class-not-claimed", "section-twice", "section-wrong-type", "verb-of-another-section", "fail-without-check",
        "template-names-untyped-key", "template-unbalanced", "values-are-scalars", "a-device-missing",
        "unknown-op", "unknown-dtype", "layer-pattern-mismatch", "placeholder-typo", "verify-key-untyped",
        "module-path-syntax", "no-verify-section", "part-of-two-sources", "op-arity"])
def test_a_table_error_names_the_file_and_the_entry(tmp_path, text, said):
    path = write_table(tmp_path, "child", text)
    with pytest.raises(ConvertError) as e:
        load_table(str(path))
    assert e.value.one_line().startswith(f"{path}: {said}"), e.value.one_line()


def test_a_table_path_that_loops_is_bad_input_naming_it(tmp_path):
    loop = tmp_path / "loop.yaml"
    loop.symlink_to(loop)
    with pytest.raises(ConvertError, match="loop.yaml: cannot read mapping table: Too many levels of symbolic links"):
        load_table(str(loop))


def test_a_table_is_frozen_typed_data_that_no_user_can_change():
    table = load_table()
    with pytest.raises(AttributeError):
        table.hf.model_class = "Other"  # frozen dataclasses: assignments raise
    with pytest.raises(TypeError):
        table.mindformers.device["CPU"]["use_flash_attention"] = True  # read-only mappings
    assert isinstance(table.ms_tensors, tuple) and isinstance(table.hf.architectures, tuple)


def test_a_table_is_parsed_once_and_an_edited_table_file_is_read_again(tmp_path):
    assert load_table("qwen2") is load_table("qwen2")
    path = write_table(tmp_path, "child", BASE)
    first = load_table(str(path))
    assert load_table(str(path)) is first
    # the same length, written at once: a cache keyed by size or mtime would not see it
    path.write_text(BASE.replace("model_type: child", "model_type: kid__"))
    assert load_table(str(path)).hf.model_type == "kid__"
    (tmp_path / "llama.yaml").unlink()  # extends: llama is the shipped table, not a file beside it
    assert load_table(str(path)).hf_tensors == load_table().hf_tensors


def test_the_recorded_sha256_is_of_the_table_files_bytes_base_first():
    # What conversion.json and bulk's done-records compare: the files, not how they are parsed.
    llama, qwen2 = ((tables_dir() / f"{n}.yaml").read_bytes() for n in ("llama", "qwen2"))
    assert load_table("llama").sha256 == hashlib.sha256(llama).hexdigest()
    assert load_table("qwen2").sha256 == hashlib.sha256(llama + qwen2).hexdigest()


def test_verify_facts_are_typed_in_the_table_and_a_family_table_can_change_them(tmp_path):
    table = load_table()
    assert table.verify.structural[:2] == ("hidden_size", "num_layers") and "theta" in table.verify.forward
    assert set(table.verify.structural + table.verify.forward) <= set(table.model_config)
    assert table.verify.hf_modules.embedding == "model.embed_tokens" and table.verify.ms_modules.final_norm == "model.norm_out"
    assert table.mindformers.device["CPU"]["use_flash_attention"] is False
    path = write_table(tmp_path, "child", BASE + "verify:\n  ms_modules: {final_norm: model.final_layernorm}\n")
    child = load_table(str(path))
    assert child.verify.ms_modules.final_norm == "model.final_layernorm"
    assert child.verify.ms_modules.embedding == "model.tok_embeddings" and child.verify.forward == table.verify.forward


USER_TABLE = BASE + "config:\n  new_key: {ignore: harmless}\n"


def test_a_user_table_extends_a_shipped_table_by_name_from_any_directory(tmp_path):
    # issue 22: `--table ./my-table.yaml` with `extends: llama` looked for llama.yaml beside it
    (tmp_path / "tables").mkdir()
    (tmp_path / "tables/my-table.yaml").write_text("extends: llama\nname: my-llama\nconfig:\n  new_key: {ignore: harmless}\n")
    (tmp_path / "elsewhere").mkdir()
    exe = Path(sys.executable).parent / "llama-convert"
    for cwd, table in ((tmp_path / "tables", "./my-table.yaml"), (tmp_path / "elsewhere", "../tables/my-table.yaml")):
        proc = subprocess.run([str(exe), "hf2ms", str(LLAMA), str(tmp_path / "out"), "--table", table, "--dry-run",
                               "--json"], cwd=cwd, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["model_yaml"]["llama_convert"]["table"] == "my-llama"


def test_a_table_extends_a_file_by_its_path_relative_to_itself(tmp_path, monkeypatch):
    (tmp_path / "base").mkdir()
    (tmp_path / "base/family.yaml").write_text(USER_TABLE)
    (tmp_path / "variant.yaml").write_text("extends: base/family.yaml\nname: variant\n"
                                           "config:\n  other_key: {ignore: harmless too}\n")
    monkeypatch.chdir(tmp_path / "base")  # not where the tables are resolved from
    variant = load_table(str(tmp_path / "variant.yaml"))
    assert variant.name == "variant" and variant.hf.model_type == "child"
    assert {"new_key", "other_key"} <= set(variant.config)


# ------------------------------------------------------------------ qwen2: the config both ways

def qwen2_config(**change) -> dict:
    return {**json.loads((QWEN2 / "config.json").read_text()), **change}


def test_qwen2_sliding_window_settings_without_effect_are_recorded_as_ignored():
    cfg = qwen2_config(sliding_window=4096, max_window_layers=1)
    tr = translate(load_table("qwen2"), cfg, None, HF2MSOptions(), "bfloat16", Path("config.json"))
    assert set(tr.ignored) >= {"sliding_window", "max_window_layers"}
    assert tr.model_config["qkv_has_bias"] is True and tr.model_config["attn_proj_has_bias"] is False


@pytest.mark.parametrize("change,said", [
    ({"use_sliding_window": True}, "use_sliding_window: true is not supported, only false"),
    ({"layer_types": ["full_attention", "sliding_attention"]}, "layer_types: lists"),
    ({"attention_bias": True}, "attention_bias: unknown config key"),
])
def test_qwen2_configs_mindformers_cannot_express_are_refused_by_key(change, said):
    with pytest.raises(ConvertError) as e:
        translate(load_table("qwen2"), qwen2_config(**change), None, HF2MSOptions(), "bfloat16", Path("config.json"))
    assert e.value.one_line().startswith(f"config.json: {said}"), e.value.one_line()


def test_ms2hf_writes_the_tables_architecture_and_reads_its_own_output_again(tmp_path):
    convert_hf2ms(QWEN2, tmp_path / "ms")
    convert_ms2hf(tmp_path / "ms", tmp_path / "hf")
    cfg = json.loads((tmp_path / "hf/config.json").read_text())
    assert cfg["architectures"] == ["Qwen2ForCausalLM"] and cfg["model_type"] == "qwen2"
    assert "attention_bias" not in cfg and cfg["use_sliding_window"] is False and cfg["sliding_window"] is None
    import transformers
    assert type(transformers.AutoConfig.from_pretrained(tmp_path / "hf")).__name__ == "Qwen2Config"
    assert plan_hf2ms(tmp_path / "hf").table.name == "qwen2"  # the tool takes its own output back


def test_the_yaml_records_its_table_so_the_way_back_needs_no_flag(tmp_path):
    convert_hf2ms(QWEN2, tmp_path / "ms")
    assert plan_ms2hf(tmp_path / "ms").table.name == "qwen2"
    assert plan_ms2hf(tmp_path / "ms", MS2HFOptions(table="qwen2")).table.name == "qwen2"


def test_verify_reads_a_yaml_that_records_no_table_with_the_hf_models_table(tmp_path):
    # YAMLs written by other tools carry no llama_convert section; the HF side says what the model is.
    convert_hf2ms(QWEN2, tmp_path / "ms")
    path = tmp_path / "ms/llama_config.yaml"
    data = yaml.safe_load(path.read_text())
    del data["llama_convert"]
    path.write_text(yaml.safe_dump(data))
    proc = run_cli("verify", QWEN2, tmp_path / "ms", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["passed"] is True


def test_a_llama_read_of_a_qwen2_model_config_points_at_the_qwen2_table(tmp_path):
    convert_hf2ms(QWEN2, tmp_path / "ms")
    refused(run_cli("ms2hf", tmp_path / "ms", tmp_path / "hf", "--table", "llama"),
            "model_config.attn_proj_has_bias", "--table qwen2")


# ------------------------------------------------------------------ mistral: the sliding window

MISTRAL = FIXTURES / "mistral-nowindow-fp16-bin"


def mistral(options: HF2MSOptions = HF2MSOptions(), **change):
    cfg = {**json.loads((MISTRAL / "config.json").read_text()), **change}
    return translate(load_table("mistral"), cfg, None, options, "float16", Path("config.json"))


@pytest.mark.parametrize("window,seq_length", [(None, None), (128, None), (4096, None), (64, 64), (64, 32)])
def test_mistral_converts_when_the_window_covers_every_sequence_it_will_see(window, seq_length):
    mc = mistral(HF2MSOptions(seq_length=seq_length), sliding_window=window).model_config
    assert window is None or window >= mc["seq_length"]


def test_a_mistral_window_shorter_than_seq_length_is_refused_offering_seq_length():
    with pytest.raises(ConvertError) as e:
        mistral(sliding_window=64)  # max_position_embeddings 128: seq_length 128
    line = e.value.one_line()
    assert line.startswith("config.json: sliding_window: a window of 64 tokens is shorter than seq_length 128")
    assert "--seq-length 64" in line


def test_a_mistral_config_without_the_window_key_has_transformers_default_window(tmp_path):
    cfg = {k: v for k, v in json.loads((MISTRAL / "config.json").read_text()).items() if k != "sliding_window"}
    long = {**cfg, "max_position_embeddings": 32768}  # seq_length 4096 = the default window of 4096: fine
    translate(load_table("mistral"), long, None, HF2MSOptions(), "float16", Path("config.json"))
    with pytest.raises(ConvertError, match="window of 4096 tokens is shorter than seq_length 8192"):
        translate(load_table("mistral"), long, None, HF2MSOptions(seq_length=8192), "float16", Path("config.json"))


def test_mistral_nemo_head_dim_is_refused_because_mindformers_llama_derives_it():
    with pytest.raises(ConvertError, match="^config.json: head_dim: 32 differs from hidden_size / num_attention_heads = 16"):
        mistral(head_dim=32)


def test_the_way_back_writes_a_mistral_without_a_window(tmp_path):
    convert_hf2ms(FIXTURES / "mistral-window128-tied-fp32", tmp_path / "ms")
    convert_ms2hf(tmp_path / "ms", tmp_path / "hf")
    cfg = json.loads((tmp_path / "hf/config.json").read_text())
    assert cfg["architectures"] == ["MistralForCausalLM"] and cfg["model_type"] == "mistral"
    assert cfg["sliding_window"] is None  # MindFormers attends to the whole sequence; say so, not 4096


# ------------------------------------------------------------------ options per direction

def test_the_way_back_cannot_be_asked_for_a_mindspore_checkpoint(tmp_path):
    convert_hf2ms(LLAMA, tmp_path / "ms")
    assert "format" not in MS2HFOptions.__dataclass_fields__
    with pytest.raises(TypeError, match="MS2HFOptions"):
        convert_ms2hf(tmp_path / "ms", tmp_path / "hf", HF2MSOptions(format="ckpt"))
    assert not (tmp_path / "hf").exists()


def test_options_refuse_values_the_cli_would_refuse():
    with pytest.raises(ValueError, match="format='gguf'"):
        HF2MSOptions(format="gguf")
    with pytest.raises(ValueError, match="dtype='int8'"):
        MS2HFOptions(dtype="int8")


# ------------------------------------------------------------------ real published configs of the family

# What each published config must do: convert with this table, or be refused naming this key.
FAMILY_VERDICTS = {
    "DeepSeek-R1-Distill-Qwen-14B__mlx-3bit-indent4": "quantization",
    "Dolphin3.0-R1-Mistral-24B__head_dim128-ne-hidden-over-heads": "head_dim",
    "Qwen2.5-Coder-32B-Instruct__hf-pr-yarn-use_sliding_window-true": "use_sliding_window",
    # the first upload said model_type "internlm" (InternLM 1's) beside InternLM2ForCausalLM
    "internlm2-chat-7b__hf-history-initial-model_type-internlm": "model_type",
}


def family_verdict(name: str, cfg: dict) -> str:
    return FAMILY_VERDICTS.get(name, "converts")


@pytest.mark.skipif(not FAMILY_CONFIGS, reason="../shared/real-configs/family is not beside the checkout")
@pytest.mark.parametrize("path", FAMILY_CONFIGS, ids=lambda p: p.stem)
def test_published_family_configs_convert_or_are_refused_naming_the_key(path):
    cfg = json.loads(path.read_text())
    expected = family_verdict(path.stem, cfg)
    try:
        table = select_for_hf(cfg, path)
        translate(table, cfg, None, HF2MSOptions(), "bfloat16", path)
        got = "converts"
    except ConvertError as e:
        line = e.one_line()
        assert "\n" not in line and line.startswith(f"{path}: ")
        got = line[len(f"{path}: "):].split(":")[0]
    assert got == expected


# ------------------------------------------------------------------ internlm2: its config rules

def internlm2_history(**change) -> tuple[dict, Path]:
    path = REAL_CONFIGS / "family/internlm2-chat-7b__hf-history-initial-model_type-internlm.json"
    if not path.exists():
        pytest.skip("../shared/real-configs/family is not beside the checkout")
    return {**json.loads(path.read_text()), "model_type": "internlm2", **change}, path


@pytest.mark.parametrize("factor", [1.0, 2.0])
def test_internlm2_dynamic_rope_within_its_original_length_is_plain_rope(factor):
    cfg, path = internlm2_history(rope_scaling={"type": "dynamic", "factor": factor})
    t = translate(load_table("internlm2"), cfg, None, HF2MSOptions(), "bfloat16", path)
    assert (t.model_config["extend_method"], t.model_config["theta"], t.model_config["seq_length"]) == ("None", 1e6, 4096)
    assert any("plain RoPE up to max_position_embeddings=32768" in n for n in t.notes)


def test_internlm2_dynamic_rope_beyond_its_original_length_is_refused_by_name():
    cfg, path = internlm2_history(rope_scaling={"type": "dynamic", "factor": 1.0})
    with pytest.raises(ConvertError) as e:
        translate(load_table("internlm2"), cfg, None, HF2MSOptions(seq_length=65536), "bfloat16", path)
    assert e.value.one_line().startswith(f"{path}: rope_scaling: dynamic NTK scaling changes RoPE beyond")
    assert "--seq-length 32768" in e.value.one_line()


def test_internlm2_bias_puts_biases_on_wqkv_and_wo_and_its_pad_id_is_explained():
    cfg, path = internlm2_history(bias=True, rope_scaling=None)
    t = translate(load_table("internlm2"), cfg, None, HF2MSOptions(), "bfloat16", path)
    assert t.model_config["qkv_has_bias"] is True and t.model_config["attn_proj_has_bias"] is True
    assert any(n.startswith("pad_token_id 2: MindFormers masks attention") for n in t.notes)


# ------------------------------------------------------------------ phi3: what it cannot convert, by name

PHI3 = FIXTURES / "phi3-tied-fp32"


@pytest.mark.parametrize("change,said", [
    ({"partial_rotary_factor": 0.75}, "partial_rotary_factor: 0.75 is not supported, only 1.0"),
    ({"rope_scaling": {"type": "longrope", "short_factor": [1.0] * 8, "long_factor": [2.0] * 8}},
     "rope_scaling: rope scaling type 'longrope' has no MindFormers equivalent"),
    ({"rope_scaling": {"type": "su", "short_factor": [1.0] * 8, "long_factor": [2.0] * 8}},
     "rope_scaling: rope scaling type 'su' has no MindFormers equivalent"),
    ({"sliding_window": 2047, "max_position_embeddings": 4096},   # Phi-3-mini-4k-instruct's own
     "sliding_window: a window of 2047 tokens is shorter than seq_length 4096"),
], ids=["partial-rotary", "longrope", "su", "window-shorter-than-seq_length"])
def test_phi3_what_llama_cannot_compute_is_refused_by_name(change, said):
    cfg = {**json.loads((PHI3 / "config.json").read_text()), **change}
    with pytest.raises(ConvertError) as e:
        translate(load_table("phi3"), cfg, None, HF2MSOptions(), "float32", PHI3 / "config.json")
    assert e.value.one_line().startswith(f"{PHI3 / 'config.json'}: {said}")


def test_phi3_a_window_is_fine_once_seq_length_fits_in_it():
    cfg = {**json.loads((PHI3 / "config.json").read_text()), "sliding_window": 2047, "max_position_embeddings": 4096}
    mc = translate(load_table("phi3"), cfg, None, HF2MSOptions(seq_length=2047), "float32", PHI3 / "config.json").model_config
    assert mc["seq_length"] == 2047
