"""hf2ms output loads strictly into a real MindFormers LlamaForCausalLM and holds the right values."""
from __future__ import annotations


import numpy as np
import pytest

from conftest import ALL_MODEL_DIRS, layout_combos, run_cli
from oracle import as_float32, build_net, expected_ms, kv_cache_parameters, load_ms_checkpoint, model_config

COMBOS = layout_combos(ALL_MODEL_DIRS)


@pytest.mark.parametrize("src,fmt,qkv,untie", COMBOS,
                         ids=[f"{s.name}-{f}{'-qkv' if q else ''}{'-untie' if u else ''}" for s, f, q, u in COMBOS])
def test_output_loads_strictly_and_equals_the_oracle(ms, tmp_path, src, fmt, qkv, untie):
    out = tmp_path / "out"
    args = ["hf2ms", src, out, "--format", fmt] + (["--qkv-concat"] if qkv else []) + (["--untie"] if untie else [])
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr

    cfg = model_config(out)
    net = build_net(cfg)
    params = load_ms_checkpoint(ms, out)
    not_loaded, unexpected = ms.load_param_into_net(net, params, strict_load=True)
    assert sorted(not_loaded) == kv_cache_parameters(cfg) and unexpected == []  # every weight, and nothing else

    expected = expected_ms(src, cfg)
    assert sorted(params) == sorted(expected)
    for name, value in expected.items():
        np.testing.assert_array_equal(as_float32(params[name]), value, err_msg=name)
