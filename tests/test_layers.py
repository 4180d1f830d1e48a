"""The import contract: backend/'s packages form layers, each importing only the ones below it,
and no package reaches into another's private names. model/ knows nothing of backend/.

The order, bottom up: core (settings, Redis, keys, errors, metrics), fetch (outbound HTTP: address
guard, which token goes where, image downloads), labelstudio (what Label Studio sends and its API
client), votes (votes and consensus), jobs (RQ job mechanics shared by every job kind), serving
(versions, hot swap, predictions, refresh jobs), training (training jobs), the services (the
facades the HTTP layer calls), http, then tools and the command line.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("core", "fetch", "labelstudio", "votes", "jobs", "serving", "training", "services", "http",
          "tools", "cli")
# modules directly under backend/ that are layers of their own
TOP_LEVEL_MODULES: dict[str, str] = {}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "backend" or len(parts) < 2:
        return None
    return TOP_LEVEL_MODULES.get(parts[1], parts[1])


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """Every import in the file, wherever it stands (function-level ones too): (line, module, names)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module, [alias.name for alias in node.names]))
    return found


def _sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _qualified(module: str, name: str) -> str:
    """`from backend.fetch import tokens` imports the module backend.fetch.tokens."""
    candidate = f"{module}.{name}"
    as_path = ROOT / Path(*candidate.split("."))
    return candidate if as_path.with_suffix(".py").exists() or as_path.is_dir() else module


def test_layers_are_known():
    packages = {p.name for p in (ROOT / "backend").iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    modules = {p.stem for p in (ROOT / "backend").glob("*.py") if p.stem != "__init__"}
    assert packages <= set(LAYERS), f"add {sorted(packages - set(LAYERS))} to LAYERS"
    assert modules <= set(TOP_LEVEL_MODULES), f"add {sorted(modules - set(TOP_LEVEL_MODULES))} to TOP_LEVEL_MODULES"


def test_backend_packages_import_only_lower_layers():
    upward = []
    for path in _sources("backend"):
        own = _layer(_module_name(path))
        for line, module, names in _imports(path):
            for target in [_qualified(module, n) for n in names] or [module]:
                layer = _layer(target)
                if layer is not None and LAYERS.index(layer) > LAYERS.index(own):
                    upward.append(f"{path.relative_to(ROOT)}:{line} ({own}) imports {target} ({layer})")
    assert not upward, "imports against the layer order:\n" + "\n".join(sorted(set(upward)))


def test_no_package_imports_another_packages_private_names():
    private = []
    for path in _sources("backend") + _sources("model"):
        own = _module_name(path).split(".")[:2]
        for line, module, names in _imports(path):
            if module.split(".")[:2] == own:
                continue
            hidden = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if hidden or any(part.startswith("_") and not part.startswith("__") for part in module.split(".")):
                private.append(f"{path.relative_to(ROOT)}:{line} imports {module}: {hidden or module}")
    assert not private, "private names used across packages:\n" + "\n".join(private)


@pytest.mark.parametrize("package", ["model"])
def test_model_knows_nothing_of_the_service(package):
    service_imports = [f"{path.relative_to(ROOT)}:{line} imports {module}"
                       for path in _sources(package) for line, module, _ in _imports(path)
                       if module.split(".")[0] in ("backend", "flask", "redis", "rq", "label_studio_sdk")]
    assert not service_imports, "\n".join(service_imports)
