"""The package's own imports go one way: lower layers never import higher ones, and no module imports itself back.

Reads every ``import`` statement of the package (module level and inside
functions alike, since a late import is still a dependency) with :mod:`ast`.
"""

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "kernelpot"

# Layer of each part, lowest first.  A module may import its own layer or lower ones.
# calculator and modelfile are faces that know nothing of the model's internals (the
# calculator talks to anything with ``predict_frame``, modelfile knows the file container),
# so the model can offer ``calculator()`` and ``save()`` without a circle.  plot draws the
# numbers of uq (its tables offer ``.plot()``); the CLI and the package root sit on top.
LAYERS = [
    # the neighbour search is geometry (numpy and numba only): io's overlap check uses it as the descriptors do
    ("kernelpot._version", "kernelpot._threads", "kernelpot.io", "kernelpot.descriptors.neighbors"),
    ("kernelpot.descriptors", "kernelpot.baselines", "kernelpot.calculator", "kernelpot.modelfile"),
    ("kernelpot.gp",),
    ("kernelpot.uq", "kernelpot.plot"),
    ("kernelpot.workflows",),
    ("kernelpot.cli", "kernelpot.__main__", "kernelpot"),
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _layer(module: str) -> int:
    best, best_len = None, -1
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best_len:
                best, best_len = i, len(p)
    if best is None:
        raise AssertionError(f"module {module} is in no layer of tests/test_layers.py; add it")
    return best


def _imports(path: Path, module: str) -> set:
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "kernelpot")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "kernelpot":
                continue
            # ``from kernelpot.gp import assembly`` depends on the submodule when there is one
            for a in node.names:
                sub = f"{target}.{a.name}"
                out.add(sub if _exists(sub) else target)
    return out


def _exists(module: str) -> bool:
    p = PKG.parent.joinpath(*module.split("."))
    return p.with_suffix(".py").is_file() or (p / "__init__.py").is_file()


def _graph() -> dict:
    graph = {}
    for path in sorted(PKG.rglob("*.py")):
        mod = _module_name(path)
        graph[mod] = {m for m in _imports(path, mod) if m != mod}
    return graph


GRAPH = _graph()


def test_every_module_is_in_a_layer():
    for mod in GRAPH:
        _layer(mod)


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_no_upward_import(module):
    mine = _layer(module)
    upward = sorted(m for m in GRAPH[module] if _layer(m) > mine)
    assert not upward, f"{module} (layer {mine}) imports higher layers: {upward}"


def test_no_import_cycle():
    # Tarjan-free: depth-first search for a back edge, reporting the cycle found
    state, stack = {}, []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for n in sorted(GRAPH.get(m, ())):
            if n not in GRAPH:
                continue
            if state.get(n) == 1:
                cycle = stack[stack.index(n):] + [n]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m)


def test_checker_sees_an_upward_import(tmp_path):
    # the checker itself must be able to fail: an io module importing the GP is caught
    fake = PKG / "io" / "formats.py"
    imports = _imports(fake, "kernelpot.io.formats")
    assert all(_layer(m) <= _layer("kernelpot.io.formats") for m in imports)
    src = tmp_path / "kernelpot" / "io" / "bad.py"
    src.parent.mkdir(parents=True)  # a file outside the package: the real tree stays untouched
    src.write_text("def f():\n    from kernelpot.gp.sparse import SparseGP\n    return SparseGP\n")
    found = _imports(src, "kernelpot.io.bad")
    assert any(_layer(m) > _layer("kernelpot.io.bad") for m in found)


def test_public_names_do_not_shadow_modules():
    import kernelpot
    for name in kernelpot.__all__:
        if _exists(f"kernelpot.{name}"):
            value = getattr(kernelpot, name)
            assert getattr(value, "__name__", None) == f"kernelpot.{name}", \
                f"kernelpot.{name} is {value!r} but kernelpot/{name} is a module"


def test_import_kernelpot_stays_light():
    # workflows, screening, plotting and dask are loaded on first use, not by ``import kernelpot``
    # (pandas and scipy.stats are not in the list: scikit-learn's own import loads them when installed)
    import subprocess
    import sys
    code = ("import sys, kernelpot; heavy = ['kernelpot.workflows', 'kernelpot.uq.screening', 'kernelpot.plot', "
            "'matplotlib', 'dask']; print([m for m in heavy if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", f"import kernelpot loaded {out}"
    out = subprocess.run([sys.executable, "-c", "import kernelpot; kernelpot.screen; import sys; "
                          "print('kernelpot.uq.screening' in sys.modules)"], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "True"
