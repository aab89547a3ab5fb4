"""The layers hold (ARCHITECTURE.md): import-linter's contracts in pyproject.toml, run on an
installed copy of the package, kept; a planted violation breaks them; no two modules import
each other, even lazily; the installed package imports from outside the source tree with
nothing patched into sys.modules; and ARCHITECTURE.md names only modules that exist.

The contracts run on a copy installed with `pip install --target` (a real wheel's layout:
backends/ inside qwen_np/ as qwen_np.backends), because an editable install maps backends/
from outside the package folder, where import-linter's graph, which walks the package's
folder, would not find it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYPROJECT = os.path.join(ROOT, "pyproject.toml")


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The package as a wheel installs it, in a folder of its own."""
    target = tmp_path_factory.mktemp("installed")
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                        "--no-build-isolation", "--target", str(target), ROOT],
                       capture_output=True, text=True, cwd=str(target))
    assert r.returncode == 0, r.stderr[-2000:]
    # pip builds in the source tree: leave it as found
    shutil.rmtree(os.path.join(ROOT, "build"), ignore_errors=True)
    return str(target)


def lint_imports(package_folder: str):
    """import-linter's verdict on the package installed in `package_folder`, run from a
    folder outside the source tree (so that the checkout's own qwen_np is not on the path)."""
    exe = os.path.join(os.path.dirname(sys.executable), "lint-imports")
    env = dict(os.environ, PYTHONPATH=package_folder)
    return subprocess.run([exe, "--no-cache", PYPROJECT], capture_output=True, text=True,
                          cwd=package_folder, env=env, timeout=600)


def test_the_import_contracts_are_kept(installed):
    r = lint_imports(installed)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    contracts = tomllib.load(open(PYPROJECT, "rb"))["tool"]["importlinter"]["contracts"]
    assert len(contracts) >= 5
    assert f"Contracts: {len(contracts)} kept, 0 broken." in r.stdout


@pytest.mark.parametrize("module, planted, contract", [
    # a backend reaching into the model layer (what backends/ did with the KV cache's types)
    ("backends/numpy/backend.py", "from qwen_np.model.kv_cache import KVCache",
     "backends import tensors only, never the model"),
    # the model's config reading a file through the formats layer
    ("model/config.py", "from qwen_np.formats.files import read_json",
     "the model's config is pure: it reads no files"),
    # the runtime reaching up into a command module, lazily inside a function
    ("runtime/load.py", "def _planted():\n    from qwen_np.apps.memory import total",
     "layers: apps > oracle > runtime > formats | backends > model > tensors > errors"),
])
def test_a_planted_violation_breaks_a_contract(installed, tmp_path, module, planted, contract):
    copy = tmp_path / "copy"
    shutil.copytree(installed, copy)
    with open(copy / "qwen_np" / module, "a") as f:
        f.write("\n\n" + planted + "\n")
    r = lint_imports(str(copy))
    assert r.returncode != 0
    assert f"{contract} BROKEN" in r.stdout, r.stdout[-3000:]


def import_cycles(package_folder: str) -> list[list[str]]:
    """The strongly connected groups of more than one module in qwen_np's import graph (every
    import, lazy ones included), by grimp, the graph import-linter builds."""
    code = r"""
import json, sys, grimp
sys.setrecursionlimit(10000)
g = grimp.build_graph("qwen_np")
edges = {m: sorted(g.find_modules_directly_imported_by(m)) for m in sorted(g.modules)}
index, low, stack, on, groups = {}, {}, [], set(), []
def visit(v):
    index[v] = low[v] = len(index); stack.append(v); on.add(v)
    for w in edges[v]:
        if w not in index:
            visit(w); low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        group = []
        while True:
            w = stack.pop(); on.discard(w); group.append(w)
            if w == v:
                break
        if len(group) > 1:
            groups.append(sorted(group))
for m in edges:
    if m not in index:
        visit(m)
print(json.dumps({"modules": len(edges), "cycles": groups}))
"""
    env = dict(os.environ, PYTHONPATH=package_folder)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=package_folder, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    import json
    out = json.loads(r.stdout)
    assert out["modules"] > 50        # the whole package was read, backends included
    return out["cycles"]


def test_no_two_modules_import_each_other(installed, tmp_path):
    assert import_cycles(installed) == []
    copy = tmp_path / "copy"                  # and the check can fail: plant a cycle
    shutil.copytree(installed, copy)
    with open(copy / "qwen_np" / "tensors" / "packing.py", "a") as f:   # quantized imports it
        f.write("\n\ndef _planted():\n    from qwen_np.tensors import quantized\n")
    assert ["qwen_np.tensors.packing", "qwen_np.tensors.quantized"] in import_cycles(str(copy))


def test_the_installed_package_imports_from_outside_the_source_tree(installed):
    """From a folder with no checkout in sight: qwen_np and qwen_np.backends come from the
    installed copy, and importing qwen_np adds no module under another name."""
    code = ("import sys; before = set(sys.modules); import qwen_np, qwen_np.backends; "
            "from qwen_np.backends import get_backend; from qwen_np import ref; "
            "import qwen_np.backends.numba.backend; "
            "print(qwen_np.__file__); print(qwen_np.backends.__file__); "
            "print(get_backend('numpy').name); "
            "print(sorted(m for m in sys.modules if m.startswith(('qwen_np', 'backends')) "
            "and getattr(sys.modules[m], '__name__', m) != m))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = installed
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=installed, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    pkg, backends, name, renamed = r.stdout.splitlines()
    assert pkg == os.path.join(installed, "qwen_np", "__init__.py")
    assert backends == os.path.join(installed, "qwen_np", "backends", "__init__.py")
    assert name == "numpy"
    assert renamed == "[]"
    with open(os.path.join(installed, "qwen_np", "__init__.py")) as f:
        assert "sys.modules" not in f.read()


def test_the_codemap_names_only_what_exists():
    """Every path ARCHITECTURE.md names (`qwen_np/...`, `backends/...`, `tests/...`,
    `tools/...`) exists, and every module it names in dotted form imports."""
    with open(os.path.join(ROOT, "ARCHITECTURE.md")) as f:
        text = f.read()
    paths = set(re.findall(r"`((?:qwen_np|backends|tests|tools)/[\w/.]*)`", text))
    assert len(paths) > 30
    missing = [p for p in sorted(paths) if not os.path.exists(os.path.join(ROOT, p))]
    assert missing == []
    # file.py:function references: the function is defined in that file
    for path, name in set(re.findall(r"`((?:qwen_np|backends)/[\w/]+\.py)[:.]{1,2}(\w+)`", text)):
        with open(os.path.join(ROOT, path)) as f:
            src = f.read()
        assert re.search(rf"^\s*(def|class) {name}\b|^{name} = ", src, re.M), f"{path}:{name}"
    # every package folder of qwen_np/ and backends/ has its line in the codemap
    for top in ("qwen_np", "backends"):
        for folder, dirs, files in os.walk(os.path.join(ROOT, top)):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            rel = os.path.relpath(folder, ROOT).replace(os.sep, "/")
            if "__init__.py" in files:
                assert f"`{rel}/`" in text, rel
