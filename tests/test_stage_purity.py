"""The import contract: a stage's rules never reach the bus or RPC, directly or through a helper.

Walks the import graph of each pure stage module (the project's own modules, followed
transitively; imports under `if TYPE_CHECKING:` do not run and are left out) and fails
naming the chain by which a forbidden package is reached.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OWN = {"services": ROOT / "services", "chorus": ROOT / "protos" / "chorus"}
FORBIDDEN = {"nats", "grpc"}
PURE_STAGES = [
    "services.planner.plan",
    "services.selector.rank",
    "services.selector.select",
    "services.selector.dag",
    "services.selector.run",
    "services.executor.execute",
    "services.responder.respond",
]


def _file(module: str) -> Path | None:
    top, *rest = module.split(".")
    if top not in OWN:
        return None
    base = OWN[top].joinpath(*rest)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node that runs on import or call: skips the bodies of `if TYPE_CHECKING:`."""
    found: list[ast.AST] = []
    pending = [tree]
    while pending:
        node = pending.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            pending.extend(node.orelse)
            continue
        found.append(node)
        pending.extend(ast.iter_child_nodes(node))
    return found


def _imports(module: str) -> set[str]:
    path = _file(module)
    if path is None:
        return set()
    names: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            names.add(base)
            # `from services.common import bus` imports the module services.common.bus
            names.update(f"{base}.{a.name}" for a in node.names if _file(f"{base}.{a.name}"))
    return names


def _forbidden_chain(start: str) -> list[str] | None:
    """The import chain from `start` to a forbidden package, if there is one."""
    came_from: dict[str, str | None] = {start: None}
    queue = [start]
    while queue:
        module = queue.pop(0)
        for imported in sorted(_imports(module)):
            if imported in came_from:
                continue
            came_from[imported] = module
            if imported.split(".")[0] in FORBIDDEN:
                chain: list[str] = [imported]
                step: str | None = module
                while step is not None:
                    chain.append(step)
                    step = came_from[step]
                return chain[::-1]
            if _file(imported):
                queue.append(imported)
    return None


@pytest.mark.parametrize("stage", PURE_STAGES)
def test_stage_module_imports_no_bus_or_rpc(stage: str) -> None:
    assert _file(stage) is not None, f"{stage} is gone: update PURE_STAGES"
    chain = _forbidden_chain(stage)
    assert chain is None, " -> ".join(chain or [])


def test_the_walk_finds_a_forbidden_import() -> None:
    """The check itself can fail: the bus plumbing reaches nats."""
    chain = _forbidden_chain("services.common.events")
    assert chain is not None and chain[-1].split(".")[0] == "nats"
