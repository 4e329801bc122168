"""Imports run downwards only: every import in gffs/ and backends/ follows LAYERS.

The graph is written once, here (docs/ARCHITECTURE.md draws it). A group is a
package under gffs/ (fs, chunks, ...) or a top-level module (daemon, config, ...);
backends/ is the group ``backends`` (installed as gffs_backends). Imports inside
``if TYPE_CHECKING:`` do not run and are not counted.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = {"errors", "exitcodes", "config", "mounts"}   # below everything: any group may use them

# group -> the groups it may import (besides itself and SHARED); top to bottom
LAYERS: dict[str, set[str]] = {
    "cli": {"daemon", "share", "maintenance", "fs", "store", "nft", "crypto", "images", "index", "chunks",
            "placement", "backends", "gffs"},
    "daemon": {"maintenance", "share", "fs", "store"},
    "share": {"maintenance", "crypto", "images", "index", "chunks", "placement", "backends"},
    "maintenance": {"store", "crypto", "images", "index", "chunks", "placement", "backends"},
    "fs": {"images", "nft", "index", "chunks", "placement"},
    "store": {"crypto", "index", "chunks", "placement", "backends"},
    # libraries beside the layers
    "crypto": {"index", "chunks", "backends"},
    "images": {"index", "chunks"},
    "nft": {"index", "backends"},     # reads tokens' files through the index; an IPFS node's RPC URL
    # the lower layers
    "chunks": {"index", "placement", "backends"},
    "index": set(),
    "placement": {"backends"},
    "backends": set(),
    "gffs": set(),                    # gffs/__init__.py
    "errors": set(), "exitcodes": set(), "mounts": set(), "config": {"errors"},
}


def _group(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] == "gffs_backends":
        return "backends"
    if parts[0] != "gffs":
        return None
    return parts[1] if len(parts) > 1 else "gffs"


def _runtime_imports(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, module) of every import that runs (not under `if TYPE_CHECKING:`)."""
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _source_group(path: Path) -> str:
    rel = path.relative_to(ROOT)
    if rel.parts[0] == "backends":
        return "backends"
    inner = rel.parts[1:]
    return inner[0].removesuffix(".py") if inner[0] != "__init__.py" else "gffs"


def upward_imports() -> list[str]:
    bad = []
    for path in sorted([*ROOT.joinpath("gffs").rglob("*.py"), *ROOT.joinpath("backends").rglob("*.py")]):
        src = _source_group(path)
        allowed = LAYERS[src] | SHARED | {src}
        for line, module in _runtime_imports(ast.parse(path.read_text(), str(path))):
            dst = _group(module)
            if dst is not None and dst not in allowed:
                bad.append(f"{path.relative_to(ROOT)}:{line}: {src} imports {module} ({dst})")
    return bad


def test_imports_run_downwards_only():
    assert upward_imports() == []


def named_module_lists() -> list[tuple[Path, int, str]]:
    """(file, line, module) of every module named in a ``*_MODULES`` / ``*_EXTENSIONS``
    list: modules imported by name (importlib), which the import check cannot see."""
    found = []
    for path in sorted(ROOT.joinpath("gffs").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = [node.target] if isinstance(node, ast.AnnAssign) else \
                getattr(node, "targets", [])
            names = [t.id for t in targets if isinstance(t, ast.Name)]
            value = getattr(node, "value", None)
            if any(n.endswith(("_MODULES", "_EXTENSIONS")) for n in names) and \
                    isinstance(value, (ast.List, ast.Tuple)):
                found += [(path, e.lineno, e.value) for e in value.elts
                          if isinstance(e, ast.Constant) and isinstance(e.value, str)]
    return found


def test_modules_imported_by_name_follow_the_layers_too():
    """maintenance/jobs.py once listed gffs.share's job modules: an upward import by name."""
    listed = named_module_lists()
    assert any(module == "gffs.maintenance.gc" for _p, _l, module in listed)
    bad = [f"{path.relative_to(ROOT)}:{line}: {_source_group(path)} names {module}"
           for path, line, module in listed
           if _group(module) not in LAYERS[_source_group(path)] | SHARED | {_source_group(path)}]
    assert bad == []


def test_layers_form_no_cycle():
    """The written graph itself must be a DAG, or 'downwards' would mean nothing."""
    state: dict[str, str] = {}

    def visit(group: str, path: list[str]) -> None:
        assert state.get(group) != "open", f"cycle: {' -> '.join(path + [group])}"
        if state.get(group) == "done":
            return
        state[group] = "open"
        for lower in LAYERS[group] | (SHARED - {group} if group not in SHARED else set()):
            visit(lower, path + [group])
        state[group] = "done"

    for group in LAYERS:
        visit(group, [])


def test_every_group_is_in_the_graph():
    groups = {_source_group(p) for p in ROOT.joinpath("gffs").rglob("*.py")}
    assert groups <= set(LAYERS), sorted(groups - set(LAYERS))
