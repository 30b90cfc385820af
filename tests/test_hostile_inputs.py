"""Whatever a header, index, config or YAML says, llama-convert converts it or refuses it cleanly.

The property, for every mutated real input: the command exits 0 (a writer's OUT_DIR is then complete)
or exits 2 with exactly one line on stderr and no traceback; hf2ms, ms2hf and inspect never exit 1;
nothing is left next to OUT_DIR after a failure; the source is byte-identical afterwards; nothing
hangs. A safetensors file that the reference `safetensors` library rejects is never converted.

Most examples run in-process through click's CliRunner (a subprocess per example would cost seconds);
a few run the installed console script so the real process is exercised too.
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import resource
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import FIXTURE_DIRS, FIXTURES, REAL_CONFIG_FILES, run_cli, tree_hash
from llama_convert.cli import main

SHARDED = FIXTURES / "gqa-tied-bf16-sharded"
SAFETENSORS_FILES = sorted(p for d in FIXTURE_DIRS for p in d.glob("*.safetensors"))
BIN_FILES = sorted(p for d in FIXTURE_DIRS for p in d.glob("*.bin"))

SECONDS_PER_RUN = 20          # an in-process run of these tiny models takes well under a second
SUBPROCESS_SECONDS = 60       # the console script imports torch for .bin sources: a few seconds
MEMORY_HEADROOM = 3 << 30     # a run that wants more is a blow-up (e.g. a layer count of 10**8), not a model

# Reproducible in CI, nothing written into the checkout, no per-example deadline (runs vary on a shared host).
FUZZ = settings(derandomize=True, database=None, deadline=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def fuzz(examples: int) -> settings:
    return settings(FUZZ, max_examples=examples)


# ---------------------------------------------------------------------------- hostile documents

class Deep:
    """A list nested `depth` deep, written as text: building it as Python objects would hit recursion limits."""

    def __init__(self, depth: int):
        self.depth = depth

    def __repr__(self) -> str:
        return f"Deep({self.depth})"


class Pairs(list):
    """A JSON object written with exactly these (key, value) pairs, duplicated keys included."""


def dump_json(value) -> str:
    if isinstance(value, Deep):
        return "[" * value.depth + "]" * value.depth
    if isinstance(value, Pairs):
        return "{" + ",".join(f"{json.dumps(k)}:{dump_json(v)}" for k, v in value) + "}"
    if isinstance(value, dict):
        return dump_json(Pairs(value.items()))
    if isinstance(value, list):
        return "[" + ",".join(map(dump_json, value)) + "]"
    return json.dumps(value)  # NaN and Infinity as Python's json (and many writers) emit them


def dump_yaml(value) -> str:
    """Block-style YAML as MindFormers writes it; hostile markers become flow-style JSON, which YAML reads."""
    flows: dict[str, str] = {}

    def plain(v):
        if isinstance(v, (Deep, Pairs)):
            token = f"hostile_marker_{len(flows)}"
            flows[token] = dump_json(v)
            return token
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, list):
            return [plain(x) for x in v]
        return v
    text = yaml.safe_dump(plain(value), sort_keys=False)
    for token, flow in flows.items():
        text = text.replace(token, flow)
    return text


@st.composite
def weighted(draw, *choices: tuple[int, st.SearchStrategy]):
    """one_of with weights (one_of draws its branches about evenly, and folds repeated ones)."""
    pick = draw(st.integers(0, sum(w for w, _ in choices) - 1))
    for w, strategy in choices:
        if pick < w:
            return draw(strategy)
        pick -= w


NUMBERS = st.one_of(
    st.sampled_from([0, -1, 1, 2**31, 2**63, 2**64, 10**30, 1e308, -1e308, 0.5, -0.0,
                     math.inf, -math.inf, math.nan]),
    st.integers(10**6, 10**30),
    st.integers(-10**30, -1),
)
STRINGS = st.sampled_from(["", "../x", "/etc/passwd", "../../../../etc/passwd", "4", "eight", "NaN",
                           "model.safetensors", "config.json", "\u0000", "\u00e9\u00e9"])
# The values that break validation most often, drawn as often as all the rest together.
EDGES = st.sampled_from([0, -1, None, "", True, [], {}, 10**8, 2**63, math.inf, math.nan, "4", "../x"])
HOSTILE = weighted(
    (8, EDGES),
    (3, NUMBERS),
    (2, STRINGS),
    (1, st.sampled_from([2, 100, 10**5]).map(Deep)),
    (1, st.lists(st.integers(-3, 10**6), max_size=3)),
    (1, st.dictionaries(st.sampled_from(["factor", "type", "rope_type", "x"]), st.integers(-1, 10), max_size=2)),
)
TYPES = ("int", "str", "float", "list", "dict", "null", "bool")


def swapped(value, kind: str):
    """The value as another JSON type, keeping what it said where that is possible ("4" for 4, [4] for 4)."""
    number = value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    if kind == "int":
        return int(number) if number is not None and math.isfinite(number) else 7
    if kind == "str":
        return value if isinstance(value, str) and value == "" else dump_json(value)
    if kind == "float":
        return float(number) if number is not None else 7.0
    if kind == "list":
        return [value]
    if kind == "dict":
        return {"value": value}
    if kind == "bool":
        return not value if isinstance(value, bool) else True
    return None


def paths(doc, prefix=()) -> list[tuple]:
    """Every place in a document: the root (the empty path), each object member and each list item, nested."""
    out = [prefix]
    if isinstance(doc, dict) and not isinstance(doc, Pairs):
        for k, v in doc.items():
            out += paths(v, (*prefix, k))
    elif isinstance(doc, list) and not isinstance(doc, Pairs):
        for i, v in enumerate(doc):
            out += paths(v, (*prefix, i))
    return out


def at(doc, path: tuple):
    for step in path:
        doc = doc[step]
    return doc


# Mostly values that lie, sometimes structure that lies; rarely a document that is not an object.
EDITS = st.sampled_from(("replace",) * 6 + ("swap",) * 4 + ("delete",) * 2 + ("duplicate",) * 2 + ("deep", "root"))


@st.composite
def mutated_document(draw, doc):
    """1 to 3 edits of a parsed document: delete, replace with a hostile value, swap a type, nest deep,
    duplicate a key."""
    doc = copy.deepcopy(doc)
    for _ in range(draw(st.integers(1, 3))):
        edit = draw(EDITS)
        if edit == "root":  # the document is not an object at all
            return draw(st.one_of(HOSTILE, st.sampled_from(TYPES).map(lambda k: swapped({}, k))))
        path = draw(st.sampled_from(paths(doc)[1:] or [("x",)]))
        parent, key = at(doc, path[:-1]), path[-1]
        if isinstance(parent, Pairs):
            continue
        if edit == "delete":
            del parent[key]
        elif edit == "replace":
            parent[key] = draw(HOSTILE)
        elif edit == "swap":
            parent[key] = swapped(parent[key], draw(st.sampled_from(TYPES)))
        elif edit == "deep":
            parent[key] = Deep(draw(st.sampled_from([3, 10**5])))
        elif isinstance(parent, dict):
            # The key written twice: JSON parsers keep the last, so the hostile one wins, or an identical twin
            second = draw(st.one_of(st.just(parent[key]), HOSTILE))
            pairs = Pairs(parent.items())
            pairs.append((key, second))
            if path[:-1]:
                at(doc, path[:-2])[path[-2]] = pairs
            else:
                doc = pairs
    return doc


@st.composite
def mutated_bytes(draw, data: bytes, hot: int):
    """Truncation at any byte, or a few byte flips anywhere or in the first `hot` bytes (the header)."""
    kind = draw(st.sampled_from(("truncate", "flip", "flip-header")))
    if kind == "truncate":
        return data[:draw(st.integers(0, max(len(data) - 1, 0)))]
    out = bytearray(data)
    limit = min(hot, len(data)) if kind == "flip-header" else len(data)
    for _ in range(draw(st.integers(1, 4))):
        out[draw(st.integers(0, limit - 1))] ^= draw(st.integers(1, 255))
    return bytes(out)


def split_safetensors(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


@st.composite
def mutated_safetensors(draw, path: Path) -> bytes:
    """A structurally edited header, raw bytes mutated, or a lying length field."""
    raw = path.read_bytes()
    header, data = split_safetensors(path)
    kind = draw(st.sampled_from(("header", "offsets", "bytes", "length")))
    if kind == "offsets":
        # A tensor moved onto another's bytes, into a gap or past the end, keeping its own length: the
        # header stays self-consistent per tensor, only the layout lies.
        names = sorted(k for k in header if k != "__metadata__")
        victim = header[draw(st.sampled_from(names))]
        begin, end = victim["data_offsets"]
        starts = sorted({header[k]["data_offsets"][0] for k in names} | {len(data)})
        new = draw(st.one_of(st.sampled_from(starts), st.integers(0, len(data))))
        victim["data_offsets"] = [new, new + end - begin]
        kind = "header-as-is"
    if kind == "header-as-is":
        blob = json.dumps(header).encode()
        return struct.pack("<Q", len(blob)) + blob + data
    if kind == "header":
        blob = dump_json(draw(mutated_document(header))).encode()
        return struct.pack("<Q", len(blob)) + blob + data
    if kind == "bytes":
        return draw(mutated_bytes(raw, 8 + len(raw) - len(data)))
    n = len(raw) - len(data) - 8
    length = draw(st.one_of(st.sampled_from([0, 1, 2, n - 1, n + 1, len(raw) - 8, len(raw), 100 << 20,
                                             (100 << 20) + 1, 2**63, 2**64 - 1]),
                            st.integers(0, 2**64 - 1)))
    return struct.pack("<Q", length) + raw[8:]


# ---------------------------------------------------------------------------- running and judging

class Hang(BaseException):
    """Raised by the alarm; a BaseException so that neither click nor the code under test swallows it."""


@contextlib.contextmanager
def bounded():
    """A run that loops or allocates without end becomes a failure instead of a stuck or dead test run."""
    def on_alarm(signum, frame):
        raise Hang(f"no answer after {SECONDS_PER_RUN} s")
    vm = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmSize:"))
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = vm + MEMORY_HEADROOM
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    previous = signal.signal(signal.SIGALRM, on_alarm)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    signal.alarm(SECONDS_PER_RUN)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@dataclass
class Outcome:
    code: int
    stderr: str
    crash: str | None  # the traceback the user would have seen, if any


# Warnings a Python process does not print unless asked to.
SILENT_WARNINGS = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)


def in_process(*args) -> Outcome:
    try:
        with bounded(), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = CliRunner().invoke(main, [str(a) for a in args])
    except Hang as e:
        return Outcome(-1, "", f"hang: {e}")
    crash = None
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        crash = "".join(traceback.format_exception(*result.exc_info))
    # The console script would print these on stderr, beside the one line of the error.
    shown = "".join(warnings.formatwarning(w.message, w.category, w.filename, w.lineno)
                    for w in caught if not issubclass(w.category, SILENT_WARNINGS))
    return Outcome(result.exit_code, shown + result.stderr, crash)


def _cap_memory() -> None:
    # Private memory only (not the mapped libraries): 10**8 layers must fail here, not wake the OOM killer.
    resource.setrlimit(resource.RLIMIT_DATA, (MEMORY_HEADROOM + (1 << 30), resource.RLIM_INFINITY))


def as_subprocess(*args) -> Outcome:
    """The installed console script, as conftest.run_cli runs it, with a memory cap."""
    exe = Path(sys.executable).parent / "llama-convert"
    try:
        proc = subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True,
                              timeout=SUBPROCESS_SECONDS, preexec_fn=_cap_memory)
    except subprocess.TimeoutExpired:
        return Outcome(-1, "", f"hang: no answer after {SUBPROCESS_SECONDS} s")
    return Outcome(proc.returncode, proc.stderr, proc.stderr if "Traceback" in proc.stderr else None)


def check(run, command: str, src: Path, *rest: Path | str, writes: bool = False) -> Outcome:
    """Run `command src [rest]` in src's parent (OUT_DIR, if any, is its sibling `out`) and check the property."""
    work = src.parent
    before = tree_hash(src)
    outcome = run(command, src, *rest)
    said = f"{command} {src.name}: exit {outcome.code}, stderr {outcome.stderr!r}"
    crashed = outcome.crash is not None
    assert not crashed, f"{command} crashed:\n{outcome.crash}"
    allowed = {0, 1, 2} if command == "diff" else {0, 2}
    assert outcome.code in allowed, said
    if outcome.code == 2:
        lines = [line for line in outcome.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "Traceback" not in outcome.stderr, said
    out = work / "out"
    left = sorted(p.name for p in work.iterdir() if p != src)
    if writes and outcome.code == 0:
        assert left == ["out"], f"{said}; left beside the output: {left}"
        record = json.loads((out / "conversion.json").read_text())
        for f in record["outputs"]:
            assert (out / f["name"]).stat().st_size == f["size"], f"{said}; {f['name']} is incomplete"
    else:
        assert left == [], f"{said}; left behind: {left}"
    assert tree_hash(src) == before, f"{said}; the source was modified"
    return outcome


@contextlib.contextmanager
def workdir(base: Path, source: Path):
    """A fresh directory holding a copy of `source` as `src`, removed afterwards (examples are many)."""
    work = Path(tempfile.mkdtemp(dir=base))
    try:
        shutil.copytree(source, work / "src")
        yield work / "src"
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="session")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hostile")


@pytest.fixture(scope="session")
def ms_dirs(tmp_path_factory) -> list[Path]:
    """MindFormers outputs of hf2ms, the material of the way back: a plain one and a fused, tied one."""
    base = tmp_path_factory.mktemp("ms")
    built = []
    for fixture, extra in ((FIXTURES / "mha-untied-fp32", ()), (SHARDED, ("--qkv-concat",))):
        out = base / fixture.name
        proc = run_cli("hf2ms", fixture, out, *extra)
        assert proc.returncode == 0, proc.stderr
        built.append(out)
    return built


# What config.json says and what llama_config.yaml says of the same thing (HF key, MindFormers key).
SAME_FACT = (("hidden_size", "hidden_size"), ("intermediate_size", "intermediate_size"),
             ("num_attention_heads", "num_heads"), ("num_hidden_layers", "num_layers"), ("vocab_size", "vocab_size"),
             ("num_key_value_heads", "n_kv_heads"), ("max_position_embeddings", "max_position_embedding"),
             ("rope_theta", "theta"), ("rms_norm_eps", "rms_norm_eps"))
COUNTS = ("hidden_size", "intermediate_size", "num_heads", "num_layers", "vocab_size", "n_kv_heads",
          "max_position_embedding", "seq_length")


def is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def assert_tells_the_truth(hf: dict, mc: dict, said: str) -> None:
    """A conversion that succeeded used sane sizes, and config.json and the YAML say the same numbers.
    (A MindFormers key left out or null takes its default, except n_kv_heads, whose default is MHA.)"""
    mc = {k: v for k, v in mc.items() if v is not None}
    mc["n_kv_heads"] = mc.get("n_kv_heads", mc.get("num_heads"))
    for key in COUNTS:
        if key in mc:
            assert isinstance(mc[key], int) and not isinstance(mc[key], bool) and mc[key] > 0, \
                f"{said}; llama_config.yaml has {key}: {mc[key]!r}"
    for key in ("theta", "rms_norm_eps"):
        if key in mc:
            assert is_number(mc[key]) and mc[key] > 0, f"{said}; llama_config.yaml has {key}: {mc[key]!r}"
    for hf_key, ms_key in SAME_FACT:
        if hf.get(hf_key) is not None and ms_key in mc:
            assert hf[hf_key] == mc[ms_key], \
                f"{said}; config.json has {hf_key}: {hf[hf_key]!r}, llama_config.yaml {ms_key}: {mc[ms_key]!r}"


HF_COMMANDS = st.sampled_from(("hf2ms", "hf2ms", "hf2ms", "hf2ms-safetensors", "inspect", "diff"))
MS_COMMANDS = st.sampled_from(("ms2hf", "ms2hf", "ms2hf", "inspect", "diff"))


def check_hf(run, command: str, src: Path, original: Path) -> Outcome:
    if command == "inspect":
        return check(run, "inspect", src)
    if command == "diff":
        return check(run, "diff", src, original)
    fmt = ("--format", "safetensors") if command == "hf2ms-safetensors" else ()
    outcome = check(run, "hf2ms", src, src.parent / "out", *fmt, writes=True)
    if outcome.code == 0:
        mc = yaml.safe_load((src.parent / "out/llama_config.yaml").read_text())["model"]["model_config"]
        assert_tells_the_truth(json.loads((src / "config.json").read_text()), mc, "hf2ms exit 0")
    return outcome


def check_ms(run, command: str, src: Path, hf_twin: Path) -> Outcome:
    if command == "inspect":
        return check(run, "inspect", src)
    if command == "diff":
        return check(run, "diff", src, hf_twin)
    outcome = check(run, "ms2hf", src, src.parent / "out", writes=True)
    if outcome.code == 0:
        mc = yaml.safe_load((src / "llama_config.yaml").read_text())["model"]["model_config"]
        assert_tells_the_truth(json.loads((src.parent / "out/config.json").read_text()), mc, "ms2hf exit 0")
    return outcome


def twin_of(ms_dir: Path) -> Path:
    return FIXTURES / ms_dir.name


# ---------------------------------------------------------------------------- the properties

@fuzz(250)
@given(data=st.data(), fixture=st.sampled_from(FIXTURE_DIRS),
       name=st.sampled_from(("config.json", "config.json", "generation_config.json")), command=HF_COMMANDS)
def test_any_config_json_converts_or_is_refused_in_one_line(scratch, data, fixture, name, command):
    raw = (fixture / name).read_bytes()
    edited = mutated_document(json.loads(raw)).map(dump_json).map(str.encode)
    mutation = data.draw(weighted((3, edited), (1, mutated_bytes(raw, len(raw)))))
    with workdir(scratch, fixture) as src:
        (src / name).write_bytes(mutation)
        check_hf(in_process, command, src, fixture)


@pytest.mark.skipif(not REAL_CONFIG_FILES, reason="../shared/real-configs is not available")
@fuzz(100)
@given(data=st.data(), fixture=st.sampled_from(FIXTURE_DIRS), command=HF_COMMANDS)
def test_any_real_config_converts_or_is_refused_in_one_line(scratch, data, fixture, command):
    real = data.draw(st.sampled_from(REAL_CONFIG_FILES))
    mutation = dump_json(data.draw(mutated_document(json.loads(real.read_text()))))
    with workdir(scratch, fixture) as src:
        (src / "config.json").write_text(mutation)
        check_hf(in_process, command, src, fixture)


@fuzz(120)
@given(data=st.data(), command=HF_COMMANDS)
def test_any_checkpoint_index_converts_or_is_refused_in_one_line(scratch, data, command):
    raw = (SHARDED / "model.safetensors.index.json").read_bytes()
    edited = mutated_document(json.loads(raw)).map(dump_json).map(str.encode)
    mutation = data.draw(weighted((3, edited), (1, mutated_bytes(raw, len(raw)))))
    with workdir(scratch, SHARDED) as src:
        (src / "model.safetensors.index.json").write_bytes(mutation)
        check_hf(in_process, command, src, SHARDED)


def reference_accepts(path: Path) -> bool:
    from safetensors import safe_open
    try:
        with safe_open(str(path), "np") as f:
            for name in f.keys():
                f.get_slice(name)
        return True
    except Exception:
        return False


@fuzz(250)
@given(data=st.data(), shard=st.sampled_from(SAFETENSORS_FILES), command=HF_COMMANDS)
def test_any_safetensors_header_converts_or_is_refused_in_one_line(scratch, data, shard, command):
    mutation = data.draw(mutated_safetensors(shard))
    with workdir(scratch, shard.parent) as src:
        (src / shard.name).write_bytes(mutation)
        outcome = check_hf(in_process, command, src, shard.parent)
        if command.startswith("hf2ms") and not reference_accepts(src / shard.name):
            assert outcome.code == 2, f"{shard.name}: the reference safetensors library rejects this file, hf2ms converted it"


@fuzz(30)
@given(data=st.data(), weights=st.sampled_from(BIN_FILES), command=HF_COMMANDS)
def test_any_pytorch_bin_converts_or_is_refused_in_one_line(scratch, data, weights, command):
    mutation = data.draw(mutated_bytes(weights.read_bytes(), 1024))
    with workdir(scratch, weights.parent) as src:
        (src / weights.name).write_bytes(mutation)
        check_hf(in_process, command, src, weights.parent)


@fuzz(150)
@given(data=st.data(), which=st.integers(0, 1), command=MS_COMMANDS)
def test_any_mindformers_yaml_converts_back_or_is_refused_in_one_line(scratch, ms_dirs, data, which, command):
    ms_dir = ms_dirs[which]
    raw = (ms_dir / "llama_config.yaml").read_bytes()
    edited = mutated_document(yaml.safe_load(raw)).map(dump_yaml).map(str.encode)
    mutation = data.draw(weighted((3, edited), (1, mutated_bytes(raw, len(raw)))))
    with workdir(scratch, ms_dir) as src:
        (src / "llama_config.yaml").write_bytes(mutation)
        check_ms(in_process, command, src, twin_of(ms_dir))


@fuzz(120)
@given(data=st.data(), which=st.integers(0, 1), command=MS_COMMANDS)
def test_any_mindspore_ckpt_converts_back_or_is_refused_in_one_line(scratch, ms_dirs, data, which, command):
    ms_dir = ms_dirs[which]
    mutation = data.draw(mutated_bytes((ms_dir / "model.ckpt").read_bytes(), 512))
    with workdir(scratch, ms_dir) as src:
        (src / "model.ckpt").write_bytes(mutation)
        check_ms(in_process, command, src, twin_of(ms_dir))


@fuzz(8)
@given(data=st.data(), target=st.sampled_from(("config", "header", "index", "yaml")))
def test_hostile_inputs_through_the_real_process(scratch, ms_dirs, data, target):
    """The same property for the installed console script: real exit status, real stderr."""
    if target == "yaml":
        ms_dir = ms_dirs[1]
        mutation = dump_yaml(data.draw(mutated_document(yaml.safe_load((ms_dir / "llama_config.yaml").read_text()))))
        with workdir(scratch, ms_dir) as src:
            (src / "llama_config.yaml").write_text(mutation)
            check_ms(as_subprocess, "ms2hf", src, twin_of(ms_dir))
        return
    name = {"config": "config.json", "header": "model-00002-of-00004.safetensors",
            "index": "model.safetensors.index.json"}[target]
    if target == "header":
        mutation = data.draw(mutated_safetensors(SHARDED / name))
    else:
        mutation = dump_json(data.draw(mutated_document(json.loads((SHARDED / name).read_text())))).encode()
    with workdir(scratch, SHARDED) as src:
        (src / name).write_bytes(mutation)
        check_hf(as_subprocess, "hf2ms", src, SHARDED)
