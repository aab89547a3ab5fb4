"""The int4 story: bit packing, the canonical quantized tensor, our round-to-nearest quantizer,
and one module per on-disk format (GPTQ, AWQ) that converts it to the canonical form losslessly.

Nothing here imports a backend; the backends import this package.
"""

from .tensor import MappedQuantizedRows, QuantizedTensor, dequantize, dequantize_rows

__all__ = ["QuantizedTensor", "MappedQuantizedRows", "dequantize", "dequantize_rows"]
