"""qwen-np: Qwen-family LLM inference in plain NumPy, readable end to end.

    import qwen_np
    model = qwen_np.load("path/to/hf-folder")          # backend="numpy", dtype="float32"
    ids = model.tokenizer.encode("def fibonacci(n):")
    new = model.generate(ids, max_new_tokens=32)
    print(model.tokenizer.decode(new))
"""

import importlib.util as _importlib_util
import os as _os
import sys as _sys

# OpenBLAS's worker threads busy-wait for 2^28 cycles (about 0.1 s) after each product before
# they sleep, and meanwhile the Numba kernels between two products find their cores taken
# (measured on 2 cores: a 128-token prefill 1.5x slower, RMSNorm and RoPE 4x). 2^4 cycles
# keeps the spin short. OpenBLAS reads this when NumPy first loads it, so it takes effect
# when qwen_np is imported before numpy (as the CLI does); an explicit setting wins.
_os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")


def _attach_backends_from_source_tree():
    """pyproject.toml installs the top-level folder backends/ as `qwen_np.backends`. When
    qwen_np is imported straight from a source checkout (no install), load it from there."""
    name = __name__ + ".backends"
    if _importlib_util.find_spec(name) is not None:
        return
    folder = _os.path.join(_os.path.dirname(_os.path.dirname(_os.path.abspath(__file__))), "backends")
    spec = _importlib_util.spec_from_file_location(
        name, _os.path.join(folder, "__init__.py"), submodule_search_locations=[folder])
    if spec is None:
        return
    module = _importlib_util.module_from_spec(spec)
    _sys.modules[name] = module
    spec.loader.exec_module(module)
    globals()["backends"] = module


_attach_backends_from_source_tree()

from .api import Model, load  # noqa: E402
from .config import QwenConfig  # noqa: E402
from .errors import BackendUnavailable, FormatError, QwenNpError, UnsupportedModel  # noqa: E402

__all__ = ["load", "Model", "QwenConfig", "QwenNpError", "UnsupportedModel", "FormatError",
           "BackendUnavailable"]
__version__ = "0.1.0"
