"""DESIGN §4: imports run downward only. This reads every module's imports and checks them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "gateway"
# Rank of each layer; a module may import only modules of a strictly lower rank, or its own
# package (smime and formats are peers that never import each other).
RANK = {
    "__main__": 9, "cli": 8, "devtools": 7.5, "demo": 7, "app": 6, "relay": 5, "devpki": 5,
    "transport": 4, "translate": 3, "smime": 2, "formats": 2,
    "story": 2, "config": 1, "obs": 1, "metrics": 1, "errors": 0, "memo": 0, "__init__": 0,
}


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("gateway")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(
                "gateway"):
            found.add(node.module)
    return found


MODULES = sorted(ROOT.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_run_downward(path: Path) -> None:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    mine = layer(".".join(rel.parts))
    for target in imports(path):
        theirs = layer(target)
        if theirs == mine or target == "gateway":
            continue
        assert RANK[theirs] < RANK[mine], f"{rel} imports {target}: upward or sideways"


def test_every_module_opens_with_the_rule_it_keeps() -> None:
    missing = [str(p.relative_to(ROOT)) for p in MODULES
               if p.name != "__main__.py" and not ast.get_docstring(ast.parse(p.read_text()))]
    assert missing == []
