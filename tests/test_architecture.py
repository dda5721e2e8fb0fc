"""The shape of the code, checked: the import graph of the repository's own modules has no circles, the
layers import only downwards, ``__main__`` modules hold no library code, and the pair shape is written
in one module.

The graph is built from the source with ``ast`` (every import, those inside functions included), so a
lazy import cannot hide a circle.
"""

from __future__ import annotations

import ast
import importlib
import io
import sys
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("ensemble", "training", "export", "serving")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _source_files() -> dict[str, Path]:
    """Module name -> file, for every module of the product (tests and tools excluded)."""
    files = {_module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}
    files["service"] = ROOT / "service.py"
    return files


def _resolve(name: str, modules: set[str]) -> str | None:
    """The longest prefix of a dotted import that is one of our modules (``a.b.c`` -> ``a.b`` if ``a.b``
    is a module and ``a.b.c`` a name in it)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(path: Path):
    """Every import statement of a module, those inside functions included."""
    return [node for node in ast.walk(ast.parse(path.read_text(), filename=str(path)))
            if isinstance(node, ast.Import | ast.ImportFrom)]


def imported_packages(path: Path) -> set[str]:
    """The top-level packages a module imports (relative imports as '')."""
    names = set()
    for node in _imports(path):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        else:
            names.add("" if node.level else (node.module or "").split(".")[0])
    return names


def import_graph() -> dict[str, set[str]]:
    """Module -> the repository modules it imports."""
    files = _source_files()
    modules = set(files)
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        edges = set()
        for node in _imports(path):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
            edges.update(t for t in (_resolve(name, modules) for name in targets) if t and t != module)
        graph[module] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a list of modules (first == last), or None (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_circle_and_the_graph_sees_imports():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    graph = import_graph()
    assert "training.report" in graph["training.run_all"]  # a top-level import
    assert "export.pipeline" in graph["training.run_all"]  # an import inside a function
    assert "ensemble.contract" in graph["ensemble.course_data"]


def test_the_import_graph_has_no_circles():
    assert find_cycle(import_graph()) is None


def test_only_the_orchestrator_under_training_calls_the_export_step():
    """Imports run one way, export -> training, except for run_all (the ensemble: train, export, stack), the one
    orchestrator. distill trains the student and stops there: its export is ``python -m export.student``."""
    graph = import_graph()
    importers = sorted(m for m, edges in graph.items()
                       if m.startswith("training") and any(e.startswith("export") for e in edges))
    assert importers == ["training.run_all"]
    assert "training.distill" in graph and not {e for e in graph["training.distill"] if e.startswith("export")}
    # the student's export step lives above training and reads what distill wrote
    assert {"training.distill", "export.onnx_export", "export.quantize"} <= graph["export.student"]


def test_the_import_direction_check_sees_an_import_of_export_in_distill(tmp_path, monkeypatch):
    """The check above would fail if distill imported export again, also lazily, inside a function."""
    copy = tmp_path / "distill.py"
    copy.write_text((ROOT / "training" / "distill.py").read_text()
                    + "\n\ndef _late():\n    from export.onnx_export import export_model\n    return export_model\n")
    files = {**_source_files(), "training.distill": copy}
    monkeypatch.setattr(sys.modules[__name__], "_source_files", lambda: files)
    assert any(e.startswith("export") for e in import_graph()["training.distill"])


def test_no_module_imports_a_main_module():
    """CLIs live in ``__main__``; what others need lives in a library module."""
    graph = import_graph()
    assert not {m: sorted(e for e in edges if e.endswith("__main__")) for m, edges in graph.items()
                if any(e.endswith("__main__") for e in edges)}


#: What each layer may not import: the layers above it, and the libraries of other layers. The run time is
#: torch-free; training and export never touch the HTTP side.
FORBIDDEN = {
    "ensemble": {"training", "export", "serving", "service", "torch", "bentoml", "_bentoml_impl", "starlette"},
    "training": {"serving", "service", "bentoml", "_bentoml_impl", "starlette"},
    "export": {"serving", "service", "bentoml", "_bentoml_impl"},  # naive_server.py is a plain starlette app
    "serving": {"training", "export", "service", "torch"},
}


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layers_import_only_downwards(layer):
    found = {module: sorted(imported_packages(path) & FORBIDDEN[layer])
             for module, path in _source_files().items() if module.split(".")[0] == layer}
    assert len(found) >= 4  # the layer's modules were found
    assert not {module: bad for module, bad in found.items() if bad}


#: Folders beside the product: measuring tools, decision records, maintenance tools and the tests.
BESIDE_THE_PRODUCT = ("bench", "experiments", "tools", "tests")


def test_the_product_imports_nothing_beside_it():
    """service.py, serving/, ensemble/, export/ and training/ hold the product: no measuring or experiment code,
    and none of it is imported (the Bento ships the product only)."""
    found = {module: sorted(imported_packages(path) & set(BESIDE_THE_PRODUCT))
             for module, path in _source_files().items()}
    assert len(found) > 40
    assert not {module: bad for module, bad in found.items() if bad}


def private_imports(path: Path, own: str | None = None) -> list[str]:
    """``from PACKAGE.module import _name`` where PACKAGE is not ``own``, the importing file's top-level folder."""
    own = own or path.relative_to(ROOT).parts[0]
    return [f"{node.module}.{alias.name}" for node in _imports(path) if isinstance(node, ast.ImportFrom)
            and not node.level and (node.module or "").split(".")[0] != own
            for alias in node.names if alias.name.startswith("_") and not alias.name.startswith("__")]


def test_no_module_imports_private_names_of_another_folder(tmp_path):
    """The product, the measuring tools, the experiments and the tools use each other's public names only, and the
    tests use only public names of those three. (A unit test of a product module may still reach its helpers.)"""
    tools = ("bench", "experiments", "tools")
    files = [*_source_files().values(), *(p for folder in tools for p in (ROOT / folder).rglob("*.py"))]
    found = {str(p.relative_to(ROOT)): bad for p in files if (bad := private_imports(p))}
    found |= {str(p.relative_to(ROOT)): bad for p in (ROOT / "tests").rglob("*.py")
              if (bad := [name for name in private_imports(p) if name.startswith(tools)])}
    assert not found
    planted = tmp_path / "planted.py"  # the check sees one, and not a private name of the file's own folder
    planted.write_text("from training.stacking import _fit_logreg\nfrom tests.drain import _png\n")
    assert private_imports(planted, own="tests") == ["training.stacking._fit_logreg"]


def test_the_import_scan_sees_third_party_imports():
    assert {"serving", "bentoml"} <= imported_packages(ROOT / "service.py")
    assert "torch" in imported_packages(ROOT / "training" / "train.py")


def test_the_pair_shape_is_written_in_one_module():
    """No number 28 or 56 (a digit's side, a pair's width) in the product's code outside ensemble.contract;
    docstrings and comments may explain the shape in prose."""
    found = []
    for module, path in _source_files().items():
        tokens = tokenize.tokenize(io.BytesIO(path.read_bytes()).readline)
        found += [f"{module}:{tok.start[0]}" for tok in tokens
                  if tok.type == tokenize.NUMBER and tok.string in ("28", "56") and module != "ensemble.contract"]
    assert not found


@pytest.mark.parametrize("module", sorted(m for m in _source_files() if m != "service"))
def test_every_module_imports(module):
    """A renamed or removed name shows up here, not when someone first runs that command."""
    importlib.import_module(module)


@pytest.mark.parametrize("module", sorted(_module_name(p) for folder in ("bench", "experiments", "tools")
                                          for p in (ROOT / folder).rglob("*.py")))
def test_every_tool_module_imports(module):
    """The measuring tools and experiments follow the product's renames (nothing else runs them in the tests)."""
    importlib.import_module(module)
