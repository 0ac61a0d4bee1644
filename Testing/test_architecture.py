"""The engine's layers, read off its imports: a lower layer never imports an upper one, no import cycles between
modules, no ``_private`` name taken from another module, and the parser and the Slicer side load without torch.

The order (README, "Architecture"): errors/devices/assets < io < operators < models < pipeline < data < training
< apps < slicer. Every import counts, function-local ones too.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG_DIR = Path(__file__).resolve().parents[1] / "MRtoCTSynthesis" / "MRtoCTSynthesisLib"
PKG = PKG_DIR.name
LAYERS = ["base", "io", "operators", "models", "pipeline", "data", "training", "apps", "slicer"]
BASE = {"errors", "devices", "assets", "checks", "names", ""}


def _modules():
    mods = {}
    for f in sorted(PKG_DIR.rglob("*.py")):
        rel = f.relative_to(PKG_DIR).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        mods[".".join((PKG,) + parts)] = f
    return mods


MODULES = _modules()


def _layer(module: str) -> str:
    head = module.split(".")[1] if "." in module else ""
    if head == "__main__":  # `python -m MRtoCTSynthesisLib` is the command line
        return "apps"
    return "base" if head in BASE else head


def _imports(module: str, path: Path):
    """(target module, imported name, line) for every import of a package module in ``path``."""
    is_pkg = path.name == "__init__.py"
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                parts = module.split(".") if is_pkg else module.split(".")[:-1]
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if not base.startswith(PKG):
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.append((sub if sub in MODULES else base, alias.name, node.lineno))
        elif isinstance(node, ast.Import):
            out += [(a.name, None, node.lineno) for a in node.names if a.name.startswith(PKG)]
    return out


def test_every_module_has_a_known_layer():
    unknown = sorted({_layer(m) for m in MODULES} - set(LAYERS))
    assert not unknown, f"modules outside the layers {LAYERS}: {unknown} (add the layer to the README and here)"


def test_lower_layers_never_import_upper_ones():
    rank = {name: i for i, name in enumerate(LAYERS)}
    bad = []
    for mod, path in MODULES.items():
        for target, _, line in _imports(mod, path):
            if rank[_layer(target)] > rank[_layer(mod)]:
                bad.append(f"{path.relative_to(PKG_DIR)}:{line} ({_layer(mod)}) imports {target} ({_layer(target)})")
    assert not bad, "\n".join(bad)


def test_no_private_name_is_imported_across_modules():
    bad = [f"{path.relative_to(PKG_DIR)}:{line} imports {name} from {target}"
           for mod, path in MODULES.items() for target, name, line in _imports(mod, path)
           if name and name.startswith("_") and not name.startswith("__") and target != mod]
    assert not bad, "\n".join(bad)


def test_no_import_cycles_between_modules():
    """Tarjan's strongly connected components over module -> module edges (a package's ``__init__`` re-exporting
    its submodules is left out, as it is a face, not a design dependency)."""
    faces = {m for m, p in MODULES.items() if p.name == "__init__.py"}
    graph = {m: {t for t, _, _ in _imports(m, p) if t in MODULES and t not in faces and t != m}
             for m, p in MODULES.items() if m not in faces}
    index, low, stack, on, cycles, counter = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10000))

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, cycles


@pytest.mark.parametrize("module", [f"{PKG}.apps.cli", f"{PKG}.slicer"])
def test_light_entry_points_do_not_import_torch(module):
    """``mrtoct --help`` (the parser) and the Slicer side load without torch (Slicer's process must never import it)."""
    code = (f"import sys, importlib; importlib.import_module({module!r}); "
            f"m = importlib.import_module('{PKG}.apps.cli'); m.build_parser(); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=PKG_DIR.parent)
    assert out.stdout.strip() == "False", out.stderr


#: Slicer's own Python modules, there only inside Slicer (the test harness swaps them per release); ``vtk`` is not
#: one of them: it is the VTK library, which mrml.py also uses outside Slicer (the slicer-core wheel brings it)
SLICER_APP_MODULES = {"slicer", "qt", "ctk"}


def _slicer_app_imports(path: Path) -> set:
    """Slicer's own modules that ``path`` imports (absolute imports only: ``from . import ...`` is the package)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names} & SLICER_APP_MODULES
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            out |= {node.module.split(".")[0]} & SLICER_APP_MODULES
    return out


def test_only_the_slicer_apps_own_modules_import_slicer_and_qt():
    """The logic and self-test bodies import Slicer's ``slicer``/``qt``; nothing else in the package does (bridge,
    mrml and downloads stay pure Python, tested outside Slicer), none of them is imported by another package
    module, and the test harness re-imports each of them per Slicer release (its purge list names them)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    try:
        import slicer_harness
    finally:
        sys.path.pop(0)
    app_side = {m for m, p in MODULES.items() if _slicer_app_imports(p)}
    assert app_side == {f"{PKG}.slicer.logic", f"{PKG}.slicer.selftest"}
    assert app_side <= set(slicer_harness._MANAGED)
    importers = [f"{mod} imports {target}" for mod, path in MODULES.items() for target, _, _ in _imports(mod, path)
                 if target in app_side and target != mod]
    assert not importers, importers
