"""The package's folders are the pipeline's rooms (core -> console -> formats -> table -> sources -> plan ->
output -> compare -> verify -> bulk -> the front doors), each module one job, and no module imports one
above it. Checked on the source, imports inside functions included."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "llama_convert"

# The package's folders are the pipeline's rooms, lowest first, each with the order of its own modules
# (lowest first). A module may import a module of a lower room, or of its own room in a lower layer;
# never one beside it or above it. The front doors (the library API and the CLI) stand on top.
ROOMS: list[tuple[str, list[set[str]]]] = [
    ("core", [{"", "errors", "version", "machine"},          # what every room stands on
              {"paths", "extras", "sizes", "signals"},  # paths without loops, optional extras, byte sizes
              {"dtypes", "options"}]),                   # dtypes and exact casts; what the user asked for
    ("console", [{"", "progress", "quiet", "streams"},      # what a person sees: progress, library logs, std streams
                 {"exits"}]),                            # how every command ends: exit status, one stderr line
    ("formats", [{"", "files", "payload", "yaml", "protowire"},  # tiny strict format layers
                 {"tensor", "foreign"},                  # tensor references; formats we recognise but do not read
                 {"safetensors", "ckpt", "torch_bin", "strategy"}]),
    ("table", [{"", "ops", "value_types", "exprs"},       # the table: named ops, value types, expressions
               {"typed"},                                # YAML data -> frozen dataclasses, by type hints
               {"schema"},                               # the table language: typed sections and their checks
               {"loader"},                               # tables found, read with extends:, cached, chosen
               {"edges"},                                # one model's mapping, read both ways
               {"config_rules"}]),                       # the config rules, both ways
    ("sources", [{"", "checkpoint", "hub"},              # what every reader returns; hub ids -> a snapshot
                 {"adapter"},                            # LoRA adapters: PEFT directories, mindpet factors
                 {"hf", "ms"},                           # readers of HF and MindSpore directories
                 {"ranks"},                              # multi-rank MindSpore directories, merged as read
                 {"detect"}]),                           # which side a path is
    ("plan", [{"", "parallel", "lora"},                   # --parallel: which rank holds which part of a tensor; LoRA
              {"plan"}]),                                # every output tensor, both directions, and its file
    ("output", [{"", "fs", "hashing"},                    # renames that never replace, locks, liveness; sha256
                {"out_dir"},                             # OUT_DIR checked: overlap, what --force replaces
                {"transaction"},                         # written aside, renamed into place
                {"run_yaml", "materialize"},             # the files beside the weights; tensors' bytes made
                {"report", "ranks"},                     # what was done, conversion.json included; --parallel's rank files
                {"execute"}]),                           # a plan carried out tensor by tensor
    ("compare", [{"", "inspect", "diff"}]),               # checkpoints read and compared through the table
    ("verify", [{"options", "memory"},                   # what it is asked, what it holds
                {"metrics", "report", "stages"},         # numbers, record, stage hooks
                {"reference", "same_model"},             # float64 run, same-model check
                {"hf_side", "ms_side", "generate"},      # the two sides; MindFormers' generation from a YAML
                {"config_parity", "text", "junit", "plot"},  # configs; the report as text, JUnit XML, a plot
                {"gate"},                                # one run, one verdict
                {"adapter"},                             # --adapter: transformers + PEFT against pet_config
                {""}]),                                  # its front door
    ("bulk", [{"overlap", "options"},                    # which paths of a run nest; what a run is asked
              {"", "manifest", "memory", "journal", "runner", "sources"},
              {"done", "local", "ray_exec"},             # the done-check, the executors
              {"planner"},                               # rows' plans, shared between identical sources
              {"driver"}]),                              # one run, start to end
    # The front doors: the library API; the command, the package, and the entry point of a bulk row's child
    # process (a command given as data), which stand where nothing imports them.
    ("", [{"api"}, {"cli", "__init__", "bulk.row"}]),
]
LAYERS: list[set[str]] = [{f"{room}.{m}".strip(".") if m else room for m in layer} for room, layers in ROOMS
                          for layer in layers]
TOP = {"cli", "__init__", "bulk.row"}


def layer_of(module: str) -> int:
    for i, layer in enumerate(LAYERS):
        if module in layer:
            return i
    raise AssertionError(f"llama_convert/{module.replace('.', '/')}.py is in no layer of tests/test_layout.py: "
                         "add it to ROOMS, in the room of its folder, where its imports put it")


def module_name(path: Path, root: Path = PACKAGE) -> str:
    """llama_convert/formats/ckpt.py -> formats.ckpt; llama_convert/formats/__init__.py -> formats; the
    package's own __init__.py -> __init__."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def package_imports(path: Path, root: Path = PACKAGE) -> list[tuple[int, str]]:
    """(line, module) for every import of another llama_convert module in the file, wherever it sits:
    at the top, inside a function, under `if TYPE_CHECKING`."""
    rel = path.relative_to(root)
    package = list(rel.parent.parts)  # where `from .x` starts looking
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name.removeprefix("llama_convert").lstrip(".") or "__init__")
                      for a in node.names if a.name.split(".")[0] == "llama_convert"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)]
                module = node.module
            elif (node.module or "").split(".")[0] == "llama_convert":
                base, module = [], node.module.removeprefix("llama_convert").lstrip(".") or None
            else:
                continue
            found += _resolve(node, base, module, root)
    return found


def _resolve(node: ast.ImportFrom, base: list[str], module: str | None, root: Path) -> list[tuple[int, str]]:
    """`from .x import y` names module x.y if y is a module, else module x; `from . import y` names
    module y, or the package whose __init__ defines y (for the top package, __init__)."""
    where = [*base, *module.split(".")] if module else base
    out = []
    for alias in node.names:
        target = root.joinpath(*where, alias.name)
        if target.with_suffix(".py").exists() or target.is_dir():
            out.append((node.lineno, ".".join([*where, alias.name])))
        else:
            out.append((node.lineno, ".".join(where) or "__init__"))
    return out


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "mappings" not in p.parts)


def test_every_module_has_a_place_in_the_layer_order():
    for path in modules():
        layer_of(module_name(path) or "__init__")


def test_no_module_imports_one_above_it_or_beside_it():
    wrong = []
    for path in modules():
        me = module_name(path) or "__init__"
        if me in TOP:
            continue
        for line, target in package_imports(path):
            if layer_of(target) >= layer_of(me):
                how = "above" if layer_of(target) > layer_of(me) else "in the same layer as"
                shown = "llama_convert (the package front door)" if target == "__init__" else f"llama_convert.{target}"
                wrong.append(f"llama_convert/{path.relative_to(PACKAGE)}:{line} imports {shown}, which is {how} "
                             f"llama_convert.{me} in ROOMS")
    assert not wrong, "imports that run up the pipeline:\n  " + "\n  ".join(wrong)


def test_the_layer_check_sees_imports_inside_functions_and_of_the_front_door(tmp_path):
    # The check is only worth something if it catches the imports that tempt most: a lazy one inside
    # a function, and the package front door for its __version__.
    fake = tmp_path / "llama_convert"
    (fake / "formats").mkdir(parents=True)
    for name in ("__init__.py", "execute.py", "ops.py", "formats/__init__.py", "formats/files.py",
                 "formats/tensor.py"):
        (fake / name).write_text("")
    (fake / "hf_source.py").write_text("from . import __version__, ops\n"
                                       "def f():\n    from .execute import Materializer\n")
    (fake / "formats" / "ckpt.py").write_text("from ..errors import ConvertError\n"
                                              "from .files import check_regular\n"
                                              "from . import tensor\n"
                                              "import llama_convert.plan\n")
    assert package_imports(fake / "hf_source.py", fake) == [(1, "__init__"), (1, "ops"), (3, "execute")]
    assert package_imports(fake / "formats" / "ckpt.py", fake) == [
        (1, "errors"), (2, "formats.files"), (3, "formats.tensor"), (4, "plan")]
