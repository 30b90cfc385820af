"""Strategy files: ours are what MindSpore's own protobuf classes and strategy readers read, theirs
are what ours read, and a layout's block is the slice MindSpore itself cuts for that device."""
from __future__ import annotations

import numpy as np
import pytest

from llama_convert.core.errors import ConvertError
from llama_convert.formats import strategy as st

LAYOUTS = {
    "model.layers.0.attention.wq.weight": st.Layout(dev_matrix=(2, 4), tensor_map=(0, -1)),   # rows over mp
    "model.layers.0.attention.wo.weight": st.Layout(dev_matrix=(2, 4), tensor_map=(-1, 0)),   # columns over mp
    "model.tok_embeddings.embedding_weight": st.Layout(dev_matrix=(2, 4), tensor_map=(-1, -1)),
    "model.norm_out.weight": st.Layout(dev_matrix=(2, 4), tensor_map=(-1,), opt_weight_shard_step=4,
                                       opt_weight_shard_size=2),
    "lm_head.weight": st.Layout(dev_matrix=(2, 4), tensor_map=(1, -1)),                       # rows over dp
}
SMAP = st.StrategyMap(1, LAYOUTS, (st.OperatorStrategy("Default/MatMul-op0", 0, ((2, 1), (4, 1))),))


def test_a_strategy_we_write_is_read_by_mindspores_own_protobuf_class_and_strategy_reader(tmp_path):
    from mindspore.train import node_strategy_pb2
    import mindspore

    path = tmp_path / "ckpt_strategy_rank_0.ckpt"
    st.write(path, SMAP)
    theirs = node_strategy_pb2.ParallelStrategyMap()
    theirs.ParseFromString(path.read_bytes())
    assert theirs.IsInitialized() and theirs.current_stage == 1
    assert theirs.parallel_strategy_item[0].parallel_strategys.stage == 0
    searched = mindspore.build_searched_strategy(str(path))
    assert set(searched) == set(LAYOUTS)
    for name, layout in LAYOUTS.items():
        got = searched[name]
        assert tuple(got.dev_matrix[0].dim) == layout.dev_matrix
        assert tuple(got.tensor_map[0].dim) == layout.tensor_map
        assert (got.opt_weight_shard_step, got.opt_weight_shard_size) == (layout.opt_weight_shard_step,
                                                                          layout.opt_weight_shard_size)


def test_a_strategy_mindspore_writes_reads_back_as_the_same_layouts():
    from mindspore.train import node_strategy_pb2

    theirs = node_strategy_pb2.ParallelStrategyMap()
    theirs.ParseFromString(st.encode(SMAP))
    assert st.decode(theirs.SerializeToString()) == SMAP


def test_merged_pipeline_strategies_name_each_layout_by_its_stage(tmp_path):
    import mindspore

    stages = tmp_path / "stages"
    stages.mkdir()
    for stage in (0, 1):
        ops = (st.OperatorStrategy(f"Default/MatMul-op{stage}", stage, ((1, 1),)),)
        st.write(stages / f"ckpt_strategy_rank_{stage * 4}.ckpt",
                 st.StrategyMap(1, {f"model.layers.{stage}.attention.wq.weight": LAYOUTS[
                     "model.layers.0.attention.wq.weight"]}, ops))
    mindspore.merge_pipeline_strategys(str(stages), str(tmp_path / "merged.ckpt"))
    assert set(st.read(tmp_path / "merged.ckpt").layouts) == {"0-model.layers.0.attention.wq.weight",
                                                              "1-model.layers.1.attention.wq.weight"}


@pytest.mark.parametrize("dev_matrix,tensor_map", [((2, 4), (0, -1)), ((2, 4), (-1, 0)), ((2, 4), (1, 0)),
                                                   ((8,), (0, -1)), ((2, 2, 2), (2, 0)), ((4, 2), (-1, -1))])
def test_a_layouts_block_is_the_slice_mindspore_cuts_for_each_device(dev_matrix, tensor_map):
    from mindspore.parallel._tensor import _load_tensor
    import mindspore

    full = np.arange(8 * 16, dtype=np.float32).reshape(8, 16)
    layout = st.Layout(dev_matrix, tensor_map)
    for device in range(int(np.prod(dev_matrix))):
        theirs = _load_tensor(mindspore.Tensor(full), list(dev_matrix), list(tensor_map), rank_id=device)
        assert np.array_equal(full[layout.block(device, full.shape)], theirs), device


def test_a_file_that_is_not_a_strategy_is_refused_naming_it(tmp_path):
    for name, data in [("weights.ckpt", b"\x0a\x05hello"), ("cut.ckpt", st.encode(SMAP)[:-7]),
                       ("empty.ckpt", b"")]:
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ConvertError, match="not a MindSpore strategy file") as e:
            st.read(tmp_path / name)
        assert name in str(e.value)


def test_every_device_holds_a_distinct_block_and_together_they_cover_the_tensor():
    layout = st.Layout((2, 2, 2), (2, 0))
    shape = (4, 6)
    cover = np.zeros(shape, dtype=int)
    for device in range(8):
        cover[layout.block(device, shape)] += 1
    assert (cover == 2).all()  # axis 1 of dev_matrix splits nothing: its two devices hold the same block
    assert len({str(layout.block(d, shape)) for d in range(8)}) == 4


@pytest.mark.parametrize("shape,layout", [
    ((8, 4), st.Layout((2, 2), (0, -1), opt_weight_shard_step=2, opt_weight_shard_size=2)),   # rows, then over dp
    ((4, 8), st.Layout((2, 2), (-1, 0), opt_weight_shard_step=2, opt_weight_shard_size=2)),   # columns, then dp
    ((8,), st.Layout((2, 2), (-1,), opt_weight_shard_step=1, opt_weight_shard_size=2)),       # whole: rightmost axis
    ((8,), st.Layout((2, 2), (-1,), opt_weight_shard_step=1, opt_weight_shard_size=4)),       # whole: both axes
    ((8, 4), st.Layout((2, 4), (-1, -1), opt_weight_shard_step=1, opt_weight_shard_size=2)),  # part of an axis
    ((16, 4), st.Layout((4, 2), (0, -1), opt_weight_shard_step=2, opt_weight_shard_size=2)),  # part of dp
], ids=["rows", "columns", "whole-2", "whole-4", "inner-part", "dp-part"])
def test_what_a_device_stores_under_optimizer_shard_is_what_mindspore_slices_for_it(tmp_path, ms, shape, layout):
    full = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    (tmp_path / "full" / "rank_0").mkdir(parents=True)
    ms.save_checkpoint([{"name": "w", "data": ms.Tensor(full)}], str(tmp_path / "full" / "rank_0" / "w.ckpt"))
    st.write(tmp_path / "s.ckpt", st.StrategyMap(1, {"w": layout}, (st.OperatorStrategy("op", 0, ((1, 1),)),)))
    ms.transform_checkpoints(str(tmp_path / "full"), str(tmp_path / "out"), "x", None, str(tmp_path / "s.ckpt"))
    for device in range(layout.devices):
        theirs = ms.load_checkpoint(str(tmp_path / "out" / f"rank_{device}" / f"x{device}.ckpt"))["w"].asnumpy()
        ours = full[layout.held(device, shape)]
        assert ours.shape == theirs.shape and np.array_equal(ours, theirs), device
        assert layout.full_shape(theirs.shape) == shape
