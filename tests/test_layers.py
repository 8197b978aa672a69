"""The package's layering contract, read from the source (function-level imports included).

Layers, bottom to top; a module imports only from its own layer or the layers below, never
from a sibling of the same row, and no imports form a circle. A function-level import of
one of the package's own modules is allowed only for modules that pull in an optional
dependency (web server, lm-eval, transformers), so that `gptv` starts without them.
Imports under ``if TYPE_CHECKING:`` never run and are left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "gptvariants"

LAYERS: list[tuple[str, ...]] = [
    ("common",),  # checks, atomic writes, user files, devices and processes
    ("metrics", "intervals"),  # numbers from arrays; their intervals and the verdicts they allow
    ("core",),  # config, heads, objectives, variants, the model
    ("data",),  # tokenizers, datasets, the synthetic language, eval sources
    ("store",),  # run folders, checkpoints
    ("predict",),  # the predictive distribution and the methods that form it
    ("targets",),  # teacher sets (a teacher may be a trained run)
    ("train", "decode"),  # independent of each other
    ("evaluate",),  # gptv eval's scoring, reports, the experiment
    ("apps",),  # command line, Python API, web playground, export, lm-eval
]

# modules that import an optional dependency at their top: the only targets of function-level imports
OPTIONAL = {
    "apps.serve.app": "fastapi",
    "apps.harness.model": "lm_eval",
    "apps.hf_modeling.modeling_gptvariants": "transformers",
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, bool, int]]:
    """(imported module relative to the package, inside a function, line) for each internal import."""
    mod = _module_name(path)
    is_pkg = path.name == "__init__.py"
    tree = ast.parse(path.read_text())
    found: list[tuple[str, bool, int]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and ast.unparse(child.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
                continue
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.ImportFrom) and child.level:
                base = mod.split(".") if mod else []
                base = base if is_pkg else base[:-1]
                base = base[: len(base) - (child.level - 1)]
                target = ".".join([*base, *([child.module] if child.module else [])])
                names = [f"{target}.{a.name}" if target else a.name for a in child.names]
                modules = [n for n in names if _exists(n)] or [target]
                found.extend((m, in_function, child.lineno) for m in modules)
            elif isinstance(child, (ast.ImportFrom, ast.Import)):
                names = [child.module or ""] if isinstance(child, ast.ImportFrom) else [a.name for a in child.names]
                for n in names:
                    if n == "gptvariants" or n.startswith("gptvariants."):
                        found.append((n.removeprefix("gptvariants").lstrip("."), in_function, child.lineno))
            visit(child, nested)

    visit(tree, False)
    return found


def _exists(module: str) -> bool:
    path = PACKAGE.joinpath(*module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _graph() -> dict[str, list[tuple[str, bool, int]]]:
    return {_module_name(p): _imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def _layer(module: str) -> tuple[int, str]:
    top = module.split(".")[0]
    for i, row in enumerate(LAYERS):
        if top in row:
            return i, top
    return -1, top  # the package's __init__ and __main__


def test_every_package_has_a_layer():
    tops = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    tops |= {p.stem for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "__main__")}
    assert tops <= {name for row in LAYERS for name in row}


def test_imports_point_down():
    wrong = []
    for mod, imports in _graph().items():
        here, top = _layer(mod)
        if here < 0:
            continue
        for target, _, line in imports:
            there, other = _layer(target)
            if there > here or (there == here and other != top):
                wrong.append(f"{mod}:{line} imports {target} ({LAYERS[there]} is not below {LAYERS[here]})")
    assert not wrong, "\n".join(wrong)


def test_no_import_circles():
    graph = {m: {t for t, _, _ in imps if t != m} for m, imps in _graph().items()}
    # a package's __init__ importing its own submodules is not a circle worth reporting
    graph = {m: {t for t in ts if not t.startswith(m + ".")} for m, ts in graph.items()}
    state: dict[str, int] = {}
    circles = []

    def walk(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                circles.append(path[path.index(nxt) :] + [nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                walk(nxt, [*path, nxt])
        state[node] = 2

    for m in sorted(graph):
        if m not in state:
            walk(m, [m])
    assert not circles, circles


def test_function_level_imports_only_for_optional_dependencies():
    lazy = [
        f"{mod}:{line} imports {target} inside a function"
        for mod, imports in _graph().items()
        for target, in_function, line in imports
        if in_function and target not in OPTIONAL
    ]
    assert not lazy, "\n".join(lazy)


@pytest.mark.parametrize("module", sorted(OPTIONAL))
def test_optional_modules_exist(module):
    assert _exists(module), f"{module} is listed as optional but does not exist"
