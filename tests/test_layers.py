"""The import map of docs/design.md, checked against the code: workshop -> server -> infill -> model,
never back, and no circle between the modules of one package (lazy imports inside functions
count too: a circle through them is still a circle)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {"model": 0, "infill": 1, "server": 2, "workshop": 3}


def imports_of(path: Path, package: str) -> set[str]:
    """Project modules (``pkg.mod``, without the installed ``diffill.``) imported anywhere in
    the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from . import x / from .x import y
                base = f"diffill.{package}" if node.level == 1 else "diffill"
                mod = f"{base}.{node.module}" if node.module else base
                names = [mod] if node.module else [f"{base}.{a.name}" for a in node.names]
            else:
                names = [node.module or ""]
                names += [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for n in names:
            parts = n.split(".")
            if parts[0] != "diffill":
                continue  # the project installs as diffill.*; anything else is a third party
            parts = parts[1:]
            if parts and parts[0] in LAYERS:
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


HANDOVER = {("server.cli", "workshop.commands")}
"""The one upward edge: ``diffill train|corpus|eval|bench`` are parsed and run by the workshop,
imported only when one of them is the command."""


def test_imports_point_down_the_layers_only():
    wrong = [(m, d) for m, deps in graph().items() for d in deps
             if LAYERS[d.split(".")[0]] > LAYERS[m.split(".")[0]] and (m, d) not in HANDOVER]
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


HEAVY = ("torch", "transformers", "numpy", "safetensors")


def heavy_imports(path: Path) -> set[str]:
    """Third-party heavy packages a file imports anywhere (lazy imports too)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module.split(".")[0])
    return names & set(HEAVY)


def reachable(start: str, g: dict[str, set[str]]) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        m = todo.pop()
        if m in seen or m not in g:
            continue
        seen.add(m)
        todo += sorted(g[m])
    return seen


def module_file(name: str) -> Path:
    pkg, _, mod = name.partition(".")
    return ROOT / pkg / f"{mod or '__init__'}.py"


def test_the_editor_process_and_the_wire_code_never_reach_torch():
    """``diffill lsp`` (the process every editor starts) and the wire code between editors,
    the daemon and the CLI stay on the torch-free side: no module they import, even lazily,
    imports torch, transformers, numpy or safetensors, nor the developer tools."""
    g = graph()
    for start in ("server.lsp", "server.protocol", "server.daemon_client", "infill.api"):
        found = {m: heavy_imports(module_file(m)) for m in reachable(start, g)}
        assert not {m: h for m, h in found.items() if h}, start
        assert not any(m.startswith("workshop") for m in found), start


def test_importing_the_editor_side_loads_no_torch():
    """The same, as Python sees it: importing the LSP server, the command line's parser and
    the wire code loads none of the heavy packages, nor the HTTP server (aiohttp: only
    ``diffill serve`` needs it)."""
    import subprocess
    import sys
    probe = ("import sys; import diffill.server.lsp, diffill.server.daemon_client, "
             "diffill.server.protocol, diffill.infill.api, diffill.server.cli as c; "
             "c.build_parser(); "
             f"print(sorted(m for m in sys.modules if m.split('.')[0] in "
             f"{HEAVY + ('aiohttp',)!r} "
             "or m.startswith('diffill.workshop')))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, cwd="/")
    assert out.stdout.strip() == "[]", out.stdout
