"""Multi-rank MindSpore directories read as the one model they hold: a MindFormers training run's
`output/` (`checkpoint/rank_{k}/{prefix}_rank_{k}-{epoch}_{step}.ckpt` + `strategy/`), its
`checkpoint/` alone, or a pre-sliced OUT_DIR with `rank_{k}/` and its strategy.

Nothing is merged in memory: each full tensor becomes a Scatter of the byte runs its slices hold in
the rank files (a row split is a few long runs, a column split one run per row and rank), read window by
window when it is written. Which file of each rank is read is decided as MindFormers decides what to
resume from (mindformers/tools/resume_ckpt.py): the step every rank's meta.json reaches, else each
rank's newest file by mtime; never the last by name, which puts `-1_8` after `-1_16`.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from .adapter import split_mindpet
from .checkpoint import TOKENIZER_FILES, Checkpoint
from .ms import adapter_record, find_yaml, read_mindformers_yaml, read_ms_headers
from ..core.errors import ConvertError
from ..formats import strategy as strat
from ..formats.files import check_regular, read_small
from ..formats.payload import Runs, Scatter
from ..formats.tensor import TensorRef
from ..core.dtypes import dtype as dtype_info

RANK_DIR = re.compile(r"rank_(\d+)")
# MindFormers' own pattern (tools/utils.py check_ckpt_file_name): {prefix}-{epoch}_{step}.{format}
NAMED = re.compile(r"(?P<prefix>[^/]+)-(?P<epoch>\d+)_(?P<step>\d+)\.(?P<fmt>ckpt|safetensors)")
STEP = re.compile(r"(?:(\d+)_)?(\d+)")
FORMATS = ("ckpt", "safetensors")
# Training bookkeeping every rank saves with the same value: ranks that disagree come from different runs.
SAME_IN_EVERY_RANK = ("global_step", "step_num", "epoch_num")


def checkpoint_dir(path: Path) -> Path | None:
    """The directory holding rank_{k}/ for a path naming a run's output, its checkpoint/, or an
    OUT_DIR of rank slices; None if the path is none of these."""
    path = Path(path)
    for d in (path / "checkpoint", path):
        if d.is_dir() and any(RANK_DIR.fullmatch(p.name) and p.is_dir() for p in d.iterdir()):
            return d
    return None


def is_rank_dir(path: Path) -> bool:
    return Path(path).is_dir() and checkpoint_dir(path) is not None


@dataclass
class RankFiles:
    """The checkpoint chosen for each rank, and how it was chosen."""
    files: dict[int, Path]
    chosen_by: str
    step: str | None = None             # "epoch_step" when the names say it


@dataclass
class Merged:
    """The merged model's tensors, and every file they came from."""
    ckpt_dir: Path
    root: Path
    tensors: dict[str, TensorRef]
    rank_files: RankFiles
    strategy_files: list[Path]
    non_tensors: list[str] = field(default_factory=list)
    stages: int = 1
    devices: int = 1


# ------------------------------------------------------------------ which file of each rank


def _rank_dirs(ckpt_dir: Path) -> dict[int, Path]:
    return {int(m.group(1)): p for p in ckpt_dir.iterdir() if (m := RANK_DIR.fullmatch(p.name)) and p.is_dir()}


def _fmt(ckpt_dir: Path, dirs: dict[int, Path]) -> str:
    found = {f for d in dirs.values() for f in FORMATS if any(d.glob(f"*.{f}"))}
    if len(found) > 1:
        raise ConvertError(ckpt_dir, "rank directories hold both .ckpt and .safetensors checkpoints",
                           "keep one format, or convert a copy that holds one")
    if not found:
        raise ConvertError(ckpt_dir, "no .ckpt or .safetensors checkpoint in any rank_{k}/ directory")
    return found.pop()


def _named(path: Path, fmt: str) -> tuple[int, int] | None:
    m = NAMED.fullmatch(path.name)
    return (int(m.group("epoch")), int(m.group("step"))) if m and m.group("fmt") == fmt else None


def _as_rank(name: str, rank: int) -> str:
    """A file name with its rank written as `rank`, to compare names across ranks (MindFormers'
    replace_rank_id_in_ckpt_name)."""
    return re.sub(r"_rank_\d+", f"_rank_{rank}", name, count=1)


def _meta_step(dirs: dict[int, Path], fmt: str) -> tuple[int, int, str] | None:
    """(epoch, step, file name) that MindFormers resumes from by meta.json: the earliest of the ranks'
    last saved steps (get_info_from_meta); None when no rank has a usable meta.json."""
    best = None
    for rank in sorted(dirs):
        meta = dirs[rank] / "meta.json"
        if not meta.is_file():
            continue
        try:
            data = json.loads(read_small(meta, "meta.json"))
        except ValueError:
            continue  # MindFormers warns and ignores a meta.json it cannot read
        if not isinstance(data, dict):
            continue
        e, s, f = data.get("last_epoch"), data.get("last_step"), data.get("last_ckpt_file")
        if not (isinstance(e, int) and isinstance(s, int) and isinstance(f, str) and NAMED.fullmatch(f)
                and f.endswith(f".{fmt}")):
            continue
        if best is None or (e, s) < best[:2]:
            best = (e, s, f)
    return best


def pick_files(ckpt_dir: Path, step: str | None = None) -> RankFiles:
    """The file of each rank that MindFormers would load (or the one of `step`: "N" or "EPOCH_N")."""
    dirs = _rank_dirs(ckpt_dir)
    fmt = _fmt(ckpt_dir, dirs)
    listing = {k: sorted(p for p in d.glob(f"*.{fmt}")) for k, d in dirs.items()}
    for k in sorted(dirs):
        if not listing[k]:
            raise ConvertError(dirs[k], f"holds no .{fmt} checkpoint, but the other rank directories do",
                               "a rank's file is missing: copy the whole run's checkpoint directory")
    if step is not None:
        m = STEP.fullmatch(step)
        epoch, n = (int(m.group(1)) if m.group(1) else None), int(m.group(2))
        files = {}
        for k, found in listing.items():
            hits = [p for p in found if (es := _named(p, fmt)) and es[1] == n and epoch in (None, es[0])]
            if not hits:
                have = sorted({"_".join(map(str, es)) for p in found if (es := _named(p, fmt))})
                raise ConvertError(dirs[k], f"has no checkpoint of step {step}",
                                   f"steps found: {', '.join(have) or 'none named {prefix}-{epoch}_{step}'}")
            if len({_named(p, fmt) for p in hits}) > 1:
                raise ConvertError(dirs[k], f"step {n} is saved in several epochs: "
                                   f"{', '.join(p.name for p in hits)}", "give --step EPOCH_STEP, e.g. "
                                   f"--step {'_'.join(map(str, _named(hits[-1], fmt)))}")
            files[k] = _one_of_step(hits, dirs[k])
        return _checked(RankFiles(files, f"--step {step}", _step_text(files[min(files)], fmt)), fmt)
    meta = _meta_step(dirs, fmt)
    if meta is not None:
        return _by_meta(dirs, listing, meta, fmt)
    # MindFormers without meta.json: every rank's newest file (get_last_checkpoint), checked to agree.
    files = {k: max(found, key=lambda p: (p.stat().st_mtime_ns, p.name)) for k, found in listing.items()}
    for k, f in files.items():
        es = _named(f, fmt)
        if es is not None:
            files[k] = _one_of_step([p for p in listing[k] if _named(p, fmt) == es], dirs[k])
    return _checked(RankFiles(files, "newest file of each rank (no meta.json)", _step_text(files[min(files)], fmt)), fmt)


def _one_of_step(hits: list[Path], rank_dir: Path) -> Path:
    if len(hits) > 1:
        raise ConvertError(rank_dir, f"holds two checkpoints of the same step: {hits[0].name} and {hits[1].name}",
                           "remove the one that is not from this run, or give --step")
    return hits[0]


def _step_text(path: Path, fmt: str) -> str | None:
    es = _named(path, fmt)
    return f"{es[0]}_{es[1]}" if es else None


def _by_meta(dirs: dict[int, Path], listing: dict[int, list[Path]], meta: tuple[int, int, str], fmt: str) -> RankFiles:
    """MindFormers' get_resume_ckpt_list: the latest step, no later than the meta.json step, that every
    rank has saved under the recorded prefix."""
    last = meta[:2]
    prefix = meta[2][:meta[2].rfind("-") + 1]
    by_step: dict[tuple[int, int], dict[int, list[Path]]] = {}
    for k, found in listing.items():
        want = _as_rank(prefix, k)
        for p in found:
            es = _named(p, fmt)
            if es and es <= last and p.name.startswith(want):
                by_step.setdefault(es, {}).setdefault(k, []).append(p)
    complete = [es for es, ranks in by_step.items() if set(ranks) == set(dirs)]
    if not complete:
        es = max(by_step, default=last)
        lacking = sorted(set(dirs) - set(by_step.get(es, {})))
        k = lacking[0] if lacking else min(dirs)
        raise ConvertError(dirs[k] / _as_rank(f"{prefix}{es[0]}_{es[1]}.{fmt}", k), "not found: meta.json names "
                           f"step {es[0]}_{es[1]}, which this rank has not saved", "copy the rank's file, or give --step")
    es = max(complete)
    files = {k: _one_of_step(by_step[es][k], dirs[k]) for k in dirs}
    return _checked(RankFiles(files, f"meta.json (step {last[0]}_{last[1]})", f"{es[0]}_{es[1]}"), fmt)


def _checked(rf: RankFiles, fmt: str) -> RankFiles:
    """Every rank's file must be the same save of the same run: one name, up to the rank."""
    first = min(rf.files)
    base = rf.files[first]
    for k, f in sorted(rf.files.items()):
        check_regular(f, "checkpoint file")
        if (_named(f, fmt) is None) != (_named(base, fmt) is None) or (
                _named(f, fmt) and _as_rank(f.name, first) != base.name):
            raise ConvertError(f, f"is not the save rank {first} made ({base.name}): the rank directories hold "
                               "checkpoints of different runs or steps", "give --step, or copy every rank's "
                               "files of one run")
    return rf


# ------------------------------------------------------------------ the strategy


def strategy_files(ckpt_dir: Path, root: Path, given: Path | None) -> list[Path]:
    """The strategy file(s): --strategy (a file or a directory), else strategy/ beside the checkpoints."""
    if given is not None:
        given = Path(given)
        if given.is_dir():
            found = sorted(given.glob("*.ckpt"))
            if not found:
                raise ConvertError(given, "holds no strategy .ckpt file")
            return found
        check_regular(given, "strategy file", "give the strategy file or directory the run saved")
        return [given]
    for d in dict.fromkeys([root / "strategy", ckpt_dir / "strategy", ckpt_dir.parent / "strategy"]):
        found = sorted(d.glob("*.ckpt")) if d.is_dir() else []
        if found:
            return found
    found = sorted(root.glob("*strategy*.ckpt"))
    if found:
        return found
    raise ConvertError(ckpt_dir, f"no strategy file found (looked in {root / 'strategy'})",
                       "pass --strategy FILE|DIR with the strategy the run saved (output/strategy/)")


def read_stages(files: list[Path]) -> dict[int, dict[str, strat.Layout]]:
    stages = strat.by_stage([strat.read(f) for f in files])
    missing = sorted(set(range(max(stages) + 1)) - set(stages))
    if missing:
        raise ConvertError(files[0].parent, f"the strategy has no file for pipeline stage {missing[0]} "
                           f"(stages found: {', '.join(map(str, sorted(stages)))})",
                           "give every stage's strategy file (the run saves one per rank)")
    return stages


# ------------------------------------------------------------------ merging


def _runs(ref: TensorRef, full: tuple[int, ...], block: tuple[slice, ...], item: int) -> Runs:
    """The byte runs of one rank's block, laid into the full tensor (row-major both)."""
    shape = tuple(s.stop - s.start for s in block)
    k = max((i for i, (s, n) in enumerate(zip(shape, full)) if s != n), default=-1)
    if k < 0:
        return Runs.of(ref.ranges, [0], [0], [ref.nbytes])
    inner = math.prod(full[k + 1:]) * item
    length = shape[k] * inner
    import numpy as np  # only for split tensors: reading one file never needs it
    strides = [math.prod(full[i + 1:]) * item for i in range(len(full))]
    # The offset in the full tensor of each run (row-major over the block's outer axes): numpy, because
    # a 70B's column-split weights have tens of thousands of runs each.
    grid = np.indices(shape[:k]).reshape(k, -1) if k else np.zeros((0, 1), dtype=np.int64)
    starts = np.full(grid.shape[1], block[k].start * strides[k], dtype=np.int64)
    for axis in range(k):
        starts += (block[axis].start + grid[axis]) * strides[axis]
    count = len(starts)
    return Runs.of(ref.ranges, list(range(0, count * length, length)), starts.tolist(), [length] * count)


def _assembled(name: str, refs: dict[int, TensorRef], layout: strat.Layout, full: tuple[int, ...]) -> TensorRef:
    """One full tensor from the blocks its devices store: each distinct block read from the first
    device that holds it (the others are its replicas)."""
    item = dtype_info(refs[min(refs)].dtype).itemsize
    blocks: dict[tuple, int] = {}
    for device in sorted(refs):
        blocks.setdefault(tuple((s.start, s.stop) for s in layout.held(device, full)), device)
    first = refs[min(refs)]
    if len(blocks) == 1:  # replicated: one rank's copy is the tensor
        return TensorRef(name, first.dtype, full, first.file, first.ranges)
    runs = sorted((_runs(refs[d], full, tuple(slice(*b) for b in key), item) for key, d in blocks.items()),
                  key=lambda r: r.out_off[0])
    return TensorRef(name, first.dtype, full, runs[0].path, pieces=Scatter(tuple(runs), math.prod(full) * item))


def merge(path: Path, step: str | None = None, strategy: Path | None = None) -> Merged:
    """The merged model of a multi-rank directory, from headers and the strategy alone."""
    ckpt_dir = checkpoint_dir(path)
    if ckpt_dir is None:
        raise ConvertError(path, "holds no rank_{k}/ directories")
    root = ckpt_dir.parent if ckpt_dir.name == "checkpoint" else ckpt_dir  # a run's output/ holds strategy/
    rank_files = pick_files(ckpt_dir, step)
    s_files = strategy_files(ckpt_dir, root, strategy)
    stages = read_stages(s_files)
    devices = {lay.devices for layouts in stages.values() for lay in layouts.values()}
    if len(devices) != 1:
        raise ConvertError(s_files[0], f"pipeline stages disagree on their device count ({sorted(devices)})")
    per_stage = devices.pop()
    total = per_stage * len(stages)
    files = rank_files.files
    missing = sorted(set(range(total)) - set(files))
    if missing:
        raise ConvertError(ckpt_dir / f"rank_{missing[0]}", f"not found: the strategy lays the model over {total} "
                           f"ranks ({len(stages)} stage(s) of {per_stage}), and {len(missing)} have no directory",
                           "a rank's checkpoint is missing: copy the whole run's checkpoint directory")
    extra = sorted(set(files) - set(range(total)))
    if extra:
        raise ConvertError(ckpt_dir / f"rank_{extra[0]}", f"is beyond the {total} ranks the strategy "
                           f"({s_files[0].name}) lays the model over: a directory from another run",
                           "remove it, or give the strategy this run saved (--strategy)")
    headers = {k: read_ms_headers([f]) for k, f in files.items()}
    _same_run(headers, files)
    tensors: dict[str, TensorRef] = {}
    others: list[str] = []
    for k in sorted(files):
        others += [n for n in headers[k][2] if n not in others]
    names = list(dict.fromkeys(n for k in sorted(files) for n in headers[k][0]))
    for name in names:
        tensors[name] = _merged_tensor(name, stages, per_stage, headers, files, s_files)
    return Merged(ckpt_dir, root, tensors, rank_files, s_files, others, len(stages), per_stage)


def _same_run(headers: dict, files: dict[int, Path]) -> None:
    """Scalars every rank saves alike (global_step, step_num, epoch_num) must agree."""
    seen: dict[str, tuple[int, bytes]] = {}
    for k in sorted(files):
        for name in SAME_IN_EVERY_RANK:
            ref = headers[k][0].get(name)
            if ref is None or ref.ranges is None or ref.nbytes > 64:
                continue
            value = bytes(ref.ranges.read())
            if name in seen and seen[name][1] != value:
                raise ConvertError(files[k], f"{name} differs from rank {seen[name][0]}'s "
                                   f"({files[seen[name][0]].name}): the ranks' files are from different runs or steps",
                                   "copy every rank's files of one save, or give --step")
            seen.setdefault(name, (k, value))


def _merged_tensor(name: str, stages: dict[int, dict[str, strat.Layout]], per_stage: int, headers: dict,
                   files: dict[int, Path], s_files: list[Path]) -> TensorRef:
    holders = [s for s in sorted(stages) if name in stages[s]]
    if not holders:  # not laid out (global_step, learning_rate, ...): every rank holds it whole
        k = next(k for k in sorted(files) if name in headers[k][0])
        return headers[k][0][name]
    stage = next((s for s in holders if all(name in headers[s * per_stage + d][0] for d in range(per_stage))), None)
    if stage is None:
        s = next((s for s in holders if any(name in headers[s * per_stage + d][0] for d in range(per_stage))),
                 holders[0])
        lacking = next(s * per_stage + d for d in range(per_stage) if name not in headers[s * per_stage + d][0])
        raise ConvertError(files[lacking], f"lacks {name}, which the strategy places on rank {lacking} "
                           f"(pipeline stage {s}) and the other ranks of that stage hold",
                           "the file is from another run or truncated; copy the run's file of this rank")
    layout = stages[stage][name]
    refs = {d: headers[stage * per_stage + d][0][name] for d in range(per_stage)}
    first = refs[0]
    try:
        full = layout.full_shape(first.shape)
        for d, ref in refs.items():
            held = tuple(s.stop - s.start for s in layout.held(d, full))
            if ref.shape != held or ref.dtype != first.dtype:
                raise ValueError(f"rank {stage * per_stage + d} holds {list(ref.shape)} {ref.dtype}, "
                                 f"the strategy implies {list(held)} {first.dtype}")
    except ValueError as e:
        raise ConvertError(files[stage * per_stage], f"{name}: the strategy {s_files[0].name} does not match the "
                           f"slices found ({e}; dev_matrix {list(layout.dev_matrix)}, tensor_map "
                           f"{list(layout.tensor_map)})", "give the strategy this run saved (--strategy)") from None
    if any(r.ranges is None for r in refs.values()):
        raise ConvertError(first.file, f"{name} is not stored as raw bytes")
    return _assembled(name, refs, layout, full)


# ------------------------------------------------------------------ the checkpoint


def open_rank_dir(path: Path, config: Path | None = None, step: str | None = None,
                  strategy: Path | None = None) -> Checkpoint:
    """A multi-rank directory as one MindSpore checkpoint with its model_config: the merged tensors,
    every rank file and strategy file as inputs, the YAML beside it or --config."""
    merged = merge(path, step, strategy)
    cfg_path = config or _yaml(Path(path), merged)
    mc, table = read_mindformers_yaml(cfg_path, "pass --config with the YAML the run was trained with")
    pet = mc.pop("pet_config", None)   # a LoRA run: how the model was fine-tuned, not what it is
    lora = split_mindpet(merged.tensors)
    root = merged.root
    weight_files = [merged.rank_files.files[k] for k in sorted(merged.rank_files.files)]
    index = {f: i for i, f in enumerate(weight_files)}
    shard_of = {n: index.get(r.file, 0) for n, r in merged.tensors.items()}
    tokenizer = [root / n for n in TOKENIZER_FILES if (root / n).is_file()]
    return Checkpoint(root, mc, None, merged.tensors, weight_files, None, shard_of, tokenizer, config_path=cfg_path,
                      non_tensors=merged.non_tensors, recorded_table=table, other_inputs=merged.strategy_files,
                      ranks=describe(merged), lora=lora, pet_config=pet,
                      adapter_record=adapter_record(cfg_path) if lora else None)


def _yaml(path: Path, merged: Merged) -> Path:
    for d in dict.fromkeys([path, merged.root, merged.ckpt_dir]):
        found = find_yaml(d)
        if found.exists():
            return found
    raise ConvertError(merged.root, "no MindFormers YAML found beside the checkpoints",
                       "pass --config with the YAML the run was trained with")


def describe(merged: Merged) -> dict:
    """What conversion.json records about the ranks read."""
    return {"checkpoint_dir": str(merged.ckpt_dir), "ranks": len(merged.rank_files.files),
            "pipeline_stages": merged.stages, "devices_per_stage": merged.devices,
            "chosen_by": merged.rank_files.chosen_by, "step": merged.rank_files.step,
            "files": {str(k): os.fspath(f) for k, f in sorted(merged.rank_files.files.items())},
            "strategy": [os.fspath(f) for f in merged.strategy_files]}
