"""The library's layering, read from the imports of every module under shared/: no
cycles, a domain that imports only the standard library and pydantic, a platform's
folder imported only by itself and the registry, and nothing shipped that imports the
devkit or the tests. Imports inside functions count too (they are how platforms stay
lazy); imports under `if TYPE_CHECKING:` do not, since they never run."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT / "shared"
REGISTRY = "shared.platforms.registry"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(path: Path, *, module_level_only: bool = False) -> set[str]:
    """Every module `path` imports (for `from a import b`, `a.b` when that is a module)."""
    found: set[str] = set()
    package = _module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else _module_name(path)

    def visit(nodes: list[ast.stmt], top: bool) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and _is_type_checking(node):
                visit(node.orelse, top)
                continue
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                    + ([base] if base else []))
                found.add(base)
                for alias in node.names:
                    if _exists(f"{base}.{alias.name}"):
                        found.add(f"{base}.{alias.name}")
            for field in ("body", "orelse", "finalbody", "handlers"):
                children = getattr(node, field, None)
                if isinstance(children, list) and children and isinstance(children[0], ast.AST):
                    nested = isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                    if not (module_level_only and nested and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))):
                        visit([c for c in children if isinstance(c, ast.stmt)] or
                              [s for h in children if isinstance(h, ast.ExceptHandler) for s in h.body],
                              top and not nested)

    visit(ast.parse(path.read_text(encoding="utf-8")).body, True)
    return found


def _exists(module: str) -> bool:
    path = ROOT.joinpath(*module.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


MODULES = {_module_name(p): p for p in sorted(SHARED.rglob("*.py"))}


def _ours(imported: set[str]) -> set[str]:
    return {m for m in imported if m.split(".")[0] in ("shared", "devkit", "tests", "scripts")}


def test_no_import_cycles() -> None:
    """Module-level imports only: an import inside a function runs after every module
    has loaded, so it cannot form a cycle at import time."""
    graph = {name: _ours(_imports(path, module_level_only=True)) & set(MODULES)
             for name, path in MODULES.items()}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}

    def walk(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt):], nxt])
            elif nxt not in state:
                walk(nxt, [*stack, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            walk(name, [name])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_domain_imports_only_the_standard_library_and_pydantic() -> None:
    allowed = set(sys.stdlib_module_names) | {"pydantic", "pydantic_core"}
    bad = {name: sorted(m for m in _imports(path)
                        if m.split(".")[0] not in allowed and not m.startswith("shared.domain"))
           for name, path in MODULES.items() if name.startswith("shared.domain")}
    assert not {k: v for k, v in bad.items() if v}


def test_a_platform_folder_is_imported_only_by_itself_and_the_registry() -> None:
    platforms = sorted({n.split(".")[2] for n in MODULES if n.startswith("shared.platforms.")
                        and n.count(".") >= 3})
    assert set(platforms) >= {"wechat", "minapp", "onedb"}
    bad = []
    for name, path in MODULES.items():
        for imported in _imports(path):
            for platform in platforms:
                own = f"shared.platforms.{platform}"
                if (imported == own or imported.startswith(own + ".")) and not (
                        name == own or name.startswith(own + ".")):
                    bad.append(f"{name} imports {imported}")
    registry_text = MODULES[REGISTRY].read_text(encoding="utf-8")
    assert all(f"shared.platforms.{p}." in registry_text for p in platforms)
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("forbidden", ["devkit", "tests", "scripts"])
def test_the_library_imports_no_devkit_tests_or_scripts(forbidden: str) -> None:
    bad = [f"{name} imports {m}" for name, path in MODULES.items() for m in _imports(path)
           if m.split(".")[0] == forbidden]
    assert not bad, "\n".join(bad)


def test_the_devkit_imports_nothing_from_the_library() -> None:
    bad = [f"{p.relative_to(ROOT)} imports {m}" for p in sorted((ROOT / "devkit").rglob("*.py"))
           for m in _imports(p) if m.split(".")[0] in ("shared", "tests")]
    assert not bad, "\n".join(bad)


def test_test_modules_import_no_other_test_module() -> None:
    bad = [f"{p.name} imports {m}" for p in sorted((ROOT / "tests").rglob("test_*.py"))
           for m in _imports(p) if m.split(".")[-1].startswith("test_")]
    assert not bad, "\n".join(bad)


def test_the_checker_sees_a_cycle_and_a_forbidden_import(tmp_path: Path) -> None:
    """The checks above would pass vacuously if the import reader saw nothing."""
    imports = _imports(SHARED / "bootstrap.py")
    assert {"shared.service.context", "shared.platforms.registry"} <= imports
    assert "shared.platforms.wechat.platform" in _imports(SHARED / "platforms" / "registry.py") or \
        "shared.platforms.wechat" in MODULES[REGISTRY].read_text(encoding="utf-8")
