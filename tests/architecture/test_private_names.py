"""No module reaches into another's private names: a leading underscore means "only this module
relies on it", so it can change without breaking a caller it never knew about (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {
    "atlas_middleware": ROOT / "atlas_middleware",
    "atlas_middleware.integrations": ROOT / "integrations",
    "atlas_middleware.otel_exporters": ROOT / "otel_exporters",
    "atlas_middleware.trainer": ROOT / "trainer",
}


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    is_package = False  # a module's relative import resolves against its package
    base = base[: len(base) - node.level + (1 if is_package else 0)]
    return ".".join([*base, node.module] if node.module else base)


def reaches_into_private_names() -> list[str]:
    modules = _modules()
    found = []
    for module, path in sorted(modules.items()):
        tree = ast.parse(path.read_text(), str(path))
        aliases: dict[str, str] = {}  # local name -> project module it names
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                source = _resolve(module, node)
                if source == module or not source.startswith("atlas_middleware"):
                    continue
                for alias in node.names:
                    if _private(alias.name) and f"{source}.{alias.name}" not in modules:
                        found.append(
                            f"{path.relative_to(ROOT)}:{node.lineno}: {source}.{alias.name}"
                        )
                    elif f"{source}.{alias.name}" in modules:
                        aliases[alias.asname or alias.name] = f"{source}.{alias.name}"
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("atlas_middleware") and alias.asname:
                        aliases[alias.asname] = alias.name
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and aliases[node.value.id] != module
                and _private(node.attr)
            ):
                where = f"{path.relative_to(ROOT)}:{node.lineno}"
                found.append(f"{where}: {aliases[node.value.id]}.{node.attr}")
    return found


def test_no_module_imports_another_modules_private_names():
    assert reaches_into_private_names() == []
