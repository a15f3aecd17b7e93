"""Imports point one way (docs/design.md "Package layout and import direction"): no
package imports one above it, outside type-checking blocks."""

from __future__ import annotations

import ast
from pathlib import Path

import corestate

# each package with the packages it may import (besides itself)
ALLOWED = {
    "errors": set(),
    "schemas": {"errors"},
    "kernel": {"errors"},
    "models": {"errors", "kernel"},
    "repository": {"errors", "schemas"},
    "pipeline": {"errors", "kernel", "repository", "schemas"},
    "restore": {"errors", "pipeline", "repository"},
    "telemetry": {"errors", "kernel", "schemas"},
    "maintenance": {"errors", "models", "repository"},
    "agents": {"errors", "kernel", "models", "pipeline", "repository", "schemas", "telemetry"},
    "connectors": {"errors", "pipeline", "repository", "schemas", "telemetry"},
}


def _runtime_imports(tree: ast.AST) -> set[str]:
    """corestate packages imported outside `if TYPE_CHECKING:` blocks."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("corestate."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("corestate."))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def test_imports_point_one_way() -> None:
    root = Path(corestate.__file__).parent
    wrong = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        package = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        if package not in ALLOWED:
            continue  # cli and the package's top level may import anything
        for target in _runtime_imports(ast.parse(path.read_text())) - {package}:
            if target not in ALLOWED[package]:
                wrong.append(f"{rel} imports corestate.{target}")
    assert not wrong, "\n".join(wrong)
