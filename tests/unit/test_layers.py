"""The package's shape: every import (module-level, function-level, ``if TYPE_CHECKING:``) follows the layer table.

The table is :data:`maskcrypt.core.layers.LAYERS`. This test reads the source with ``ast``
(nothing is imported), so it also sees imports that run only inside a function.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import maskcrypt
from maskcrypt.core.layers import HEAVY_PACKAGES, LAYERS, LAZY_IMPORTERS, rank, unit_of

PACKAGE = Path(maskcrypt.__file__).parent


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    line: int
    in_function: bool


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = ["maskcrypt", *path.relative_to(PACKAGE).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _resolve(name: str, imported: str, known: dict[str, Path]) -> str:
    """``from name import imported``: the submodule if ``imported`` is one, else ``name``."""
    sub = f"{name}.{imported}"
    return sub if sub in known else name


def edges_of(module: str, path: Path, known: dict[str, Path]) -> list[Edge]:
    tree = ast.parse(path.read_text(), str(path))
    out: list[Edge] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.ImportFrom):
                if child.level:  # relative imports: resolve against this module's package
                    base = module.split(".")[: len(module.split(".")) - child.level + (path.name == "__init__.py")]
                    name = ".".join(base + ([child.module] if child.module else []))
                else:
                    name = child.module or ""
                if name == "maskcrypt" or name.startswith("maskcrypt."):
                    out.extend(Edge(module, _resolve(name, a.name, known), child.lineno, inside) for a in child.names)
            elif isinstance(child, ast.Import):
                out.extend(Edge(module, a.name, child.lineno, inside) for a in child.names
                           if a.name == "maskcrypt" or a.name.startswith("maskcrypt."))
            visit(child, inside)

    visit(tree, False)
    return [e for e in out if e.target != module]


def all_edges() -> list[Edge]:
    known = modules()
    return [e for m, p in known.items() for e in edges_of(m, p, known)]


def test_every_module_is_in_the_layer_table():
    for module in modules():
        rank(module)  # raises KeyError naming the module


def test_no_import_runs_upward_or_sideways():
    bad = []
    for e in all_edges():
        if e.target == "maskcrypt":  # the package root: its version and MaskcryptError, importable from anywhere
            continue
        if e.source == "maskcrypt":
            ok = unit_of(e.target) == "core"
        else:
            src, dst = rank(e.source), rank(e.target)
            ok = dst < src or (dst == src and unit_of(e.source) == unit_of(e.target))
        if not ok:
            bad.append(f"{e.source}:{e.line} imports {e.target} "
                       f"({LAYERS[rank(e.source)][0] if rank(e.source) < len(LAYERS) else 'main'} -> "
                       f"{LAYERS[rank(e.target)][0]})")
    assert not bad, "imports against the layer table (maskcrypt/core/layers.py):\n" + "\n".join(bad)


def test_no_import_circle():
    graph: dict[str, set[str]] = {}
    for e in all_edges():
        graph.setdefault(e.source, set()).add(e.target)
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []
    circles: list[str] = []

    def walk(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                circles.append(" -> ".join([*stack[stack.index(nxt):], nxt]))
            elif nxt not in state:
                walk(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            walk(node)
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_maskcrypt_imports_sit_at_module_level_outside_the_front_door():
    lazy = [f"{e.source}:{e.line} imports {e.target} inside a function" for e in all_edges()
            if e.in_function and unit_of(e.source) not in LAZY_IMPORTERS]
    assert not lazy, ("maskcrypt imports inside functions (allowed only in "
                      f"{', '.join(LAZY_IMPORTERS)}; heavy third-party packages may stay lazy):\n" + "\n".join(lazy))


def test_only_heavy_third_party_packages_are_imported_inside_functions():
    lazy = []
    for module, path in modules().items():
        tree = ast.parse(path.read_text(), str(path))
        functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        for fn in functions:
            for node in ast.walk(fn):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and not node.level:
                    names = [node.module or ""]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top not in HEAVY_PACKAGES and top != "maskcrypt":
                        lazy.append(f"{module}:{node.lineno} imports {name} inside {fn.name}()")
    assert not lazy, ("imports inside functions of packages that are not heavy (core.layers.HEAVY_PACKAGES):\n"
                      + "\n".join(sorted(set(lazy))))


def test_the_checker_sees_function_level_and_type_checking_imports(tmp_path):
    """The walker is what the rules above rely on: a hidden upward edge must be found."""
    src = tmp_path / "m.py"
    src.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from maskcrypt.cli.main import main\n"
                   "def f():\n    from maskcrypt.pipeline import run\n")
    found = edges_of("maskcrypt.core.m", src, {"maskcrypt.cli.main": src, "maskcrypt.pipeline": src})
    assert [(e.target, e.in_function) for e in found] == [("maskcrypt.cli.main", False), ("maskcrypt.pipeline", True)]


def test_package_shape():
    """At most 12 modules directly in maskcrypt/ (besides __init__ and __main__), none over 500 lines."""
    top = [p.name for p in PACKAGE.glob("*.py") if p.name not in ("__init__.py", "__main__.py")]
    assert len(top) <= 12, top
    sizes = {str(p.relative_to(PACKAGE)): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    long = {name: n for name, n in sizes.items() if n > 500}
    assert not long, f"modules over 500 lines: {long}"


def test_the_import_paths_users_were_shown_still_work():
    """The paths earlier READMEs and the interop docs show: re-exported from the new places."""
    from maskcrypt import MaskcryptError, __version__  # noqa: F401
    from maskcrypt.client import Client
    from maskcrypt.config import EvalSettings, Thresholds  # noqa: F401
    from maskcrypt.data import load, ray_dataset  # noqa: F401
    from maskcrypt.masks import MaskLibrary  # noqa: F401
    from maskcrypt.models import Inpainter, Recognizer  # noqa: F401
    from maskcrypt.models.predictor import Predictor  # noqa: F401
    from maskcrypt.serving import ServiceConfig, load_targets  # noqa: F401
    from maskcrypt.serving.client import Client as Same

    assert Client is Same
