"""qwen-np: Qwen-family LLM inference in plain NumPy, readable end to end.

    import qwen_np
    model = qwen_np.load("path/to/hf-folder")          # backend="numpy", dtype="float32"
    ids = model.tokenizer.encode("def fibonacci(n):")
    new = model.generate(ids, max_new_tokens=32)
    print(model.tokenizer.decode(new))
"""

from .api import Model, load
from .config import QwenConfig
from .errors import BackendUnavailable, FormatError, QwenNpError, UnsupportedModel

__all__ = ["load", "Model", "QwenConfig", "QwenNpError", "UnsupportedModel", "FormatError",
           "BackendUnavailable"]
__version__ = "0.1.0"
