"""The package's layers: imports run downward only, and no two modules import each other (also through others)."""

from __future__ import annotations

import ast
from pathlib import Path

import unityvideo_diffusers


PACKAGE = Path(unityvideo_diffusers.__file__).parent
# bottom up; a module may import from its own layer's other parts and from the layers below it, never above
LAYERS = [
    {"modalities", "tasks", "video_io", "validation", "schedulers", "sampling"},
    {"models"},
    {"pipelines", "conversion", "hub", "testing", "low_memory"},
    {"training"},
    {"shapesworld"},
    {"jobs", "demo", "cli", "__main__"},
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """The package modules `path` imports, anywhere in the file (function-level imports too)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".") if package else []
            base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
            target = ".".join([*base, *([node.module] if node.module else [])])
            found |= {target} if node.module else {".".join([*base, alias.name]) for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("unityvideo_diffusers"):
            found.add(node.module.removeprefix("unityvideo_diffusers").lstrip("."))
    known = {module_name(p) for p in PACKAGE.rglob("*.py")}
    resolved = set()
    for target in found:
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target and target != name:
            resolved.add(target)
    return resolved


def layer_of(module: str) -> int:
    top = module.split(".")[0]
    for index, layer in enumerate(LAYERS):
        if top in layer:
            return index
    raise AssertionError(f"{module} is in no layer: add it to LAYERS")


def graph() -> dict[str, set[str]]:
    return {module_name(path): imports_of(path) for path in PACKAGE.rglob("*.py")}


def test_every_import_runs_downward():
    upward = [
        f"{module} imports {target}"
        for module, targets in graph().items()
        # the package's __init__ gathers the public names of every layer; a __main__ only calls the command line
        if module and not module.endswith("__main__")
        for target in targets
        if target and layer_of(target) > layer_of(module)
    ]
    assert not upward, upward


def test_no_import_cycle():
    edges = {module: {t for t in targets if t} for module, targets in graph().items() if module}
    # a package's __init__ re-exporting its own modules is not a cycle of concepts
    edges = {m: {t for t in ts if not (m.startswith(t + ".") or t.startswith(m + "."))} for m, ts in edges.items()}
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(edges.get(module, ())):
            assert state.get(target) != "open", " -> ".join([*path, module, target])
            if target not in state:
                visit(target, [*path, module])
        state[module] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module, [])
