"""The package's layers, enforced: no module imports from a layer above its own, and no import cycle.

Every import counts, at the top of a module or inside a function (a lazy import still ties the two modules
together), except those under `if TYPE_CHECKING:`. The layers, lowest first (CONTRIBUTING.md says what goes
where):

    core      errors, log, env, distributed, artifacts, config, datafiles, data, tokenization, tasks, providers
    runtime   runtime, early_exit, jslayout, tokenizer_graph: running a bundle, torch-free
    model     models, modeling, torch_program, pruning, distill_losses, distill_student, augment, train, evaluate
    bench     bench/: timing and measuring artifacts
    stages    stages/: one artifact in, one artifact out
    pipeline  recipe, pipeline, search_space, search, tune, seeds, report, peer: runs of several stages
    cli       cli/, __main__: flags -> config -> a stage or pipeline call

A new module must be given a layer in LAYERS below, or this test fails.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = "bertedge"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE

LAYER_ORDER = ("core", "runtime", "model", "bench", "stages", "pipeline", "cli")
# Module (or package prefix) -> layer; the longest matching prefix wins.
LAYERS = {
    "bertedge": "core",  # the package itself: __version__ only
    "bertedge.errors": "core",
    "bertedge.log": "core",
    "bertedge.env": "core",
    "bertedge.distributed": "core",
    "bertedge.artifacts": "core",
    "bertedge.config": "core",
    "bertedge.datafiles": "core",
    "bertedge.data": "core",
    "bertedge.tokenization": "core",
    "bertedge.tasks": "core",
    "bertedge.providers": "core",
    "bertedge.runtime": "runtime",
    "bertedge.early_exit": "runtime",
    "bertedge.jslayout": "runtime",
    "bertedge.tokenizer_graph": "runtime",
    "bertedge.models": "model",
    "bertedge.modeling": "model",
    "bertedge.torch_program": "model",
    "bertedge.pruning": "model",
    "bertedge.distill_losses": "model",
    "bertedge.distill_student": "model",
    "bertedge.augment": "model",
    "bertedge.train": "model",
    "bertedge.evaluate": "model",
    "bertedge.bench": "bench",
    "bertedge.stages": "stages",
    "bertedge.recipe": "pipeline",
    "bertedge.pipeline": "pipeline",
    "bertedge.search_space": "pipeline",
    "bertedge.search": "pipeline",
    "bertedge.tune": "pipeline",
    "bertedge.seeds": "pipeline",
    "bertedge.report": "pipeline",
    "bertedge.peer": "pipeline",
    "bertedge.cli": "cli",
    "bertedge.__main__": "cli",
}

# Cycles known and not yet broken, each with why it is still there. Add none: break the cycle instead.
KNOWN_CYCLES: set[frozenset[str]] = set()  # cycles allowed for now: none (add one only with a reason)


# ----------------------------------------------------------------------------- the checker


def module_name(path: Path, root: Path, package: str) -> str:
    parts = [package, *path.relative_to(root).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST):
    """Every Import / ImportFrom node, at any depth, except under `if TYPE_CHECKING:`."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _type_checking_only(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def import_graph(root: Path, package: str) -> dict[str, dict[str, int]]:
    """{module: {imported package module: line}} for every module under `root` (the package's directory)."""
    files = {module_name(p, root, package): p for p in sorted(root.rglob("*.py"))}
    graph: dict[str, dict[str, int]] = {}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        here = name if is_package else name.rpartition(".")[0]
        edges: dict[str, int] = {}
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:
                    base = here.split(".")[:len(here.split(".")) - node.level + 1]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                # `from pkg import sub` imports the module pkg.sub; `from mod import name`, the module mod.
                targets = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in files else source
                           for alias in node.names]
            for target in targets:
                while target and target not in files:  # `import a.b.c` of a package-qualified name
                    target = target.rpartition(".")[0]
                if target and target != name:
                    edges.setdefault(target, node.lineno)
        graph[name] = edges
    return graph


def layer_of(module: str, layers: dict[str, str]) -> str | None:
    parts = module.split(".")
    for i in range(len(parts), 0, -1):
        prefix = ".".join(parts[:i])
        if prefix in layers:
            return layers[prefix]
    return None


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(graph.get(start, ())))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(graph.get(child, ()))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def check_layers(root: Path, package: str, layers: dict[str, str], order: tuple[str, ...],
                 known_cycles=frozenset()) -> list[str]:
    """One line per problem: a module without a layer, an import from a higher layer, an import cycle."""
    graph = import_graph(root, package)
    rank = {layer: i for i, layer in enumerate(order)}
    problems = []
    for module, edges in sorted(graph.items()):
        own = layer_of(module, layers)
        if own is None:
            problems.append(f"{module}: no layer (add it to LAYERS in tests/test_layers.py)")
            continue
        for target, line in sorted(edges.items()):
            other = layer_of(target, layers)
            if other is not None and rank[other] > rank[own]:
                problems.append(f"{module}:{line} imports {target}: layer {own} must not import from the higher "
                                f"layer {other}")
    for component in cycles(graph):
        if frozenset(component) not in known_cycles:
            problems.append("import cycle among: " + ", ".join(component))
    return problems


# ----------------------------------------------------------------------------- the tests


def test_package_layers_hold():
    problems = check_layers(ROOT, PACKAGE, LAYERS, LAYER_ORDER, KNOWN_CYCLES)
    assert not problems, "\n".join(problems)


def test_known_cycles_still_exist():
    """A known cycle that is gone must leave KNOWN_CYCLES, so it cannot come back unnoticed."""
    present = [set(c) for c in cycles(import_graph(ROOT, PACKAGE))]
    gone = [sorted(known) for known in KNOWN_CYCLES if not any(known <= component for component in present)]
    assert not gone, f"no longer cycles, remove them from KNOWN_CYCLES: {gone}"


def _write_package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "pkg"
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


TOY_LAYERS = {"pkg": "core", "pkg.low": "core", "pkg.mid": "stages", "pkg.top": "cli"}
TOY_ORDER = ("core", "stages", "cli")


@pytest.mark.parametrize("planted", [
    "from .top import main\n",  # at module level
    "def f():\n    from . import top\n    return top\n",  # lazy, inside a function
    "import pkg.top.cmd\n",  # absolute, a submodule of the higher layer
])
def test_checker_reports_a_planted_upward_import(tmp_path, planted):
    root = _write_package(tmp_path, {"__init__.py": "", "low.py": planted, "mid.py": "from . import low\n",
                                     "top/__init__.py": "def main():\n    pass\n", "top/cmd.py": ""})
    problems = check_layers(root, "pkg", TOY_LAYERS, TOY_ORDER)
    assert len(problems) == 1 and re.match(r"pkg\.low:\d+ imports pkg\.top", problems[0]) and \
        "layer core must not import from the higher layer cli" in problems[0], problems


def test_checker_ignores_type_checking_imports_and_reports_cycles(tmp_path):
    root = _write_package(tmp_path, {
        "__init__.py": "",
        "low.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .top import main\n",
        "mid.py": "def f():\n    from . import top\n",  # stages -> cli: upward, and lazy
        "top/__init__.py": "from .. import low\nfrom ..low import x\n",
    })
    problems = check_layers(root, "pkg", TOY_LAYERS, TOY_ORDER)
    assert problems == ["pkg.mid:2 imports pkg.top: layer stages must not import from the higher layer cli"]
    cyclic = _write_package(tmp_path / "c", {"__init__.py": "", "low.py": "def f():\n    from . import mid\n",
                                             "mid.py": "from . import low\n"})
    assert check_layers(cyclic, "pkg", {"pkg": "core"}, ("core",)) == ["import cycle among: pkg.low, pkg.mid"]


def test_checker_wants_a_layer_for_every_module(tmp_path):
    root = _write_package(tmp_path, {"__init__.py": "", "low.py": "", "new.py": ""})
    problems = check_layers(root, "pkg", {"pkg.low": "core"}, ("core",))
    assert problems == ["pkg: no layer (add it to LAYERS in tests/test_layers.py)",
                        "pkg.new: no layer (add it to LAYERS in tests/test_layers.py)"]
