"""qwen-np: Qwen-family LLM inference in plain NumPy, readable end to end.

    import qwen_np
    model = qwen_np.load("path/to/hf-folder")          # backend="numpy", dtype="float32"
    ids = model.tokenizer.encode("def fibonacci(n):")
    new = model.generate(ids, max_new_tokens=32)
    print(model.tokenizer.decode(new))

The package is layered (ARCHITECTURE.md): tensors, model, formats and backends, runtime,
oracle, apps. The names here are the public API; `qwen_np.oracle.ref` (single reference ops) is
imported on first use.
"""

# Before anything imports NumPy: the speed settings (backends/process_settings.py says what
# each does and when it takes effect).
from .backends.process_settings import apply_speed_settings as _apply_speed_settings

_apply_speed_settings()

from .errors import BackendUnavailable, FormatError, QwenNpError, UnsupportedModel  # noqa: E402
from .model.config import QwenConfig  # noqa: E402
from .runtime.load import Model, load, load_tokenizer  # noqa: E402

__all__ = ["load", "load_tokenizer", "Model", "QwenConfig", "QwenNpError", "UnsupportedModel", "FormatError",
           "BackendUnavailable", "ref"]
from .version import __version__  # noqa: E402


def __getattr__(name):
    """`qwen_np.oracle.ref` on first use (it is the oracle layer, above what `import qwen_np` needs)."""
    if name == "ref":
        from .oracle import ref
        return ref
    raise AttributeError(f"module 'qwen_np' has no attribute {name!r}")
