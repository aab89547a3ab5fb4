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

# Before anything imports NumPy: the speed settings (qwen_np/process_settings.py says what
# each does and when it takes effect).
from .process_settings import apply_speed_settings as _apply_speed_settings  # noqa: E402

_apply_speed_settings()


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

from .api import Model, load, load_tokenizer  # noqa: E402
from .config import QwenConfig  # noqa: E402
from .errors import BackendUnavailable, FormatError, QwenNpError, UnsupportedModel  # noqa: E402

__all__ = ["load", "load_tokenizer", "Model", "QwenConfig", "QwenNpError", "UnsupportedModel", "FormatError",
           "BackendUnavailable"]
__version__ = "0.1.0"
