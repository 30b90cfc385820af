"""Run the plan tensor by tensor and write the output directory atomically.

Memory holds at most the tensors of one output tensor at a time. Output goes to the hidden partial
directory of an outdir.Transaction, renamed into place only when everything, provenance included, is
written; a failure leaves no directory that looks complete. This module picks the writer for the
format and orchestrates; the payloads are materialize.py's; hashing, the out-dir transaction and the record of what was
done (conversion.json) each have their own module.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..core.errors import ConvertError
from ..formats.ckpt import CkptWriter
from ..formats.payload import same_bytes
from ..formats.safetensors import HF_INDEX, NAME_MAP, SafetensorsWriter, weight_map_text
from .hashing import Hashes
from .run_yaml import side_files
from ..plan.lora import PEFT_FILE
from .materialize import Materializer
from .ranks import rank_bytes, write_ranks
from .transaction import Transaction
from ..plan.plan import Plan, PlannedTensor
from ..console.progress import Progress
from .report import Result, provenance

if TYPE_CHECKING:
    pass


def check_twins(plan: Plan) -> None:
    """A tied checkpoint's extra lm_head must be the embedding, or dropping it would change the model."""
    for dropped, kept in plan.twins:
        a, b = plan.source.tensors[dropped], plan.source.tensors[kept]
        if a.shape != b.shape or a.dtype != b.dtype or not same_bytes(a.payload(), b.payload()):
            raise ConvertError(a.file, f"{dropped} differs from {kept}, but config.json says "
                               f"tie_word_embeddings=true", "fix tie_word_embeddings in config.json")


def source_order(plan: Plan, tensors: list[PlannedTensor]) -> list[PlannedTensor]:
    """Tensors in the order their bytes sit in the source files, so reading is sequential
    (what matters when the source is on disk rather than in the page cache)."""
    files = {f: i for i, f in enumerate(plan.source.weight_files)}

    def position(pt: PlannedTensor) -> tuple[int, int]:
        ref = plan.ref(pt.sources[0])
        return files.get(ref.file, 0), ref.offset
    return sorted(tensors, key=position)


def copied_from(plan: Plan, pt: PlannedTensor) -> int | None:
    """The source file offset of a tensor that is copied unchanged from one contiguous range."""
    ref = plan.ref(pt.sources[0])
    if (pt.op != "copy" or pt.cast or ref.ranges is None or len(ref.ranges.segments) != 1
            or pt.sources[0] in plan.merges):
        return None
    return ref.ranges.segments[0][0]


def write_weights(plan: Plan, tmp: Path, hashes: Hashes | None = None, progress: Progress | None = None) -> None:
    hashes = hashes or Hashes(False)
    progress = progress or Progress()
    if plan.parallel is not None:
        write_ranks(plan, tmp, source_order(plan, plan.tensors), hashes, progress)
        return
    make = Materializer(plan)
    if plan.options.format == "ckpt":
        writer = CkptWriter(tmp / plan.weight_files[0], plan.options.ckpt_slice_bytes,
                            plan.options.ckpt_align_min_bytes)
        hashes.follow(writer.path)
        for pt in source_order(plan, plan.tensors):
            writer.add(pt.name, pt.dtype, pt.shape, make(pt), copied_from(plan, pt))
            progress.advance(pt.nbytes)
        writer.close()
        progress.file_done(writer.path.name, writer.path.stat().st_size)
        hashes.submit(writer.path)
        return
    for shard, fname in enumerate(plan.weight_files):
        _write_safetensors(plan, make, [pt for pt in plan.tensors if pt.shard == shard], tmp, fname,
                           plan.weight_metadata, hashes, progress)
    if index := index_file(plan):
        (tmp / index[0]).write_text(index[1])


def index_file(plan: Plan) -> tuple[str, str] | None:
    """(name, text) of the file mapping each tensor to its safetensors file, if the output has one:
    MindSpore's param_name_map.json (its unified loader needs it; written for one file too, alike), or
    HF's index of shards."""
    if plan.options.format != "safetensors" or (plan.direction != "hf2ms" and len(plan.weight_files) == 1):
        return None
    weight_map = {pt.name: plan.weight_files[pt.shard] for pt in plan.tensors}
    return NAME_MAP if plan.direction == "hf2ms" else HF_INDEX, weight_map_text(plan.total_bytes, weight_map)


def _write_safetensors(plan: Plan, make: Materializer, members: list[PlannedTensor], tmp: Path, fname: str,
                       metadata: dict[str, str], hashes: Hashes, progress: Progress) -> None:
    # hf2ms reads in source order, its copies page-congruent with the source; ms2hf keeps the plan's
    # (HF module) order and no source-dependent padding, so one model gives byte-identical files from
    # any MindSpore checkpoint of it (one card, a training run's ranks).
    congruent = plan.direction == "hf2ms"
    if congruent:
        members = source_order(plan, members)
    writer = SafetensorsWriter(tmp / fname, [(t.name, t.dtype, t.shape) for t in members], metadata,
                               [copied_from(plan, t) for t in members] if congruent else ())
    hashes.follow(writer.path)
    for pt in members:
        writer.add(pt.name, make(pt))
        progress.advance(pt.nbytes)
    writer.close()
    progress.file_done(fname, writer.path.stat().st_size)
    hashes.submit(writer.path)


def write_adapter(plan: Plan, tmp: Path, hashes: Hashes, progress: Progress) -> None:
    """ms2hf of a LoRA checkpoint: the factors as a PEFT adapter in OUT_DIR/adapter/ (its config is a side file)."""
    if plan.adapter_tensors:
        (tmp / PEFT_FILE).parent.mkdir()
        _write_safetensors(plan, Materializer(plan), plan.adapter_tensors, tmp, PEFT_FILE, {"format": "pt"},
                           hashes, progress)


def source_paths(plan: Plan, given: Path | None = None) -> list[Path]:
    """What OUT_DIR must stay clear of: the source as the user named it, and every file the plan reads."""
    return [Path(given) if given is not None else plan.source.root, *plan.source.input_files()]


def weight_bytes(plan: Plan) -> int:
    """What the tensor files hold: the model (or with --parallel every rank's share of it) and the
    adapter ms2hf writes beside it."""
    model = rank_bytes(plan) if plan.parallel is not None else plan.total_bytes
    return model + sum(t.nbytes for t in plan.adapter_tensors)


def needed_bytes(plan: Plan) -> int:
    """The size of the output, short of conversion.json and the weight files' headers."""
    index = index_file(plan)
    return (weight_bytes(plan) + sum(p.stat().st_size for p in plan.source.tokenizer_files)
            + sum(len(text.encode()) for text in side_files(plan).values()) + (len(index[1].encode()) if index else 0))


def execute(plan: Plan, out_dir: Path, force: bool = False, source: Path | None = None,
            progress: Progress | None = None) -> Result:
    """Write the plan's output into OUT_DIR, all or nothing. `source` is the path the user gave (a
    directory, or for ms2hf perhaps one checkpoint file); OUT_DIR may not overlap it or any input file."""
    start = time.perf_counter()
    out_dir = Path(out_dir)
    hashes = Hashes(plan.options.hash)
    progress = progress or Progress()
    try:
        with Transaction(out_dir, force, source_paths(plan, source), needed_bytes(plan), progress.notice) as tx:
            tmp = tx.partial
            check_twins(plan)
            for path in plan.source.input_files():
                hashes.submit(path)
            progress.start(weight_bytes(plan), f"{plan.direction} {out_dir.name}")
            write_weights(plan, tmp, hashes, progress)
            write_adapter(plan, tmp, hashes, progress)
            hashes.check_hub_blobs(plan.source.input_files())
            for path in plan.source.tokenizer_files:
                shutil.copyfile(path, tmp / path.name)
            for name, text in side_files(plan, out_dir).items():
                (tmp / name).parent.mkdir(exist_ok=True)
                (tmp / name).write_text(text)
            outputs = [hashes.record(p, str(p.relative_to(tmp))) for p in sorted(tmp.rglob("*")) if p.is_file()]
            record = provenance(plan, outputs, hashes)
            (tmp / "conversion.json").write_text(json.dumps(record, indent=2) + "\n")
            tx.commit()
    finally:
        progress.close()
        hashes.close()
    return Result(out_dir, outputs, record, time.perf_counter() - start, plan)
