"""The import map of docs/design.md, checked against the code: server -> infill -> model,
never back, and no circle between the modules of one package (lazy imports inside functions
count too: a circle through them is still a circle)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {"model": 0, "infill": 1, "server": 2}


def imports_of(path: Path, package: str) -> set[str]:
    """Project modules (``pkg.mod``) imported anywhere in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from . import x / from .x import y
                base = package if node.level == 1 else ""
                mod = f"{base}.{node.module}" if node.module else base
                names = [mod] if node.module else [f"{base}.{a.name}" for a in node.names]
            else:
                names = [node.module or ""]
                names += [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for n in names:
            parts = n.split(".")
            if parts[0] in LAYERS:
                mod = ".".join(parts[:2])
                if (ROOT / parts[0] / f"{parts[1]}.py").is_file() if len(parts) > 1 else False:
                    out.add(mod)
                else:
                    out.add(parts[0])
    return out


def graph() -> dict[str, set[str]]:
    g = {}
    for pkg in LAYERS:
        for f in sorted((ROOT / pkg).glob("*.py")):
            name = f"{pkg}.{f.stem}" if f.stem != "__init__" else pkg
            g[name] = imports_of(f, pkg) - {name}
    return g


def test_imports_point_down_the_layers_only():
    wrong = [(m, d) for m, deps in graph().items() for d in deps
             if LAYERS[d.split(".")[0]] > LAYERS[m.split(".")[0]]]
    assert not wrong, f"upward imports: {wrong}"


def test_no_module_imports_itself_through_others():
    g = graph()
    seen, stack, cycles = set(), [], []

    def visit(node):
        if node in stack:
            cycles.append(stack[stack.index(node):] + [node])
            return
        if node in seen:
            return
        seen.add(node)
        stack.append(node)
        for dep in sorted(g.get(node, ())):
            if dep in g and dep.split(".")[0] == node.split(".")[0] and "." in dep:
                visit(dep)
        stack.pop()

    for n in sorted(g):
        visit(n)
    assert not cycles, f"import circles: {cycles}"
