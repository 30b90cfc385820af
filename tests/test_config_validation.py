"""Every config value is checked for type and range before use: one line naming file and key, exit 2.

The config.json and generation_config.json of a HF model, the MindFormers YAML read back, and the
command-line options are all untrusted. A value of the wrong kind or out of range must never crash,
hang, allocate from a number alone, or convert into a silently different model.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from conftest import FIXTURES, refused, run_cli
from llama_convert import HF2MSOptions, convert_hf2ms
from llama_convert.core.errors import ConvertError
from llama_convert.table.loader import load_table, tables_dir

MHA = FIXTURES / "mha-untied-fp32"       # 4 heads, 4 KV heads, 2 layers, no rope scaling
LLAMA3 = FIXTURES / "gqa-llama3-rope"    # llama3 rope scaling, generation_config.json
GQA = FIXTURES / "gqa-linear-rope"       # 4 heads, 2 KV heads


def hf_copy(src: Path, tmp: Path, config: dict | None = None, generation: dict | None = None) -> Path:
    dst = tmp / "src"
    shutil.copytree(src, dst)
    for name, changes in (("config.json", config), ("generation_config.json", generation)):
        if changes is not None:
            data = json.loads((dst / name).read_text())
            data.update(changes)
            (dst / name).write_text(json.dumps(data))  # json writes Infinity and NaN, as HF's files may hold
    return dst


def hf2ms_refused(tmp: Path, src: Path, *needles: str, absent: tuple[str, ...] = ()) -> str:
    out = tmp / "out"
    err = refused(run_cli("hf2ms", src, out), *needles, absent=absent)
    assert not out.exists() and not [p for p in tmp.iterdir() if p.name.startswith(".out")]
    return err


# ------------------------------------------------------------------ config.json: types and ranges

LLAMA3_SCALING = {"factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                  "original_max_position_embeddings": 32, "rope_type": "llama3"}


@pytest.mark.parametrize("change,needles", [
    ({"num_key_value_heads": "4"}, ['num_key_value_heads: "4" is a string; expected a positive integer']),
    ({"max_position_embeddings": [128]}, ["max_position_embeddings: is a list"]),
    ({"num_attention_heads": True}, ["num_attention_heads: true is a boolean"]),
    ({"hidden_size": 64.0}, ["hidden_size: 64.0 is a float"]),
    ({"hidden_size": None}, ["hidden_size: is null"]),
    ({"vocab_size": 10**30}, ["vocab_size: a 31-digit number is too large"]),
    ({"rms_norm_eps": float("inf")}, ["rms_norm_eps: Infinity is not a finite number"]),
    ({"rms_norm_eps": float("nan")}, ["rms_norm_eps: NaN is not a finite number"]),
    ({"initializer_range": -0.02}, ["initializer_range: -0.02 is out of range"]),
    ({"eos_token_id": []}, ["eos_token_id: is an empty list"]),
    ({"eos_token_id": [2, "3"]}, ["eos_token_id: is a list holding a string"]),
    ({"bos_token_id": -2}, ["bos_token_id: -2 is out of range"]),
    ({"tie_word_embeddings": "false"}, ['tie_word_embeddings: "false" is a string; expected true or false']),
    ({"architectures": "LlamaForCausalLM"}, ["architectures: \"LlamaForCausalLM\" is a string"]),
], ids=lambda v: next(iter(v)) if isinstance(v, dict) else "")
def test_a_value_of_the_wrong_kind_is_refused_naming_the_key(tmp_path, change, needles):
    hf2ms_refused(tmp_path, hf_copy(MHA, tmp_path, change), "config.json", *needles)


@pytest.mark.parametrize("value", [0, -1])
def test_zero_or_negative_max_position_embeddings_is_refused(tmp_path, value):
    # written as a negative seq_length before
    hf2ms_refused(tmp_path, hf_copy(MHA, tmp_path, {"max_position_embeddings": value}),
                  "config.json", f"max_position_embeddings: {value} is out of range; expected a positive integer")


def test_zero_kv_heads_is_refused_not_read_as_multi_head(tmp_path):
    hf2ms_refused(tmp_path, hf_copy(MHA, tmp_path, {"num_key_value_heads": 0}),
                  "config.json", "num_key_value_heads: 0 is out of range")


def test_null_kv_heads_means_as_many_as_attention_heads_as_in_hf(tmp_path):
    src = hf_copy(MHA, tmp_path, {"num_key_value_heads": None})
    proc = run_cli("hf2ms", src, tmp_path / "out", "--dry-run", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["model_yaml"]["model"]["model_config"]["n_kv_heads"] == 4


def test_a_layer_count_beyond_the_checkpoint_is_refused_before_any_name_is_expanded(tmp_path):
    # a 1 KB config claiming 10**8 layers ran out of memory building 10**8 x 9 tensor names
    err = hf2ms_refused(tmp_path, hf_copy(MHA, tmp_path, {"num_hidden_layers": 100_000_000}), "config.json",
                        "num_hidden_layers is 100000000 but the checkpoint holds layers 0..1 (2 layers)")
    assert err.count("config.json") == 1


def test_a_layer_count_below_the_checkpoint_is_refused_the_same_way(tmp_path):
    hf2ms_refused(tmp_path, hf_copy(MHA, tmp_path, {"num_hidden_layers": 1}), "config.json",
                  "num_hidden_layers is 1 but the checkpoint holds layers 0..1 (2 layers)")


# ------------------------------------------------------------------ rope

@pytest.mark.parametrize("change,needles", [
    ({"rope_scaling": [8.0]}, ["rope_scaling: is a list; expected a mapping"]),
    ({"rope_scaling": "llama3"}, ['rope_scaling: "llama3" is a string']),
    ({"rope_scaling": {"rope_type": "linear"}}, ["rope_scaling: linear scaling lacks its factor"]),
    ({"rope_scaling": {k: v for k, v in LLAMA3_SCALING.items() if k != "factor"}}, ["rope_scaling", "factor"]),
    ({"rope_scaling": {**LLAMA3_SCALING, "factor": "eight"}}, ['rope_scaling.factor: "eight" is a string']),
    ({"rope_scaling": {**LLAMA3_SCALING, "low_freq_factor": "one"}}, ["rope_scaling.low_freq_factor"]),
    ({"rope_scaling": {**LLAMA3_SCALING, "high_freq_factor": None}}, ["rope_scaling.high_freq_factor: is null"]),
    ({"rope_scaling": {**LLAMA3_SCALING, "original_max_position_embeddings": 32.5}},
     ["rope_scaling.original_max_position_embeddings: 32.5 is a float"]),
    ({"rope_scaling": {"rope_type": "linear", "factor": -2.0}}, ["rope_scaling.factor: -2.0 is out of range"]),
    ({"rope_scaling": None, "rope_parameters": {"rope_type": "default", "rope_theta": "1e4"}},
     ["rope_parameters.rope_theta: \"1e4\" is a string"]),
], ids=["list", "string", "linear-no-factor", "llama3-no-factor", "factor-eight", "low-freq-string",
        "high-freq-null", "orig-max-float", "negative-factor", "rope_parameters-theta"])
def test_a_malformed_rope_scaling_is_refused_naming_the_field(tmp_path, change, needles):
    hf2ms_refused(tmp_path, hf_copy(MHA, tmp_path, change), "config.json", *needles)


@pytest.mark.parametrize("theta", ["10000", -10000.0, 0, float("inf"), 10**400, [10000.0]])
def test_a_bad_rope_theta_names_rope_theta_not_rope_scaling(tmp_path, theta):
    hf2ms_refused(tmp_path, hf_copy(LLAMA3, tmp_path, {"rope_theta": theta}), "config.json", "rope_theta: ",
                  absent=("rope_scaling",))


# ------------------------------------------------------------------ generation_config.json

def test_a_bad_generation_value_names_generation_config(tmp_path):
    src = hf_copy(LLAMA3, tmp_path, generation={"top_p": 1.5})
    hf2ms_refused(tmp_path, src, "generation_config.json", "top_p: 1.5 is out of range; expected a number in [0, 1]")


def test_a_null_generation_value_takes_hf_default(tmp_path):
    src = hf_copy(LLAMA3, tmp_path, generation={"top_p": None, "max_length": None})
    proc = run_cli("hf2ms", src, tmp_path / "out", "--dry-run", "--json")
    assert proc.returncode == 0, proc.stderr
    mc = json.loads(proc.stdout)["model_yaml"]["model"]["model_config"]
    assert mc["top_p"] == 1.0 and mc["max_decode_length"] == mc["seq_length"]


# ------------------------------------------------------------------ the MindFormers YAML on the way back

@pytest.fixture(scope="module")
def ms_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ms") / "ms"
    convert_hf2ms(GQA, out, HF2MSOptions(format="safetensors"))
    return out


def edited_ms(ms_dir: Path, tmp: Path, edit) -> Path:
    dst = tmp / "ms"
    shutil.copytree(ms_dir, dst)
    path = dst / "llama_config.yaml"
    data = yaml.safe_load(path.read_text())
    edit(data)
    path.write_text(yaml.safe_dump(data))
    return dst


def model_config(**changes):
    return lambda data: data["model"]["model_config"].update(changes)


YAML_CASES = [
    (model_config(num_heads=0), "model_config.num_heads: 0 is out of range; expected a positive integer"),
    (model_config(n_kv_heads="two"), 'model_config.n_kv_heads: "two" is a string'),
    (model_config(num_layers=-2), "model_config.num_layers: -2 is out of range"),
    (model_config(vocab_size=256.0), "model_config.vocab_size: 256.0 is a float"),
    (model_config(theta=float("nan")), "model_config.theta: NaN is not a finite number"),
    (model_config(num_heads=3), "model_config.hidden_size: 64 is not divisible by num_heads=3"),
    (model_config(n_kv_heads=3), "model_config.n_kv_heads: num_heads=4 is not divisible by n_kv_heads=3"),
    (lambda d: d["model"].update(model_config=7), "model.model_config: is an integer; expected a mapping"),
    (lambda d: d.update(model=[1, 2]), "model: is a list; expected a mapping"),
    (model_config(param_init_type="float99"), 'model_config.param_init_type: "float99" is not one of bfloat16'),
    (model_config(num_layers=100_000_000),
     "model_config.num_layers is 100000000 but the checkpoint holds layers 0..1 (2 layers)"),
]
YAML_IDS = ["num_heads-0", "n_kv_heads-string", "num_layers-negative", "vocab_size-float", "theta-nan",
            "heads-not-dividing-hidden", "kv-not-dividing-heads", "model_config-scalar", "model-list",
            "param_init_type-unknown", "num_layers-huge"]


@pytest.mark.parametrize("edit,needle", YAML_CASES, ids=YAML_IDS)
def test_ms2hf_refuses_a_bad_yaml_naming_file_and_key(ms_dir, tmp_path, edit, needle):
    src = edited_ms(ms_dir, tmp_path, edit)
    out = tmp_path / "hf"
    refused(run_cli("ms2hf", src, out), "llama_config.yaml", needle)
    assert not out.exists()


def test_a_number_yaml_reads_as_a_string_is_refused_with_the_spelling_that_works(ms_dir, tmp_path):
    # YAML 1.1 (PyYAML, and so MindFormers) reads 1e-05 without a dot as the string "1e-05".
    src = tmp_path / "ms"
    shutil.copytree(ms_dir, src)
    path = src / "llama_config.yaml"
    path.write_text(path.read_text().replace("rms_norm_eps: 1.0e-05", "rms_norm_eps: 1e-05"))
    refused(run_cli("ms2hf", src, tmp_path / "hf"), "llama_config.yaml",
            'model_config.rms_norm_eps: "1e-05" is a string', "write 1.0e-05 rather than 1e-05")


@pytest.mark.parametrize("command", ["diff", "verify"])
@pytest.mark.parametrize("edit,needle", [YAML_CASES[0], YAML_CASES[1], YAML_CASES[7]],
                         ids=[YAML_IDS[0], YAML_IDS[1], YAML_IDS[7]])
def test_diff_and_verify_refuse_a_bad_yaml_with_exit_2_not_1(ms_dir, tmp_path, command, edit, needle):
    src = edited_ms(ms_dir, tmp_path, edit)
    refused(run_cli(command, GQA, src), "llama_config.yaml", needle)


# ------------------------------------------------------------------ options

@pytest.mark.parametrize("size", ["inf", "nan", "-1", "1e400", "0", "5 parsecs"])
def test_max_shard_size_that_is_not_a_size_is_a_usage_error(tmp_path, size):
    out = tmp_path / "out"
    refused(run_cli("hf2ms", MHA, out, "--format", "safetensors", "--max-shard-size", size),
            "--max-shard-size", repr(size))
    assert not out.exists()


def test_max_shard_size_with_a_space_before_the_unit_is_a_size(tmp_path):
    proc = run_cli("hf2ms", MHA, tmp_path / "out", "--format", "safetensors", "--max-shard-size", "5 GB", "--dry-run")
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("atol", ["nan", "inf", "-1"])
def test_diff_refuses_a_tolerance_that_is_not_finite_and_non_negative(atol):
    refused(run_cli("diff", MHA, MHA, "--atol", atol), "--atol", "finite number >= 0")


def test_diff_help_says_why_an_infinite_tolerance_is_refused():
    assert "inf and nan are refused" in " ".join(run_cli("diff", "--help").stdout.split())


# ------------------------------------------------------------------ diff and verify: bad input is exit 2

def test_diff_of_a_missing_path_is_bad_input(tmp_path):
    refused(run_cli("diff", MHA, tmp_path / "nope"), "nope", "not found")


def test_diff_of_a_truncated_checkpoint_is_bad_input(tmp_path):
    src = hf_copy(MHA, tmp_path)
    f = src / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-1000])
    refused(run_cli("diff", MHA, src), "model.safetensors")


def test_verify_of_a_different_models_conversion_says_so_before_running_anything(tmp_path):
    convert_hf2ms(MHA, tmp_path / "ms")
    err = refused(run_cli("verify", GQA, tmp_path / "ms"), "llama_config.yaml", "different model", str(GQA),
                  "model_config.n_kv_heads 4 vs 2 from config.json")
    assert "parity" not in err


def test_verify_names_every_structural_key_that_differs(tmp_path):
    convert_hf2ms(MHA, tmp_path / "ms")
    refused(run_cli("verify", FIXTURES / "mqa-bias-fp16-bin", tmp_path / "ms"), "different model",
            "model_config.n_kv_heads 4 vs 1 from config.json",
            "model_config.qkv_has_bias false vs true from config.json")


def test_verify_of_an_untied_conversion_of_a_tied_model_is_not_a_different_model(tmp_path):
    from llama_convert.verify import refuse_different_models
    convert_hf2ms(LLAMA3, tmp_path / "ms", HF2MSOptions(untie=True))
    refuse_different_models(LLAMA3, tmp_path / "ms")  # hf2ms --untie copies the embedding: same model


# ------------------------------------------------------------------ the table declares the types

def table_with(tmp_path: Path, old: str, new: str) -> Path:
    text = (tables_dir() / "llama.yaml").read_text()
    assert old in text
    path = tmp_path / "llama.yaml"
    path.write_text(text.replace(old, new))
    return path


@pytest.mark.parametrize("old,new,said", [
    ("hidden_size: {to: hidden_size, type: positive_int", "hidden_size: {to: hidden_size, type: positive_integer",
     "config.hidden_size: unknown type 'positive_integer'"),
    ("rms_norm_eps: {to: rms_norm_eps, type: positive_number}", "rms_norm_eps: {to: rms_norm_eps}",
     "config.rms_norm_eps: declares no `type:`"),
    ('use_cache: {ignore:', 'use_cache: {ignor:', "config.use_cache: unknown word 'ignor'"),
    ("rms_norm_eps: {to: rms_norm_eps, type: positive_number}",
     'rms_norm_eps: {to: rms_norm_eps, ignore: "twice", type: positive_number}', "config.rms_norm_eps: says to and ignore"),
    ("embed: {name: model.embed_tokens.weight, shape: [vocab, hidden]}",
     "embed: {name: model.embed_tokens.weight, shape: [vocab, hiden]}", "hf_tensors.embed: shape symbol 'hiden'"),
    ("when: [hf_lm_head]}", "when: [hf_lm_haed]}", "hf_tensors.lm_head uses undeclared flags ['hf_lm_haed']"),
], ids=["unknown-type", "untyped-key", "misspelled-verb", "two-verbs", "undefined-shape-symbol",
        "undeclared-flag"])
def test_a_table_error_is_one_line_naming_the_table_file_and_entry(tmp_path, old, new, said):
    path = table_with(tmp_path, old, new)
    with pytest.raises(ConvertError) as e:
        load_table(str(path))
    assert e.value.one_line().startswith(f"{path}: {said}")


# ------------------------------------------------------------------ a bug of ours is not a failed check

BOOM = """
import sys
from llama_convert.cli import main
@main.command()
def boom():
    raise RuntimeError("an invariant broke")
sys.argv = ["llama-convert", "boom"]
main()
"""


def test_an_internal_error_is_one_line_and_exit_3_not_a_traceback_with_exit_1():
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, "-c", BOOM], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "internal error: RuntimeError: an invariant broke" in err and "LLAMA_CONVERT_TRACEBACK=1" in err


def test_an_internal_errors_traceback_is_there_on_request():
    import os
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, "-c", BOOM], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "LLAMA_CONVERT_TRACEBACK": "1"})
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "an invariant broke" in proc.stderr
