"""The wheel holds every package: an installed (not editable) qwen-np must find each
subpackage of the source tree. The editable install the tests run under would not notice a
package missing from pyproject.toml."""

import os
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_package_is_listed_in_pyproject():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        tool = tomllib.load(f)["tool"]["setuptools"]
    listed = set(tool["packages"])
    dirs = {name: folder for name, folder in tool.get("package-dir", {}).items()}
    found = set()
    for top in ("qwen_np",):
        for folder, _, files in os.walk(os.path.join(ROOT, top)):
            if "__init__.py" in files and "__pycache__" not in folder:
                found.add(os.path.relpath(folder, ROOT).replace(os.sep, "."))
    for name, folder in dirs.items():
        assert os.path.exists(os.path.join(ROOT, folder, "__init__.py")), name
        for sub, _, files in os.walk(os.path.join(ROOT, folder)):
            if "__init__.py" in files and "__pycache__" not in sub:
                rel = os.path.relpath(sub, os.path.join(ROOT, folder))
                found.add(name if rel == "." else name + "." + rel.replace(os.sep, "."))
    assert found == listed


def test_the_cuda_sources_are_package_data():
    """An installed qwen-np carries backends/cuda's sources (the GPU backend compiles them at
    run time)."""
    import fnmatch
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        patterns = tomllib.load(f)["tool"]["setuptools"]["package-data"]["qwen_np.backends.cuda"]
    files = os.listdir(os.path.join(ROOT, "backends", "cuda"))
    assert files
    for name in files:
        if name.endswith(".py") or name == "__pycache__":
            continue
        assert any(fnmatch.fnmatch(name, p) for p in patterns), name
