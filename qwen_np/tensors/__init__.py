"""The bottom layer: what every other layer hands around. Dense helpers (bfloat16, the compute
dtype), the canonical QuantizedTensor and its bit packing, the round-to-nearest quantizer,
Int8Rows (an int8 KV operand) and the mapped lookup tables. Imports numpy and qwen_np.errors
only."""
