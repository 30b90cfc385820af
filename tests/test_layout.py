"""The layout reads as the pipeline: readers -> plan -> execute -> write -> report, each module one job,
and no module imports one above it. Checked on the source, imports inside functions included."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "converter"

# Lowest first. A module may import only modules in a strictly lower layer; the top layer (the API
# front door and the CLI) may import anything, since nothing in the package imports it.
LAYERS: list[set[str]] = [
    {"errors", "version", "machine"},
    {"paths", "extras"},                # paths resolved without looping; optional dependencies by extra
    {"progress", "noise"},              # what a person sees: progress, library logs kept quiet
    {"dtypes", "options", "ops", "value_types", "exprs"},
    {"typed"},                          # YAML data -> frozen dataclasses, by their type hints
    {"formats", "formats.files", "formats.payload"},
    {"formats.tensor"},
    {"formats.safetensors", "formats.ckpt", "formats.torch_bin"},
    {"table"},                          # the table language: typed sections, checks a schema cannot make
    {"mapping"},                        # the tables: found, read with extends:, cached, chosen
    {"edges"},                          # one model's mapping, read both ways
    {"config_rules"},                   # the table's config rules, both ways
    {"checkpoint"},                     # what both readers return
    {"hf_source", "ms_source"},         # readers
    {"plan"},                           # both directions, from the same edges
    {"outdir", "hashing"},              # the out-dir transaction, sha256 of files
    {"report"},                         # what was done, conversion.json included
    {"execute"},                        # payloads, writers, orchestration
    {"compare"},                        # read and compare checkpoints through the mapping
    {"verify.facts", "verify.options", "verify.memory"},          # verify: what it knows, is asked, holds
    {"verify.metrics", "verify.report", "verify.stages"},         # verify: numbers, record, stage hooks
    {"verify.reference", "verify.same_model"},                    # verify: float64 run, same-model check
    {"verify.hf_side", "verify.ms_side"},                         # verify: the two sides
    {"verify.config_parity", "verify.text"},                      # verify: configs, the text report
    {"verify.gate"},                                              # verify: one run, one verdict
    {"verify"},                                                   # verify: its front door
    {"bulk.overlap"},                   # bulk: which paths of a run nest
    {"bulk", "bulk.manifest", "bulk.memory", "bulk.journal", "bulk.runner", "bulk.sources"},  # bulk: parts
    {"bulk.done", "bulk.local", "bulk.ray_exec"},  # bulk: the done-check, the executors
    {"bulk.planner"},                   # bulk: rows' plans, shared between identical sources
    {"bulk.driver"},                    # bulk: one run, start to end
    {"cli", "__init__"},
]
TOP = LAYERS[-1]


def layer_of(module: str) -> int:
    for i, layer in enumerate(LAYERS):
        if module in layer:
            return i
    raise AssertionError(f"converter/{module.replace('.', '/')}.py is in no layer of tests/test_layout.py: "
                         "add it to LAYERS where its imports put it")


def module_name(path: Path, root: Path = PACKAGE) -> str:
    """converter/formats/ckpt.py -> formats.ckpt; converter/formats/__init__.py -> formats; the
    package's own __init__.py -> __init__."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def converter_imports(path: Path, root: Path = PACKAGE) -> list[tuple[int, str]]:
    """(line, module) for every import of another converter module in the file, wherever it sits:
    at the top, inside a function, under `if TYPE_CHECKING`."""
    rel = path.relative_to(root)
    package = list(rel.parent.parts)  # where `from .x` starts looking
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name.removeprefix("converter").lstrip(".") or "__init__")
                      for a in node.names if a.name.split(".")[0] == "converter"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)]
                module = node.module
            elif (node.module or "").split(".")[0] == "converter":
                base, module = [], node.module.removeprefix("converter").lstrip(".") or None
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
        for line, target in converter_imports(path):
            if layer_of(target) >= layer_of(me):
                how = "above" if layer_of(target) > layer_of(me) else "in the same layer as"
                shown = "converter (the package front door)" if target == "__init__" else f"converter.{target}"
                wrong.append(f"converter/{path.relative_to(PACKAGE)}:{line} imports {shown}, which is {how} "
                             f"converter.{me} in LAYERS")
    assert not wrong, "imports that run up the pipeline:\n  " + "\n  ".join(wrong)


def test_the_layer_check_sees_imports_inside_functions_and_of_the_front_door(tmp_path):
    # The check is only worth something if it catches the imports that tempt most: a lazy one inside
    # a function, and the package front door for its __version__.
    fake = tmp_path / "converter"
    (fake / "formats").mkdir(parents=True)
    for name in ("__init__.py", "execute.py", "ops.py", "formats/__init__.py", "formats/files.py",
                 "formats/tensor.py"):
        (fake / name).write_text("")
    (fake / "hf_source.py").write_text("from . import __version__, ops\n"
                                       "def f():\n    from .execute import Materializer\n")
    (fake / "formats" / "ckpt.py").write_text("from ..errors import ConvertError\n"
                                              "from .files import check_regular\n"
                                              "from . import tensor\n"
                                              "import converter.plan\n")
    assert converter_imports(fake / "hf_source.py", fake) == [(1, "__init__"), (1, "ops"), (3, "execute")]
    assert converter_imports(fake / "formats" / "ckpt.py", fake) == [
        (1, "errors"), (2, "formats.files"), (3, "formats.tensor"), (4, "plan")]
